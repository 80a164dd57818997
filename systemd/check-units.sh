#!/usr/bin/env bash
# Verifies the units with systemd-analyze against the built binaries and
# prints their offline security exposure scores. Usage:
#   bash systemd/check-units.sh <folder with convoy-agent and convoy-server>
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(cd "${1:?folder with the built binaries}" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for unit in convoy-agent convoy-server; do
  # point ExecStart at the built binary: verify checks it exists
  sed "s|/usr/bin/$unit|$bin/$unit|" "$here/$unit.service" > "$work/$unit.service"
  systemd-analyze verify "$work/$unit.service"
  score=$(systemd-analyze security --offline=yes "$work/$unit.service" | tail -n 1)
  echo "$unit: $score"
done
# the gpu package's drop-in, applied to the agent unit
mkdir -p "$work/gpu"
sed "s|/usr/bin/convoy-agent|$bin/convoy-agent|" "$here/convoy-agent.service" > "$work/gpu/convoy-agent.service"
mkdir -p "$work/gpu/convoy-agent.service.d"
cp "$here/convoy-agent-gpu.conf" "$work/gpu/convoy-agent.service.d/gpu.conf"
# systemd-analyze reads drop-ins from the unit search path
SYSTEMD_UNIT_PATH="$work/gpu:" systemd-analyze verify "$work/gpu/convoy-agent.service"
score=$(SYSTEMD_UNIT_PATH="$work/gpu:" systemd-analyze security --offline=yes "$work/gpu/convoy-agent.service" | tail -n 1)
echo "convoy-agent with the gpu drop-in: $score"
