#!/usr/bin/env bash
# Durability rig (issue 17): nine release nodes on 127.0.0.1, one uploader and eight peers.
# Prints a markdown table.
#
#   bash testing/perf/durability.sh      # about 10 minutes after the release build
#
# put:     `ron put` of 1 GiB with `--durability none`, against the same PUT with 4+2 and the
#          time until `/stat` says `protected` (every chunk's six shards placed on six distinct
#          peers, each verified, fsynced and announced by its keeper): the cost of protection
#          against a plain PUT of the same bytes, medians of RUNS.
# repair:  the uploader and two shard holders are killed; the time until the last byte the
#          survivors' repair moves (then a surviving node's `/stat` must say `protected`
#          again with six holders per chunk), and the bytes the guards
#          moved (durability_repair_read_bytes_total + durability_repair_written_bytes_total
#          over all nodes) against the minimum: for every chunk that lost shards, k shards
#          read plus the lost ones written (computed from every layout the peers keep and
#          which node kept what: the objects of earlier runs, removed on the uploader, are
#          still protected by their holders and repaired too).
# Defaults everywhere, but `storage.repair_interval_s = 2` (the point is the work, not the
# wait between passes).
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${W:-/tmp/ron-perf-durability}
RUNS=${RUNS:-3}
SIZE=${SIZE:-1073741824}   # bytes per object
N=9
BASE=${BASE:-17900}
for t in curl python3 b3sum; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done
python3 -c 'import cbor2' 2>/dev/null || pip install -q cbor2 >/dev/null

cargo build --release --locked -p ron >/dev/null
RON=${CARGO_TARGET_DIR:-target}/release/ron
rm -rf "$W"; mkdir -p "$W"
# One file per run: a run must not find the previous one's shards already kept.
for r in $(seq "$RUNS"); do head -c "$SIZE" /dev/urandom > "$W/rand1g.$r"; done

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start() { # $1 index, $2 bootstrap multiaddr (or empty)
  local d="$W/n$1"; mkdir -p "$d"
  printf '[storage]\nrepair_interval_s = 2\n' > "$d/ron.toml"
  local boot=(); [ -n "$2" ] && boot=(--bootstrap "$2")
  "$RON" node --gateway "127.0.0.1:$((BASE + $1))" --p2p-listen "/ip4/127.0.0.1/tcp/$((BASE + 100 + $1))" \
    --data-dir "$d" "${boot[@]}" >/dev/null 2>"$d.log" &
  PIDS[$1]=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$((BASE + $1))/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "node $1 did not start" >&2; exit 1
}
url() { echo "http://127.0.0.1:$((BASE + $1))"; }
ron_on() { local i=$1; shift; RON_NODE=$(url "$i") RON_DATA_DIR="$W/n$i" "$RON" "$@"; }
now() { date +%s.%N; }
med() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
state() { curl -sf -H "Authorization: Bearer $(cat "$W/n$1/owner.token")" "$(url "$1")/stat/$2" \
  | python3 -c 'import json,sys; d=json.load(sys.stdin).get("durability") or {}; print(d.get("state",""), d.get("min_holders",0))'; }
wait_protected() { # $1 node, $2 address: seconds waited
  for _ in $(seq 3000); do [ "$(state "$1" "$2")" = "protected 6" ] && return 0; sleep 0.2; done
  echo "never protected: $(state "$1" "$2")" >&2; exit 1
}

start 0 ""
SEED=$(curl -sf "$(url 0)/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p2p"]["listen"][0])')
for i in $(seq 1 $((N - 1))); do start "$i" "$SEED"; done
for _ in $(seq 300); do
  n=$(curl -sf "$(url 0)/status" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["p2p"]["peers"]))')
  [ "$n" -ge $((N - 1)) ] && break; sleep 0.2
done

PLAIN=(); PROT=(); PROTECTED=()
for r in $(seq "$RUNS"); do
  F="$W/rand1g.$r"
  t0=$(now); A=$(ron_on 0 put --durability none "$F"); t1=$(now)
  PLAIN+=("$(echo "$t1 - $t0" | bc -l)")
  ron_on 0 rm "$A" >/dev/null; ron_on 0 gc >/dev/null
  t0=$(now); A=$(ron_on 0 put --durability 4+2 "$F"); t1=$(now)
  wait_protected 0 "$A"; t2=$(now)
  PROT+=("$(echo "$t1 - $t0" | bc -l)"); PROTECTED+=("$(echo "$t2 - $t0" | bc -l)")
  if [ "$r" -lt "$RUNS" ]; then ron_on 0 rm "$A" >/dev/null; ron_on 0 gc >/dev/null; sleep 3; fi
