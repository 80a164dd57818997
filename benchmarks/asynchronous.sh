#!/usr/bin/env bash
# Asynchronous (FedBuff) against synchronous rounds under the availability
# and device model: Fashion-MNIST on Flower Datasets' Dirichlet 0.5 splits
# (20 vehicles, seeds 42, 1 and 2), MLP 784-128-10, SGD 0.05, batch 32, one
# epoch; each vehicle online with probability 0.3 in each 10-minute slot,
# device speeds spread 10x (the fastest takes 50 ms a step), on the
# simulated clock (simulate --online ...: the real coordinator and agents'
# state machines). Synchronous: 30 rounds of whoever is online (at least
# 3, deadline 10 minutes). Asynchronous: a new model every 3 (and,
# separately, 5) updates, updates up to 8 versions stale, 80 models. Writes runs/, RESULTS.md and
# accuracy.svg under benchmarks/asynchronous/.
#
#   bash benchmarks/asynchronous.sh     (SEEDS="42" for one seed, OUT=dir,
#                                        BUFFERS="3 5", ASYNC_ROUNDS=80)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=benchmarks/flower_splits.sh
. benchmarks/flower_splits.sh
out=${OUT:-benchmarks/asynchronous}
seeds=${SEEDS:-"42,1,2"}

common=(--dataset fashion-mnist --partition-file "$splits/fmnist_dir0.5_c20_s{seed}.npy"
  --seeds "$seeds" --epochs 1 --lr 0.05 --batch-size 32 --hidden 128
  --rule fedavg --median-cap 0 --growth-cap 0 --quiet
  --online 0.3 --slot-secs 600 --speed-spread 10 --step-secs 0.05
  --min-clients 3 --deadline-secs 600)

echo "synchronous (seeds $seeds)" >&2
"$bin" simulate "${common[@]}" --mode sync --rounds 30 --name sync --out "$out/runs/sync"
for k in ${BUFFERS:-3 5}; do
  echo "asynchronous, a model every $k updates (seeds $seeds)" >&2
  "$bin" simulate "${common[@]}" --mode async --async-buffer "$k" --max-staleness 8 \
    --rounds "${ASYNC_ROUNDS:-80}" --name "async-k$k" --out "$out/runs/async-k$k"
done

python3 benchmarks/asynchronous_table.py "$out/runs" --markdown "$out/RESULTS.md" --svg "$out/accuracy.svg"
echo "wrote $out/RESULTS.md" >&2
