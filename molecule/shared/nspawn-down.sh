#!/usr/bin/env bash
# Stop a container started by nspawn-up.sh; its overlay (every change made in it) disappears with it.
set -euo pipefail
name=${1:?name}
run=/run/appliance-molecule/$name
[ -f "$run/nspawn.pid" ] || exit 0
pid=$(cat "$run/nspawn.pid")
leader=$(cat "$run/leader.pid" 2>/dev/null || true)
if kill -0 "$pid" 2>/dev/null; then
  # SIGRTMIN+3 asks the container's systemd to halt; nspawn exits when it has.
  [ -n "$leader" ] && kill -s RTMIN+3 "$leader" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi
# Whatever is left: SIGKILL to the container's PID 1 ends its whole PID namespace. Killing only nspawn
# would orphan the container's systemd and its services (seen: rsyslogd spinning at 50 % CPU for hours).
if [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ]; then
  kill -9 "$leader" 2>/dev/null || true
fi
kill -9 "$pid" 2>/dev/null || true
rm -rf "$run"
