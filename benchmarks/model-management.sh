#!/usr/bin/env bash
# Model-management figures: a 100-round run of the bundled digits data (10
# vehicles, top-10 % q8 updates, top-25 % q8 deltas down) through the real
# server code, every client update kept; then what moving a vehicle 1, 5
# and 20 versions behind costs, what each recoverability route stores, and
# how long rebuilding a version at chain depth 1, 10 and 100 takes by
# route (b) and route (c). A second run under the default store policy
# gives the policy's own storage. Writes benchmarks/model-management/run.log.
#
#   bash benchmarks/model-management.sh        (BIN=... to use another build)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  cargo build --release -p convoy-cli
  BIN="${CARGO_TARGET_DIR:-target}/release/convoy-server"
fi
out=benchmarks/model-management
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sim() {
  "$BIN" simulate --dataset digits --clients 10 --rounds 100 --transport memory \
    --codec topk:0.1+q8+zstd --downlink-codec topk:0.25+q8+zstd --keep-updates --quiet --http off "$@"
}
{
  echo "# every version kept as a delta (max chain depth 100)"
  sim --max-chain-depth 100 --max-rebuild-secs 1000 --out "$tmp/chain"
  db="$tmp/chain/sim.db"
  ids=($("$BIN" models --db "$db" list --format csv | tail -n +2 | cut -d, -f1))
  last=${ids[100]}
  for behind in 1 5 20; do
    echo "## a vehicle $behind version(s) behind"
    "$BIN" models --db "$db" transfer "${ids[$((100 - behind))]}" "$last"
  done
  echo "## storage by route"
  "$BIN" models --db "$db" storage
  echo "## rebuild times"
  for depth in 1 10 100; do
    for route in deltas replay; do
      "$BIN" models --db "$db" rebuild "${ids[$depth]}" --route "$route"
    done
  done
  "$BIN" models --db "$db" rebuild "${ids[0]}" --route weights
  echo "## cost model over the run"
  "$BIN" report --db "$db" --costs | tail -1
  echo
  echo "# the default store policy (max chain depth 20, max rebuild 5 s)"
  sim --out "$tmp/default"
  "$BIN" models --db "$tmp/default/sim.db" storage
} 2>&1 | tee "$out/run.log"
