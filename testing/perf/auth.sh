#!/usr/bin/env bash
# Capability cost rig (issue 5): the same release node, the same requests, with and without
# token verification, alternating, all on 127.0.0.1. Prints a markdown table of ratios.
#
#   bash testing/perf/auth.sh            # about 5 minutes after the release build
#
# (a) 1 KiB PUT (`POST /put`, the same body: the store answers 200 after hashing it), wrk -c32,
#     with the owner's token checked, against `auth.anonymous_put = true` (token sent, unchecked)
# (b) 1 KiB GET, wrk -c64, with `auth.protect_reads = true` (token checked), against open reads
# The config file is rewritten between runs; the node applies it live.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${W:-/tmp/ron-perf-auth}
DUR=${DUR:-8s}
ROUNDS=${ROUNDS:-4}
RON_PORT=${RON_PORT:-17710}

need=()
for t in wrk curl; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -q >/dev/null; apt-get install -y -q "${need[@]}" >/dev/null; fi

cargo build --release --locked -p ron >/dev/null
RON=${CARGO_TARGET_DIR:-target}/release/ron
rm -rf "$W" && mkdir -p "$W/data"
head -c 1024 /dev/urandom > "$W/1k"
LIMITS='[limits]\nper_peer_rps = 0\nper_peer_bytes_per_sec = 0\nper_peer_streams = 0\nglobal_concurrency = 100000\n'  # one client address, full speed
printf '%b' "$LIMITS" > "$W/data/ron.toml"
"$RON" node --gateway "127.0.0.1:$RON_PORT" --data-dir "$W/data" 2>"$W/ron.log" >/dev/null &
RON_PID=$!
trap 'kill $RON_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$RON_PORT/healthz" >/dev/null && break; sleep 0.1; done
TOKEN=$(cat "$W/data/owner.token")
ADDR=$(RON_NODE="http://127.0.0.1:$RON_PORT" RON_DATA_DIR="$W/data" "$RON" put "$W/1k")

cat > "$W/put.lua" <<LUA
wrk.method = "POST"
local f = io.open("$W/1k", "rb"); wrk.body = f:read("*all"); f:close()
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
cat > "$W/get.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA

# Applies a config and waits until /status shows it.
apply() { # $1 toml, $2 and $3: what /status must then show
  printf '%b' "$1" > "$W/data/ron.toml"
  for _ in $(seq 100); do
    s=$(curl -sf "127.0.0.1:$RON_PORT/status")
    grep -q "$2" <<<"$s" && grep -q "$3" <<<"$s" && return 0; sleep 0.1
  done
  echo "config not applied: $1" >&2; exit 1
}
rps() { wrk -t2 -c"$1" -d"$DUR" -s "$W/$2.lua" "http://127.0.0.1:$RON_PORT$3" | awk '/Requests\/sec/{print $2}'; }
med() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

PUT_ON=(); PUT_OFF=(); GET_ON=(); GET_OFF=()
on() {
  apply "$LIMITS" '"reads_need_token":false' '"writes_need_token":true'
  PUT_ON+=("$(rps 32 put /put)")
  apply "$LIMITS"'[auth]\nprotect_reads = true\n' '"reads_need_token":true' '"writes_need_token":true'
  GET_ON+=("$(rps 64 get "/o/$ADDR")")
}
off() {
  apply "$LIMITS"'[auth]\nanonymous_put = true\n' '"reads_need_token":false' '"writes_need_token":false'
  PUT_OFF+=("$(rps 32 put /put)")
  GET_OFF+=("$(rps 64 get "/o/$ADDR")")
}
# Alternate which goes first, so drift (page cache, compaction, a neighbour) cancels out.
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then on; off; else off; on; fi
  echo "round $r: put ${PUT_ON[-1]} vs ${PUT_OFF[-1]}, get ${GET_ON[-1]} vs ${GET_OFF[-1]}" >&2
done
pon=$(printf '%s\n' "${PUT_ON[@]}" | med); poff=$(printf '%s\n' "${PUT_OFF[@]}" | med)
gon=$(printf '%s\n' "${GET_ON[@]}" | med); goff=$(printf '%s\n' "${GET_OFF[@]}" | med)
grep -q '"status":429\|rate_limited' "$W/ron.log" && echo "warning: requests were refused" >&2
echo "| measure | with token check | without | ratio |"
echo "|---|---|---|---|"
printf '| 1 KiB PUT req/s (wrk -c32) | %.0f | %.0f | %.2f |\n' "$pon" "$poff" "$(echo "$pon / $poff" | bc -l)"
printf '| 1 KiB GET req/s (wrk -c64) | %.0f | %.0f | %.2f |\n' "$gon" "$goff" "$(echo "$gon / $goff" | bc -l)"
