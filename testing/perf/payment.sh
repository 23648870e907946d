#!/usr/bin/env bash
# Payment and accounting rig (issue 19): the ledger's durable transfers against the disk's
# fsync floor, the 1 KiB GET with metering and charging on against off, and the proof of
# work's check, in one run on 127.0.0.1. Prints a table.
#
#   bash testing/perf/payment.sh        # about 3 minutes after the release build
#
# floor:  fsynced 1 KiB appends per second, one writer (`dd oflag=dsync`).
# ledger: `crates/svc-payment/examples/ledger_load.rs`: 64 concurrent senders charge reads
#         through the payment service on a file ledger; each answer waits for its batch's
#         fsync. Transfers/s, p50/p99, transfers per commit; then the proof-of-work check.
# GET:    three release nodes, defaults but for what is measured: "off" meters nothing
#         (`accounting.enabled = false`) and charges nothing; "on" charges 1 credit per GET
#         (`payment.per_request.get = 1`) and meters (the default), each charge fsynced before
#         its GET is served; "batched" is "on" with `payment.durable_charges = false` (charges
#         committed every 10 ms). wrk -t2 -c64, the same user token on all (a key in
#         auth.trusted_roots, granted credits), alternating runs, medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${W:-/tmp/ron-perf-payment}
DUR=${DUR:-10s}
RUNS=${RUNS:-3}
OFF_PORT=${OFF_PORT:-17810}
ON_PORT=${ON_PORT:-17811}
FAST_PORT=${FAST_PORT:-17812}
need=()
for t in wrk curl bc; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -q >/dev/null; apt-get install -y -q "${need[@]}" >/dev/null; fi

cargo build --release --locked -p ron >/dev/null
cargo build --release --locked -p svc-payment --example ledger_load >/dev/null
T=${CARGO_TARGET_DIR:-target}/release
rm -rf "$W"; mkdir -p "$W"
med() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

floor=$(for _ in 1 2 3; do
  s=$(dd if=/dev/zero of="$W/dsync" bs=1k count=3000 oflag=dsync 2>&1 | grep -o '[0-9.e-]* s,' | tr -d ' s,')
  echo "3000 / $s" | bc -l
done | med)
rm -f "$W/dsync"

"$T/examples/ledger_load" "$W/ledger" 64 200000 | tee "$W/ledger.txt"
tps=$(awk '/^ledger:/{for(i=1;i<=NF;i++) if($i=="=") print $(i+1)}' "$W/ledger.txt" | tr -d '/s')
lp50=$(awk '/^ledger:/{for(i=1;i<=NF;i++) if($i=="p50") print $(i+1)}' "$W/ledger.txt")
lp99=$(awk '/^ledger:/{for(i=1;i<=NF;i++) if($i=="p99") print $(i+1)}' "$W/ledger.txt")
per=$(awk '/^ledger:/{for(i=1;i<=NF;i++) if($i=="transfers" && $(i+1)=="per") print $(i-1)}' "$W/ledger.txt")
verify=$(awk '/^pow:/{print $3}' "$W/ledger.txt")

# The user and the two nodes.
PUB=$("$T/ron" key gen --out "$W/alice.key")
TOKEN=$("$T/ron" cap mint --key "$W/alice.key" --method get)
mkdir -p "$W/off" "$W/on" "$W/fast"
printf '[auth]\ntrusted_roots = ["%s"]\n[accounting]\nenabled = false\n' "$PUB" > "$W/off/ron.toml"
printf '[auth]\ntrusted_roots = ["%s"]\n[payment]\nper_request = { get = 1 }\n' "$PUB" > "$W/on/ron.toml"
printf '[auth]\ntrusted_roots = ["%s"]\n[payment]\nper_request = { get = 1 }\ndurable_charges = false\n' "$PUB" > "$W/fast/ron.toml"
"$T/ron" node --gateway "127.0.0.1:$OFF_PORT" --p2p-listen /ip4/127.0.0.1/tcp/0 --data-dir "$W/off" >/dev/null 2>"$W/off.log" &
OFF=$!
"$T/ron" node --gateway "127.0.0.1:$ON_PORT" --p2p-listen /ip4/127.0.0.1/tcp/0 --data-dir "$W/on" >/dev/null 2>"$W/on.log" &
ON=$!
"$T/ron" node --gateway "127.0.0.1:$FAST_PORT" --p2p-listen /ip4/127.0.0.1/tcp/0 --data-dir "$W/fast" >/dev/null 2>"$W/fast.log" &
FAST=$!
trap 'kill $OFF $ON $FAST 2>/dev/null || true' EXIT
for p in $OFF_PORT $ON_PORT $FAST_PORT; do
  for _ in $(seq 100); do curl -sf "127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
