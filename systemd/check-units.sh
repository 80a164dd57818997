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
