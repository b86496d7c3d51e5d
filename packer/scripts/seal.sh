#!/bin/sh
# The last step of the image build (Packer's shutdown_command, as root): remove everything that must not be
# in an image many appliances are made from — the build account and its key, SSH host keys, the machine-id,
# logs, shell histories, temporary files — trim free space so the image compresses, and power off.
# appliance-firstboot.service makes the per-appliance parts again on the first boot.
set -eu
say() { echo "seal: $*"; }

# The build account (Packer's login) and its sudo rule. -f: it is the account running this script.
rm -f /etc/sudoers.d/zz-image-build
if getent passwd build >/dev/null; then
  userdel -f -r build 2>/dev/null || userdel -f build
fi
say "build account removed"

# A Debian cloud image (production path (a)) made the build account with cloud-init: not needed again.
if [ -d /etc/cloud ]; then
  touch /etc/cloud/cloud-init.disabled
  rm -rf /var/lib/cloud/instances /var/lib/cloud/instance
fi

# Quiet the loggers first, or the build's last minute (its logout, the power-off) is in every appliance's logs:
# journald goes on in /run (gone at power-off); the others stop. systemd-update-utmp and systemd-random-seed
# write when stopped (a shutdown record, the seed): stopped now, what they wrote is removed below. auditd refuses
# a manual stop and its rules are locked (-e 2): a signal ends it, and the kernel's records go to the journal.
journalctl --relinquish-var 2>/dev/null || true
systemctl stop rsyslog.service syslog.socket acct.service systemd-update-utmp.service systemd-random-seed.service \
  2>/dev/null || true
systemctl kill --signal=TERM auditd.service 2>/dev/null || true
say "loggers stopped (journald writes to /run until power-off)"

# Per-appliance identity: made again at first boot.
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed
# The first-boot unit's marker (the image build set it so the unit stays out of the build VM).
marker=$(sed -n 's/^ConditionPathExists=!//p' /etc/systemd/system/appliance-firstboot.service 2>/dev/null || true)
[ -z "$marker" ] || rm -f "$marker"
echo appliance > /etc/hostname
say "host keys, machine-id and hostname reset"

# No history of the build: logs (files kept, emptied: services expect them), journals, shell histories, apt.
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
rm -rf /var/log/journal/*
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
# sshd writes the build session's logout into wtmp as the VM powers off: let that write go nowhere.
[ ! -f /var/log/wtmp ] || mount --bind /dev/null /var/log/wtmp
# The router's audit trail starts at the first boot (its chain head lives beside it).
rm -f /var/log/dicom-router/*
rm -f /root/.bash_history /root/.python_history /root/.lesshst /home/*/.bash_history /home/*/.lesshst
rm -rf /root/.ansible /root/.cache
apt-get clean
rm -rf /var/lib/apt/lists/*
rm -rf /tmp/* /tmp/.[!.]* /var/tmp/* 2>/dev/null || true
say "logs, histories, apt lists and temporary files cleared"

# Free space: discarded blocks become holes in the qcow2 (Packer's disk_discard=unmap); where the disk cannot
# discard, write zeros instead so the compressed image stays small.
sync
if ! fstrim -v / 2>/dev/null; then
  dd if=/dev/zero of=/zero.fill bs=1M status=none 2>/dev/null || true
  rm -f /zero.fill
  sync
  say "free space zeroed"
fi

say "sealed; powering off"
systemctl poweroff --no-block
