#!/usr/bin/env bash
# Mailbox rig (issue 18): one release node with the defaults on 127.0.0.1, and the load
# generator `crates/svc-mailbox/examples/mail_load.rs` on the same machine. Prints a table.
#
#   bash testing/perf/mail.sh              # about 5 minutes after the release build
#   SOAK=1000000 bash testing/perf/mail.sh # plus the soak (about 10 more minutes)
#
# floor:   fsynced 1 KiB appends per second on the same disk, one writer (`dd oflag=dsync`):
#          what one fsync per message would reach. Group commit must beat it.
# send:    MESSAGES envelopes of 1 KiB (the smallest bucket), sealed before the clock starts,
#          sent by 64 concurrent HTTP/1.1 senders to 100 mailboxes on the node; each 201 is
#          durable (fsynced in a group commit). Sends/s and the p50/p99 of send-to-201.
# deliver: every mailbox drained by its owner (fetch 1,000, ack them; each request signed).
# soak:    SOAK more messages sent while the owners fetch and acknowledge; the node's RSS
#          every tenth of the way (it must stay flat).
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${W:-/tmp/ron-perf-mail}
MESSAGES=${MESSAGES:-200000}
SOAK=${SOAK:-0}
PORT=${PORT:-17990}
for t in curl dd; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done

cargo build --release --locked -p ron >/dev/null
cargo build --release --locked -p svc-mailbox --example mail_load >/dev/null
T=${CARGO_TARGET_DIR:-target}/release
rm -rf "$W"; mkdir -p "$W"

# The floor: one writer, each 1 KiB append fsynced (O_DSYNC), median of 3.
floor=$(for _ in 1 2 3; do
  s=$(dd if=/dev/zero of="$W/dsync" bs=1k count=3000 oflag=dsync 2>&1 | grep -o '[0-9.e-]* s,' | tr -d ' s,')
  echo "3000 / $s" | bc -l
done | sort -n | sed -n 2p)
rm -f "$W/dsync"

"$T/ron" node --gateway "127.0.0.1:$PORT" --p2p-listen /ip4/127.0.0.1/tcp/0 --data-dir "$W/data" \
  >/dev/null 2>"$W/node.log" &
NODE=$!
trap 'kill $NODE 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
TOKEN=$(cat "$W/data/owner.token")

args=(--senders 64 --recipients 100 --messages "$MESSAGES")
[ "$SOAK" -gt 0 ] && args+=(--soak "$SOAK" --pid "$NODE")
"$T/examples/mail_load" "http://127.0.0.1:$PORT" "$TOKEN" "${args[@]}" | tee "$W/load.txt"

sends=$(awk '/^send:/{for(i=1;i<=NF;i++) if($i=="=") print $(i+1)}' "$W/load.txt" | tr -d '/s')
p50=$(awk '/^send:/{for(i=1;i<=NF;i++) if($i=="p50") print $(i+1)}' "$W/load.txt")
p99=$(awk '/^send:/{for(i=1;i<=NF;i++) if($i=="p99") print $(i+1)}' "$W/load.txt")
deliver=$(awk '/^deliver:/{for(i=1;i<=NF;i++) if($i=="=") print $(i+1)}' "$W/load.txt" | tr -d '/s')
commits=$(curl -s "127.0.0.1:$PORT/metrics" | awk '/^mail_commits_total /{print $2}')
changes=$(curl -s "127.0.0.1:$PORT/metrics" | awk '/^mail_commit_changes_total /{print $2}')

echo
echo "| figure | value | against |"
echo "|---|---|---|"
printf '| fsynced 1 KiB appends/s, one writer (dd oflag=dsync) | %.0f | the floor |\n' "$floor"
printf '| durable 1 KiB sends/s, 64 senders | %.0f | %.1fx the floor |\n' "$sends" "$(echo "$sends / $floor" | bc -l)"
printf '| send-to-201 p50 / p99 | %s / %s ms | goal p99 <= 20 ms |\n' "$p50" "$p99"
printf '| deliveries/s (fetch 1,000 + ack) | %.0f | %.2fx the sends |\n' "$deliver" "$(echo "$deliver / $sends" | bc -l)"
printf '| changes per fsynced commit | %.1f | group commit |\n' "$(echo "$changes / $commits" | bc -l)"
