#!/usr/bin/env bash
# The demo's saving: the default demo (its codecs and server learning rate)
# against the same demo with dense fp32 both ways, at its own server
# learning rate (4) and at plain FedAvg's (1), seeds 42, 1 and 2. Prints a
# markdown table of final accuracy and uplink saving per seed.
#
#   bash benchmarks/demo.sh      (SEEDS="42" for one seed)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release/convoy-server"
seeds=${SEEDS:-"42 1 2"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() {
  local label=$1 seed=$2
  shift 2
  local line
  line=$("$bin" demo --seed "$seed" --db "$work/$label-$seed/demo.db" "$@" 2>&1 | grep '^summary')
  local acc ratio
  acc=$(sed -E 's/.*-> ([0-9.]+)% after.*/\1/' <<< "$line")
  ratio=$(sed -E 's/.*uplink [^(]*\([^,]*, ([0-9.]+)x less.*/\1/' <<< "$line")
  echo "$acc $ratio"
}

echo "| seed | default: final acc (%) | uplink saving | fp32, server lr 4 (%) | difference (points) | fp32, server lr 1 (%) |"
echo "|---:|---:|---:|---:|---:|---:|"
for seed in $seeds; do
  read -r acc ratio < <(run default "$seed")
  read -r fp32 _ < <(run fp32 "$seed" --codec fp32 --downlink-codec fp32)
  read -r plain _ < <(run plain "$seed" --codec fp32 --downlink-codec fp32 --server-lr 1)
  diff=$(python3 -c "print(f'{$acc - $fp32:+.2f}')")
  echo "| $seed | $acc | ${ratio}x | $fp32 | $diff | $plain |"
done
