#!/usr/bin/env bash
# Stop a container started by nspawn-up.sh; its overlay (every change made in it) disappears with it.
set -euo pipefail
name=${1:?name}
run=/run/appliance-molecule/$name
[ -f "$run/nspawn.pid" ] || exit 0
pid=$(cat "$run/nspawn.pid")
if kill -0 "$pid" 2>/dev/null; then
  # SIGRTMIN+3 asks the container's systemd to halt; nspawn exits when it has.
  [ -f "$run/leader.pid" ] && kill -s RTMIN+3 "$(cat "$run/leader.pid")" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
fi
rm -rf "$run"