done
head -c 1024 /dev/urandom > "$W/1k"
port() { case $1 in off) echo $OFF_PORT;; on) echo $ON_PORT;; fast) echo $FAST_PORT;; esac; }
for d in off on fast; do
  p=$(port $d)
  A=$(curl -sf -H "Authorization: Bearer $(cat "$W/$d/owner.token")" --data-binary @"$W/1k" "127.0.0.1:$p/put" | sed 's/.*"address":"\([^"]*\)".*/\1/')
done
for d in on fast; do
  curl -sf -H "Authorization: Bearer $(cat "$W/$d/owner.token")" -H 'content-type: application/json' \
    -d "{\"to\":\"$PUB\",\"credits\":1000000000000}" "127.0.0.1:$(port $d)/credits/grant" >/dev/null
done

wrk1() { # url -> "req/s p99_ms" of one run
  wrk -t2 -c64 -d"$DUR" --latency -H "Authorization: Bearer $TOKEN" "$1" | tee -a "$W/wrk.log" | awk '
    /Requests\/sec/{r=$2}
    / 99%/{v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; p=v}
    END{print r, p}'
}
: > "$W/off.txt"; : > "$W/on.txt"; : > "$W/fast.txt"
for _ in $(seq "$RUNS"); do
  for d in off on fast; do wrk1 "http://127.0.0.1:$(port $d)/o/$A" >> "$W/$d.txt"; done
done
if grep -q "Non-2xx\|Socket errors" "$W/wrk.log"; then echo "wrk saw errors; see $W/wrk.log" >&2; exit 1; fi
off=$(awk '{print $1}' "$W/off.txt" | med); on=$(awk '{print $1}' "$W/on.txt" | med)
offp=$(awk '{print $2}' "$W/off.txt" | med); onp=$(awk '{print $2}' "$W/on.txt" | med)
fast=$(awk '{print $1}' "$W/fast.txt" | med); fastp=$(awk '{print $2}' "$W/fast.txt" | med)
echo "req/s off: $(awk '{print $1}' "$W/off.txt" | tr '\n' ' ')| on: $(awk '{print $1}' "$W/on.txt" | tr '\n' ' ')| batched: $(awk '{print $1}' "$W/fast.txt" | tr '\n' ' ')" >&2
charged=$(curl -s "127.0.0.1:$ON_PORT/metrics" | awk '/^payment_charged_credits_total /{print $2}')
commits=$(curl -s "127.0.0.1:$ON_PORT/metrics" | awk '/^payment_commits_total /{print $2}')

echo
echo "| figure | value | against |"
echo "|---|---|---|"
printf '| fsynced 1 KiB appends/s, one writer (dd oflag=dsync) | %.0f | the floor |\n' "$floor"
printf '| ledger: durable transfers/s, 64 senders | %.0f | %.1fx the floor; goal 10,000 |\n' "$tps" "$(echo "$tps / $floor" | bc -l)"
printf '| ledger: p50 / p99 per transfer; transfers per commit | %s / %s ms; %s | |\n' "$lp50" "$lp99" "$per"
printf '| 1 KiB GET req/s, metering and charging on | %.0f | %.2fx off (%.0f); goal >= 0.90x |\n' "$on" "$(echo "$on / $off" | bc -l)" "$off"
printf '| 1 KiB GET req/s, on with durable_charges = false (committed every 10 ms) | %.0f | %.2fx off; goal >= 0.90x |\n' "$fast" "$(echo "$fast / $off" | bc -l)"
printf '| 1 KiB GET p99, on / batched / off | %s / %s / %s ms | |\n' "$onp" "$fastp" "$offp"
printf '| charged GETs per ledger commit (on) | %.1f | group commit |\n' "$(echo "$charged / $commits" | bc -l)"
printf '| proof-of-work check per request | %s ns | |\n' "$verify"
