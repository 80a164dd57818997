#!/usr/bin/env bash
# Builds the flashable convoy agents and prints their paths, sizes, linkage
# and the highest glibc symbol version each needs.
#
#   cross/build.sh                      # all targets, release profile
#   cross/build.sh aarch64-musl armv7   # some targets
#   cross/build.sh --deb                # also a .deb per target
#   PROFILE=ci cross/build.sh ...       # faster, less optimised (CI)
#
# Targets:
#   aarch64-musl  aarch64-unknown-linux-musl, fully static (any board image)
#   aarch64-gnu   aarch64-unknown-linux-gnu linked against glibc 2.28
#   armv7         armv7-unknown-linux-gnueabihf linked against glibc 2.28
#   aarch64-gpu   aarch64 glibc 2.28 build with the `gpu` feature (wgpu loads
#                 the board's Vulkan driver at run time, so it cannot be static)
#
# Needs: rustup, python3 with pip (for zig), cargo. Installs the Rust targets,
# zig (PyPI's ziglang) and cargo-zigbuild when they are missing.
# Output: dist/<target>/convoy-agent (and dist/*.deb with --deb).
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-release}"
MAX_GLIBC="2.28"
DIST="${DIST:-dist}"
deb=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --deb) deb=1 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    aarch64-musl|aarch64-gnu|armv7|aarch64-gpu) targets+=("$arg") ;;
    *) echo "cross/build.sh: unknown target or option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-musl aarch64-gnu armv7 aarch64-gpu)

triple() {
  case "$1" in
    aarch64-musl) echo aarch64-unknown-linux-musl ;;
    aarch64-gnu|aarch64-gpu) echo aarch64-unknown-linux-gnu ;;
    armv7) echo armv7-unknown-linux-gnueabihf ;;
  esac
}
zig_target() {
  case "$1" in
    aarch64-musl) triple "$1" ;;
    *) echo "$(triple "$1").$MAX_GLIBC" ;;
  esac
}

say() { printf '==> %s\n' "$*" >&2; }

# --- tools ---------------------------------------------------------------
if ! python3 -m ziglang version >/dev/null 2>&1 && ! command -v zig >/dev/null 2>&1; then
  say "installing zig (PyPI ziglang)"
  python3 -m pip install --quiet ziglang
fi
if ! command -v cargo-zigbuild >/dev/null 2>&1; then
  say "installing cargo-zigbuild"
  cargo install --locked --quiet cargo-zigbuild
fi
installed_targets="$(rustup target list --installed)"
for t in "${targets[@]}"; do
  tr="$(triple "$t")"
  if ! grep -qx "$tr" <<<"$installed_targets"; then
    say "adding Rust target $tr"
    rustup target add "$tr"
    installed_targets="$(rustup target list --installed)"
  fi
done

target_dir="${CARGO_TARGET_DIR:-target}"
profile_dir="$PROFILE"
[ "$PROFILE" = dev ] && profile_dir=debug

# --- build ---------------------------------------------------------------
for t in "${targets[@]}"; do
  features=()
  [ "$t" = aarch64-gpu ] && features=(--features gpu)
  say "building $t ($(zig_target "$t"), profile $PROFILE)"
  cargo zigbuild --profile "$PROFILE" -p convoy-agent --bin convoy-agent \
    --target "$(zig_target "$t")" "${features[@]}"
  mkdir -p "$DIST/$t"
  cp "$target_dir/$(triple "$t")/$profile_dir/convoy-agent" "$DIST/$t/convoy-agent"
done

# --- checks and table ----------------------------------------------------
# readelf reads any architecture's ELF; highest GLIBC_x.y among the
# versioned symbols the binary needs.
max_glibc() {
  readelf --wide --version-info "$1" 2>/dev/null \
    | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1 || true
}
status=0
printf '\n%-14s %-40s %10s  %-16s %-12s %s\n' target path bytes linkage max-glibc interpreter
for t in "${targets[@]}"; do
  bin="$DIST/$t/convoy-agent"
  size=$(stat -c %s "$bin")
  interp=$(readelf --wide --program-headers "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p' || true)
  needed=$(readelf --wide --dynamic "$bin" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | paste -sd, - || true)
  glibc=$(max_glibc "$bin")
  if [ -z "$interp" ] && [ -z "$needed" ]; then linkage=static; else linkage="dynamic"; fi
  printf '%-14s %-40s %10s  %-16s %-12s %s\n' "$t" "$bin" "$size" "$linkage" "${glibc:--}" "${interp:--}"
  if [ -n "$needed" ]; then printf '%-14s needs %s\n' "" "$needed"; fi
  case "$t" in
    aarch64-musl)
      if [ "$linkage" != static ]; then echo "FAIL: $t must be fully static" >&2; status=1; fi ;;
    *)
      if [ -z "$glibc" ] || [ "$(printf '%s\n%s\n' "$glibc" "$MAX_GLIBC" | sort -V | tail -n1)" != "$MAX_GLIBC" ]; then
        echo "FAIL: $t needs glibc ${glibc:-?}, more than $MAX_GLIBC" >&2; status=1
      fi ;;
  esac
done

if [ "$deb" = 1 ]; then
  printf '\n'
  for t in "${targets[@]}"; do
    bash cross/deb.sh "$t" "$DIST/$t/convoy-agent" "$DIST"
  done
fi
exit $status
