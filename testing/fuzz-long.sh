#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), JOBS at a time (default 2), from its
# seeds and the growing corpus under fuzz/corpus, and prints one line per target: runs,
# coverage, corpus size, and whether it found anything. Needs nightly and cargo-fuzz.
#   SECONDS_EACH=600 JOBS=2 bash testing/fuzz-long.sh
# Record the figures (and any finding, with its fix) in docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
each="${SECONDS_EACH:-600}"
jobs="${JOBS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ron-ci-target}/fuzz" RUSTFLAGS=""
cargo +nightly fuzz build
logs="$(mktemp -d)"
run() {
  local target="$1"
  mkdir -p "corpus/$target"
  if cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$each" -print_final_stats=1 >"$logs/$target" 2>&1; then
    echo "$target: ok, $(grep -E '^Done' "$logs/$target"), $(grep -oE 'cov: [0-9]+' "$logs/$target" | tail -1), corpus $(ls "corpus/$target" | wc -l)"
  else
    echo "$target: FOUND a failing input (fuzz/artifacts/$target); log: $logs/$target"
  fi
}
export -f run
export each logs
cargo +nightly fuzz list | xargs -P "$jobs" -I{} bash -c 'run {}'
