# Sourced by the benchmarks on Flower Datasets' Fashion-MNIST splits, from
# the project root: installs the data set if it is missing, checks that
# ../shared/data/partitions is there, builds the release binaries, and sets
# `splits` and `bin`.
data=/usr/share/datasets/fashion-mnist
if [ ! -f "$data/train-images-idx3-ubyte.gz" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi
splits=../shared/data/partitions
[ -f "$splits/fmnist_dir0.1_c20_s42.npy" ] || { echo "$splits is missing: ../shared/data sits beside the project" >&2; exit 1; }

cargo build --release --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release/convoy-server"
