#!/usr/bin/env bash
# The Debian 12 root filesystem of the appliance, from Debian's mirror with mmdebstrap:
#   tools/mkrootfs.sh OUT_DIR
# The image is made from it (tools/build-image.sh keeps it in build/image-rootfs) and molecule's scenarios
# boot it with systemd-nspawn (molecule/shared/nspawn-up.sh), so the roles are tested on the packages the
# image carries. The packages the roles install are baked in: the test containers have no network
# (systemd-nspawn --private-network), and the roles then find them present and change nothing.
set -euo pipefail

out=${1:?usage: mkrootfs.sh OUT_DIR}

command -v mmdebstrap >/dev/null || {
  echo "mkrootfs: mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 2; }

# What every appliance has: systemd, sshd for Ansible, Python for its modules,
# and what the roles install (hardening, chrony, nftables, logrotate, router, console).
# The hardening role's also: libpam-tmpdir, needrestart, debsums, acct, AIDE, USBGuard.
# To boot on its own: kernel, initramfs, GRUB for BIOS and UEFI, systemd-networkd (in systemd) with resolved,
# growpart for a disk made larger than the image, Lynis for the hardening report. (In a container the kernel
# and GRUB are only files; udev does not start there.)
pkgs=(systemd-sysv dbus openssh-server python3 python3-apt python3-venv sudo iproute2 procps
      ca-certificates chrony nftables auditd apparmor apparmor-utils unattended-upgrades
      apt-listchanges logrotate rsyslog libpam-pwquality cracklib-runtime dcmtk locales less
      libpam-tmpdir needrestart debsums acct aide aide-common usbguard
      linux-image-amd64 initramfs-tools udev grub2-common grub-pc-bin grub-efi-amd64-bin
      systemd-resolved cloud-guest-utils lynis)

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

tmp="$out.tmp"
rm -rf "$tmp"
mkdir -p "$(dirname "$out")"
# Keep the package lists: roles then see a fresh apt cache and never need the network.
mmdebstrap --variant=minbase --include="$(IFS=,; echo "${pkgs[*]}")" --skip=cleanup/apt/lists \
  --aptopt='APT::Install-Recommends "false"' \
  --customize-hook='echo appliance > "$1/etc/hostname"' \
  --customize-hook='printf "127.0.0.1\tlocalhost\n127.0.1.1\tappliance\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n" > "$1/etc/hosts"' \
  --customize-hook='rm -f "$1/etc/machine-id"; touch "$1/etc/machine-id"' \
  bookworm "$tmp" \
  "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
  "deb $security bookworm-security main"
rm -rf "$out"
mv "$tmp" "$out"
echo "mkrootfs: root filesystem in $out"
