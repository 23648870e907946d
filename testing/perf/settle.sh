#!/usr/bin/env bash
# What peers settling costs a transfer: 1 GiB fetched by node B from node A (B's GET, verified,
# stored, fsynced), with the defaults (1 credit per MiB: B pays A a cheque every 16 MiB, each
# written and fsynced in both ledgers) against `payment.peer_per_mib = 0` (nothing counted),
# alternating, in the same run, on 127.0.0.1. Prints a markdown table.
#
#   bash testing/perf/settle.sh        # about 2 minutes after the release build
#
# RUNS (default 3) runs of each; medians compared. Pacing off on both nodes (as in p2p.sh), so
# the transfer runs at full speed and any cost of settling shows.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${W:-/tmp/ron-perf-settle}
RUNS=${RUNS:-3}
PA=${PA:-17901}; PB=${PB:-17902}; P2P=${P2P:-17911}
for t in curl bc cmp; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done

cargo build --release --locked -p ron >/dev/null
RON=${CARGO_TARGET_DIR:-target}/release/ron
mkdir -p "$W"
[ -f "$W/rand1g" ] || head -c 1073741824 /dev/urandom > "$W/rand1g"
G=1073741824

PIDS=(); BPID=
cleanup() { for p in "${PIDS[@]}" $BPID; do kill "$p" 2>/dev/null || true; done; }
for port in "$PA" "$PB"; do
  ! curl -sf -o /dev/null "127.0.0.1:$port/healthz" || { echo "port $port is taken" >&2; exit 1; }
done
trap cleanup EXIT
med() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }

conf='[p2p]\npeer_bytes_per_sec = 0\nfetch_timeout_ms = 600000\ncache_bytes = 4294967296\n[limits]\nper_peer_bytes_per_sec = 0\n'
off='[payment]\npeer_per_mib = 0\n'
start_a() { # $1: extra config
  rm -rf "$W/pa" && mkdir -p "$W/pa" && printf "$conf$1" > "$W/pa/ron.toml"
  "$RON" node --gateway "127.0.0.1:$PA" --p2p-listen "/ip4/127.0.0.1/tcp/$P2P" --data-dir "$W/pa" 2>"$W/pa.log" >/dev/null &
  APID=$!; PIDS+=($APID)
  for _ in $(seq 100); do curl -sf "127.0.0.1:$PA/healthz" >/dev/null && break; sleep 0.1; done
  SEED=$(curl -s "127.0.0.1:$PA/status" | grep -o '/ip4/127.0.0.1/tcp/[0-9]*/p2p/[A-Za-z0-9]*' | head -1)
  ADDR=$(RON_NODE="http://127.0.0.1:$PA" RON_DATA_DIR="$W/pa" "$RON" put "$W/rand1g")
}
stop_a() { kill "$APID"; wait "$APID" 2>/dev/null || true; }

run() { # $1: extra config for both nodes -> "GB/s cheques"
  start_a "$1"
  rm -rf "$W/pb" && mkdir -p "$W/pb" && printf "$conf$1" > "$W/pb/ron.toml"
  "$RON" node --gateway "127.0.0.1:$PB" --p2p-listen /ip4/127.0.0.1/tcp/0 --bootstrap "$SEED" \
    --data-dir "$W/pb" 2>"$W/pb.log" >/dev/null &
  BPID=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$PB/healthz" >/dev/null && break; sleep 0.1; done
  until curl -s "127.0.0.1:$PB/status" | grep -q '"peers":\["'; do sleep 0.1; done
  sync
  local s e out cheques
  s=$(now)
  out=$(curl -s -o "$W/pb.out" -w '%{http_code} %{size_download}' "127.0.0.1:$PB/o/$ADDR")
  e=$(now)
  set -- $out
  [ "$1" = 200 ] && [ "$2" = $G ] && cmp -s "$W/pb.out" "$W/rand1g" || { echo "bad transfer: $out" >&2; exit 1; }
  rm -f "$W/pb.out"
  sleep 1.5 # the last cheque's answer
  cheques=$(curl -s "127.0.0.1:$PA/metrics" | awk '/^payment_cheques_cashed_total /{print $2}')
  kill $BPID; wait $BPID 2>/dev/null || true; BPID=
  stop_a
  echo "$(echo "scale=3; $G / ($e - $s) / 1000000000" | bc) ${cheques:-0}"
}

: > "$W/on.txt"; : > "$W/off.txt"
for _ in $(seq "$RUNS"); do
  run "" >> "$W/on.txt"
  run "$off" >> "$W/off.txt"
done
ON=$(awk '{print $1}' "$W/on.txt" | med)
OFF=$(awk '{print $1}' "$W/off.txt" | med)
CHEQUES=$(awk '{print $2}' "$W/on.txt" | med)
echo
echo "| 1 GiB fetched by node B from node A, GB/s (median of $RUNS) | value | ratio |"
echo "|---|---|---|"
echo "| peers settle (defaults: $CHEQUES cheques cashed) | $ON | $(echo "scale=2; $ON / $OFF" | bc) |"
echo "| \`payment.peer_per_mib = 0\` (nothing counted) | $OFF | 1.00 |"
echo
echo "runs (settling: GB/s cheques / off: GB/s cheques):"
paste "$W/on.txt" "$W/off.txt"
