#!/usr/bin/env bash
# Boot a throwaway Debian 12 container for molecule: systemd-nspawn of the image's root filesystem made by
# tools/mkrootfs.sh, writes kept in a tmpfs overlay (--volatile=overlay) so the rootfs stays clean
# and every scenario starts from the same state. --private-network: the container's sshd and nftables
# must not touch the host's network (it gets its own loopback only).
#   nspawn-up.sh NAME ROOTFS [persistent]  -> prints the path of the `enter` wrapper for Ansible's chroot
#                                             connection (Mitogen's finds `machinectl` beside it); `persistent`
#                                             writes into ROOTFS itself (the image build converges its staged
#                                             root filesystem this way)
set -euo pipefail
name=${1:?name} rootfs=${2:?rootfs}
run=/run/appliance-molecule/$name
volatile=(--volatile=overlay)
[ "${3:-}" = persistent ] && volatile=()

[ -x "$rootfs/bin/sh" ] || { echo "nspawn-up: no rootfs at $rootfs (make image-rootfs)" >&2; exit 2; }
"$(dirname "$0")/nspawn-down.sh" "$name" >/dev/null 2>&1 || true
mkdir -p "$run"

setsid systemd-nspawn --quiet --boot --register=no --keep-unit --private-network \
  "${volatile[@]}" --console=passive --machine="$name" --directory="$rootfs" \
  >"$run/console.log" 2>&1 </dev/null &
echo $! >"$run/nspawn.pid"

# The container's PID 1 (systemd) is a child of nspawn; nspawn forks helpers first, so wait for systemd.
leader=""
for _ in $(seq 300); do
  for pid in $(pgrep -P "$(cat "$run/nspawn.pid")" || true); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ] && leader=$pid
  done
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "nspawn-up: container $name did not start:" >&2; cat "$run/console.log" >&2
                      "$(dirname "$0")/nspawn-down.sh" "$name"; exit 1; }
echo "$leader" >"$run/leader.pid"

# Ansible's chroot connection runs `<exe> <chroot_dir> <command…>`; this runs the command inside
# the booted container's namespaces instead, with a clean environment.
cat >"$run/enter" <<WRAP
#!/bin/sh
shift
exec nsenter -t $leader -m -u -i -n -p -C -r -w \\
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "\$@"
WRAP
chmod 755 "$run/enter"

# Under Mitogen (its setns transport, `ansible_connection: machinectl`) Ansible asks `machinectl status NAME` for
# the container's leader PID and enters its namespaces itself, keeping one Python interpreter in the container
# for the whole play instead of one per task. The container is not registered with machined (--register=no):
# this stand-in answers that one question. The host variable mitogen_machinectl_path names it.
cat >"$run/machinectl" <<SHIM
#!/bin/sh
[ "\$1 \$2" = "status $name" ] || { echo "this stand-in answers only: machinectl status $name" >&2; exit 1; }
echo "Leader: $leader"
SHIM
chmod 755 "$run/machinectl"

# Wait for systemd to finish booting ("degraded" is fine: chrony and auditd cannot run in a container).
state=""
for _ in $(seq 360); do  # up to 3 minutes: several containers may boot at once on a loaded machine
  state=$("$run/enter" / systemctl is-system-running 2>/dev/null || true)
  case "$state" in running|degraded) break ;; esac
  sleep 0.5
done
case "$state" in running|degraded) ;; *)
  echo "nspawn-up: container $name did not finish booting (state: ${state:-none}); its console:" >&2
  tail -20 "$run/console.log" >&2; "$(dirname "$0")/nspawn-down.sh" "$name"; exit 1 ;;
esac
echo "$run/enter"
