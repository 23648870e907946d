#!/usr/bin/env bash
# Builds the `ron` release binary twice from this clone's HEAD commit, each time from a fresh
# clone in the same place and an empty target dir, and compares the two byte for byte (about
# 2 x 15 minutes on 2 cores). Paths of the clone and of the cargo registry are remapped, so a
# clone elsewhere on another machine with the same toolchain builds the same bytes too, and
# the build time C compilers embed is the commit's.
#   bash testing/supply-chain/reproducible.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
commit="$(git rev-parse HEAD)"
src="${REPRO_SRC_DIR:-/var/tmp/ron-repro-src}"
dir="${REPRO_TARGET_DIR:-/var/tmp/ron-repro-target}"
out="$(mktemp -d)"
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
export CARGO_INCREMENTAL=0
# C code built by -sys crates (mimalloc's) embeds __DATE__ and __TIME__; GCC takes them from
# SOURCE_DATE_EPOCH when set: the commit's own time.
SOURCE_DATE_EPOCH="$(git log -1 --format=%ct "$commit")"
export SOURCE_DATE_EPOCH
for i in 1 2; do
  rm -rf "$src" "$dir"
  git clone -q "$PWD" "$src"
  git -C "$src" checkout -q "$commit"
  (
    cd "$src"
    RUSTFLAGS="--remap-path-prefix=$src=/ron --remap-path-prefix=$registry=/registry" \
      CARGO_TARGET_DIR="$dir" cargo build --release --locked -p ron
  )
  cp "$dir/release/ron" "$out/ron.$i"
done
echo "commit $commit"
sha256sum "$out"/ron.1 "$out"/ron.2
if cmp -s "$out/ron.1" "$out/ron.2"; then
  echo "reproducible: two builds from nothing are identical ($(stat -c %s "$out/ron.1") bytes)"
else
  echo "NOT reproducible: the two builds differ (cmp -l $out/ron.1 $out/ron.2 | wc -l bytes)" >&2
  exit 1
fi
