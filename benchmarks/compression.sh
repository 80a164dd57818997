#!/usr/bin/env bash
# Compression benchmark: Fashion-MNIST, MLP 784-128-10, SGD lr 0.05, batch 32,
# 1 local epoch, 20 clients all participating, 30 rounds, Dirichlet alpha 0.5
# and 0.1, seed 42, over the real embedded MQTT broker. Writes every run's
# rounds.json/csv under benchmarks/compression/runs/, then RESULTS.md, the
# accuracy-vs-bytes plots, and cost-model.txt: each run's median absolute
# error of the cost model's byte and training-time predictions.
#
#   bash benchmarks/compression.sh      (OUT=dir to write elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."

data=/usr/share/datasets/fashion-mnist
if [ ! -f "$data/train-images-idx3-ubyte.gz" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi

cargo build --release -p convoy-cli
bin="${CARGO_TARGET_DIR:-target}/release/convoy-server"
out=${OUT:-benchmarks/compression}
rm -rf "$out/runs"
mkdir -p "$out"
: > "$out/cost-model.txt"

run() {
  local alpha=$1 label=$2
  shift 2
  echo "alpha $alpha: $label" >&2
  "$bin" simulate --dataset fashion-mnist --clients 20 --rounds 30 --partition dirichlet \
    --alpha "$alpha" --seed 42 --epochs 1 --lr 0.05 --batch-size 32 --hidden 128 \
    --out "$out/runs/alpha$alpha/$label" --name "$label" --quiet "$@"
  printf 'alpha %s %-16s ' "$alpha" "$label" >> "$out/cost-model.txt"
  "$bin" report --db "$out/runs/alpha$alpha/$label/sim.db" --costs \
    | grep '^median absolute error' >> "$out/cost-model.txt"
}

for alpha in 0.5 0.1; do
  run "$alpha" fp32 --codec fp32
  run "$alpha" fp16 --codec fp16
  run "$alpha" q8 --codec q8
  run "$alpha" q4 --codec q4
  run "$alpha" sign+EF --codec sign
  run "$alpha" topk1%+q8+EF --codec topk:0.01+q8+zstd
  run "$alpha" topk0.1%+q4+EF --codec topk:0.001+q4+zstd
  # convoy's best: top 0.5 % at 4 bits up, top 5 % at 4 bits down (both with
  # error feedback), server learning rate 3
  run "$alpha" best --codec topk:0.005+q4+zstd --downlink-codec topk:0.05+q4+zstd --server-lr 3
  # control for the above: the same server learning rate without compression
  run "$alpha" fp32+server-lr3 --codec fp32 --server-lr 3
done

python3 benchmarks/plot.py "$out"/runs/*/*/rounds.json \
  --markdown "$out/RESULTS.md" --svg-prefix "$out/accuracy_vs_bytes"
echo "wrote $out/RESULTS.md" >&2
cat "$out/cost-model.txt"
