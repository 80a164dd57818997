#!/usr/bin/env bash
# Robustness benchmark: dishonest vehicles holding real keys against each
# aggregation rule. The bundled digits (1,437 training rows, 360 held out),
# MLP 64-128-10, SGD lr 0.05, batch 16, 1 local epoch, IID split, every
# vehicle in every round, 15 rounds, over the in-process transport (the
# same server code and bytes as the broker). Fleets of 4 vehicles (1
# dishonest) and 20 (4 dishonest) with fp32 updates, and of 4 with
# topk:0.1+q8+zstd (sparse, error feedback), seeds 42, 1 and 2. Attacks, each run
# every round by the dishonest vehicles, correctly signed:
#   huge            every value of the update 1e6
#   sign_flip:4.5   the update negated, 4.5x its norm (under the 5x bound)
#   sign_flip:50    the same at 50x (over the bound)
#   inflate         sign_flip:4.5 claiming 1,000,000 rows (status and update)
#   drift:0.5       the honest update plus a fixed direction of half its
#                   norm, the same every round (a slow, backdoor-style push)
# A copied update (another vehicle's, re-sent as its own) is refused byte
# for byte (server/src/coordinator/tests.rs) and so has no row here.
# Writes runs/, RESULTS.md and accuracy.svg under benchmarks/robustness/.
#
#   bash benchmarks/robustness.sh     (SEEDS="42" for one seed, RULES="krum"
#                                      to rerun one rule's runs, OUT=dir)
set -euo pipefail
cd "$(dirname "$0")/.."

# the workspace's feature set, so a test build's dependencies are reused
cargo build --release --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release/convoy-server"
out=${OUT:-benchmarks/robustness}
seeds=${SEEDS:-"42 1 2"}
rules=${RULES:-"fedavg cosine trimmed_mean:0.25 median krum"}
mkdir -p "$out"

run() {
  local clients=$1 attackers=$2 codec=$3 seed=$4 rule=$5 attack=$6
  local dir="$out/runs/v$clients-$codec/$rule/$attack/seed$seed"
  local flags=()
  [ "$attack" != none ] && flags=(--attack "$attack" --attackers "$attackers")
  echo "$clients vehicles, $codec, $rule, $attack, seed $seed" >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  "$bin" simulate --dataset digits --clients "$clients" --rounds 15 --partition iid \
    --seed "$seed" --epochs 1 --lr 0.05 --batch-size 16 --hidden 128 --codec "$codec" \
    --transport memory --rule "$rule" --out "$dir" --name "$rule/$attack" --quiet \
    "${flags[@]}" > "$dir/summary.out" 2> "$dir/warnings.log"
  # keep the per-round figures; the database, keys and agents' state go
  find "$dir" -mindepth 1 -maxdepth 1 ! -name rounds.json ! -name rounds.csv \
    ! -name summary.txt -exec rm -rf {} +
}

# vehicles, dishonest ones, uplink codec
for fleet in "4 1 fp32" "20 4 fp32" "4 1 topk:0.1+q8+zstd"; do
  set -- $fleet
  for seed in $seeds; do
    for rule in $rules; do
      for attack in none huge sign_flip:4.5 sign_flip:50 inflate:4.5:1000000 drift:0.5; do
        run "$1" "$2" "$3" "$seed" "$rule" "$attack"
      done
    done
  done
done

python3 benchmarks/robustness_table.py "$out"/runs/*/*/*/*/rounds.json \
  --markdown "$out/RESULTS.md" --svg "$out/accuracy.svg"
echo "wrote $out/RESULTS.md" >&2