done
[ "$A" = "$(b3sum --no-names "$F" | sed 's/^/b3:/')" ] || { echo "address differs from b3sum" >&2; exit 1; }

# Who keeps which shard, and every layout kept (an object removed on its uploader stays
# protected by its holders, who renew one another's leases): the minimum a repair must move.
for i in $(seq 1 $((N - 1))); do
  after=""; : > "$W/kept$i"
  while :; do
    page=$(curl -sf -H "Authorization: Bearer $(cat "$W/n$i/owner.token")" "$(url "$i")/objects?limit=1000${after:+&after=$after}")
    python3 -c 'import json,sys; [print(o["address"], o.get("media_type") or "-") for o in json.load(sys.stdin)["objects"]]' <<<"$page" >> "$W/kept$i"
    after=$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("next") or "")' <<<"$page")
    [ -n "$after" ] || break
  done
done
for l in $(cat "$W"/kept* | awk '$2 == "application/vnd.ron.layout+cbor" {print $1}' | sort -u); do
  for i in $(seq 1 $((N - 1))); do curl -sf "$(url "$i")/o/$l" -o "$W/layout.$l.cbor" && break; done
done
KILL=(1 2)
MIN=$(python3 - "$W" "${KILL[@]}" <<'PY'
import cbor2, glob, sys
w, killed = sys.argv[1], set(int(k) for k in sys.argv[2:])
alive = set()
for i in range(1, 9):
    if i not in killed:
        alive |= {line.split()[0] for line in open(f"{w}/kept{i}")}
total = 0
for path in glob.glob(f"{w}/layout.*.cbor"):
    layout = cbor2.load(open(path, "rb"))
    k = layout["scheme"]["k"]
    for chunk in layout["chunks"]:
        per = -(-chunk["len"] // k); per += per % 2
        lost = sum(1 for s in chunk["shards"] if str(s) not in alive)
        if lost:
            total += (k + lost) * per
print(total)
PY
)
moved() { local s=0; for i in "$@"; do
  v=$(curl -sf "$(url "$i")/metrics" | awk '/^durability_repair_(read|written)_bytes_total /{s+=$2} END{print s+0}')
  s=$(echo "$s + $v" | bc); done; echo "$s"; }
SURVIVORS=(3 4 5 6 7 8)
BEFORE=$(moved "${SURVIVORS[@]}")
kill "${PIDS[0]}" "${PIDS[1]}" "${PIDS[2]}"
# Done when the survivors' repair counters have stood still for 5 s after moving something,
# and node 3 says protected again: its `/stat` alone may still show the census from before
# the kill. The time is that of the last byte moved.
t0=$(now); t1=$t0; last=$BEFORE; still=0
for _ in $(seq 600); do
  sleep 1
  m=$(moved "${SURVIVORS[@]}")
  if [ "$m" != "$last" ]; then last=$m; t1=$(now); still=0; else still=$((still + 1)); fi
  [ "$still" -ge 5 ] && [ "$last" != "$BEFORE" ] && break
done
wait_protected 3 "$A"
AFTER=$(moved "${SURVIVORS[@]}")
for i in "${SURVIVORS[@]}"; do
  echo "node $i: $(curl -sf "$(url "$i")/metrics" | grep -E '^durability_(repair|repairs|shards)' | tr '\n' ' ')" >&2
done
MOVED=$(echo "$AFTER - $BEFORE" | bc)
# The object is whole: rebuilt on a survivor from its shards, byte for byte.
ron_on 4 get "$A" -o "$W/back" && cmp "$F" "$W/back"

P=$(printf '%s\n' "${PLAIN[@]}" | med); Q=$(printf '%s\n' "${PROT[@]}" | med); R=$(printf '%s\n' "${PROTECTED[@]}" | med)
echo "| measure ($((SIZE >> 20)) MiB objects, 9 nodes on 127.0.0.1) | value | against |"
echo "|---|---|---|"
printf '| PUT, durability none (s, median of %s) | %.2f | |\n' "$RUNS" "$P"
printf '| PUT with 4+2, acknowledged (s) | %.2f | %.2fx plain |\n' "$Q" "$(echo "$Q / $P" | bc -l)"
printf '| PUT with 4+2, until protected: 6 holders per chunk (s) | %.2f | %.2fx plain |\n' "$R" "$(echo "$R / $P" | bc -l)"
printf '| repair after losing the uploader and 2 holders (s) | %.2f | |\n' "$(echo "$t1 - $t0" | bc -l)"
printf '| repair bytes moved | %s | %.3fx the minimum (%s) |\n' "$MOVED" "$(echo "$MOVED / $MIN" | bc -l)" "$MIN"
