#!/usr/bin/env bash
# Peer-network perf rig (issue 6): a 1 GiB object moved between two local nodes against iroh's
# `sendme` moving the same file, in the same run, all on 127.0.0.1. Prints a markdown table.
#
#   cargo install --locked sendme        # once, outside CI (about 10 minutes)
#   bash testing/perf/p2p.sh             # about 3 minutes after the release build
#
# ron:    node A holds the object (PUT before timing); a fresh node B bootstraps from A and
#         GETs it: B finds A through the DHT, transfers every range over /ron/oap/1, verifies
#         each 16 KiB group against the address and sends it on to curl as it is verified,
#         while storing it. Timed from the GET to its last byte ("end to end"), and to the
#         copy committed in B's store (fsynced): a range request for one byte, which joins the
#         fetch and is answered from the committed copy (/stat would re-verify the whole object).
# pin:    node to node, no client streaming: a fresh node B is told `ron pin ADDR`; it finds A,
#         transfers and verifies every range as above, commits its copy (fsynced) and pins it.
#         Timed to the command's exit; B's copy is then read back and compared (not timed).
# sendme: `sendme send` (relay disabled, addresses-only ticket; a fresh sender per run, its
#         import not timed), then `sendme receive` into an empty directory, timed to exit
#         (it verifies into a blob store in a temporary directory, then copies the file out:
#         a read and a write of 1 GiB, ext4 has no reflink); the file is compared with the
#         original.
# nginx:  when installed, the ceiling of an encrypted transfer on this machine: nginx serving
#         the same file over HTTPS (TLS 1.3, sendfile from the page cache) to curl writing it
#         to a file, nothing verified or stored.
# RUNS (default 3) runs of each, alternating; medians compared.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${W:-/tmp/ron-perf}
RUNS=${RUNS:-3}
SENDME=${SENDME:-$(command -v sendme || echo "$HOME/.cargo/bin/sendme")}
PA=${PA:-17801}; PB=${PB:-17802}; P2P=${P2P:-17811}; NGX=${NGX:-17843}
[ -x "$SENDME" ] || { echo "sendme not found: cargo install --locked sendme, or SENDME=path" >&2; exit 1; }
for t in curl bc cmp; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done

cargo build --release --locked -p ron >/dev/null
RON=${CARGO_TARGET_DIR:-target}/release/ron
mkdir -p "$W"
[ -f "$W/rand1g" ] || head -c 1073741824 /dev/urandom > "$W/rand1g"
G=1073741824

PIDS=(); BPID=
cleanup() { for p in "${PIDS[@]}" $BPID; do kill "$p" 2>/dev/null || true; done; }
for port in "$PA" "$PB"; do # a node left from an earlier run would answer for ours
  ! curl -sf -o /dev/null "127.0.0.1:$port/healthz" || { echo "port $port is taken" >&2; exit 1; }
done
trap cleanup EXIT
med() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
gbs() { echo "scale=3; $G / ($2 - $1) / 1000000000" | bc; }

# Full speed between the two: no pacing, room for the object, a generous deadline.
conf='[p2p]\npeer_bytes_per_sec = 0\nfetch_timeout_ms = 600000\ncache_bytes = 4294967296\n[limits]\nper_peer_bytes_per_sec = 0\n'
rm -rf "$W/pa" && mkdir -p "$W/pa" && printf "$conf" > "$W/pa/ron.toml"
"$RON" node --gateway "127.0.0.1:$PA" --p2p-listen "/ip4/127.0.0.1/tcp/$P2P" --data-dir "$W/pa" 2>"$W/pa.log" >/dev/null &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "127.0.0.1:$PA/healthz" >/dev/null && break; sleep 0.1; done
SEED=$(curl -s "127.0.0.1:$PA/status" | grep -o '/ip4/127.0.0.1/tcp/[0-9]*/p2p/[A-Za-z0-9]*' | head -1)
ADDR=$(RON_NODE="http://127.0.0.1:$PA" RON_DATA_DIR="$W/pa" "$RON" put "$W/rand1g")
[ "$ADDR" = "b3:$(b3sum --no-names "$W/rand1g")" ] || { echo "address mismatch" >&2; exit 1; }

node_b() { # a fresh node B, bootstrapped from A and connected to it; -> its pid in BPID
  rm -rf "$W/pb" && mkdir -p "$W/pb" && printf "$conf" > "$W/pb/ron.toml"
  "$RON" node --gateway "127.0.0.1:$PB" --p2p-listen /ip4/127.0.0.1/tcp/0 --bootstrap "$SEED" \
    --data-dir "$W/pb" 2>"$W/pb.log" >/dev/null &
  BPID=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$PB/healthz" >/dev/null && break; sleep 0.1; done
  kill -0 "$BPID" 2>/dev/null || { echo "node B did not start: $(tail -1 "$W/pb.log")" >&2; exit 1; }
  until curl -s "127.0.0.1:$PB/status" | grep -q '"peers":\["'; do sleep 0.1; done
  sync
}

pin_run() { # -> GB/s of `ron pin` on B: fetched from A, verified, committed (fsynced), pinned
  node_b
  local pid=$BPID s e
  s=$(now)
  RON_NODE="http://127.0.0.1:$PB" RON_DATA_DIR="$W/pb" "$RON" pin "$ADDR" ||
    { echo "ron pin failed" >&2; exit 1; }
  e=$(now)
  curl -s "127.0.0.1:$PB/o/$ADDR" | cmp -s - "$W/rand1g" || { echo "bad pinned copy on B" >&2; exit 1; }
  kill $pid; wait $pid 2>/dev/null || true; BPID=
  gbs "$s" "$e"
}

ron_run() { # -> "total_GB/s stored_GB/s"
  node_b
  local pid=$BPID out s e
  s=$(now)
  out=$(curl -s -o "$W/pb.out" -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}' "127.0.0.1:$PB/o/$ADDR")
  [ "$(curl -s -o /dev/null -w '%{http_code}' -r 0-0 "127.0.0.1:$PB/o/$ADDR")" = 206 ] ||
    { echo "no committed copy on B" >&2; exit 1; }
  e=$(now)
  kill $pid; wait $pid 2>/dev/null || true; BPID=
  set -- $out
  [ "$1" = 200 ] && [ "$2" = $G ] && cmp -s "$W/pb.out" "$W/rand1g" || { echo "bad ron transfer: $out" >&2; exit 1; }
  rm -f "$W/pb.out"
  echo "$(echo "scale=3; $G / $4 / 1000000000" | bc) $(gbs "$s" "$e")"
}

NG=$W/nginx
tls_start() { # -> 0 when nginx serves $W/rand1g on https://127.0.0.1:$NGX
  command -v nginx >/dev/null && command -v openssl >/dev/null || return 1
  mkdir -p "$NG/logs" "$NG/tmp"
  [ -f "$NG/cert.pem" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -nodes -keyout "$NG/key.pem" -out "$NG/cert.pem" -days 30 -subj /CN=127.0.0.1 2>/dev/null
  cat > "$NG/nginx.conf" <<EOF
worker_processes 1;
pid $NG/nginx.pid; error_log $NG/logs/error.log warn;
events { worker_connections 64; }
http {
  access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path $NG/tmp; proxy_temp_path $NG/tmp; fastcgi_temp_path $NG/tmp;
  uwsgi_temp_path $NG/tmp; scgi_temp_path $NG/tmp;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$NGX ssl; root $W;
           ssl_certificate $NG/cert.pem; ssl_certificate_key $NG/key.pem; ssl_protocols TLSv1.3; }
}
EOF
  nginx -c "$NG/nginx.conf" -p "$NG" 2>/dev/null || return 1
  for _ in $(seq 50); do curl -skf -o /dev/null -r 0-0 "https://127.0.0.1:$NGX/rand1g" && return 0; sleep 0.1; done
  return 1
}
tls_stop() { [ -f "$NG/nginx.pid" ] && kill "$(cat "$NG/nginx.pid")" 2>/dev/null || true; }
tls_run() { # -> GB/s of one 1 GiB HTTPS download into a file
  local out
  out=$(curl -sk -o "$W/tls.out" -w '%{http_code} %{size_download} %{time_total}' "https://127.0.0.1:$NGX/rand1g")
  set -- $out
  [ "$1" = 200 ] && [ "$2" = $G ] || { echo "bad nginx transfer: $out" >&2; exit 1; }
  rm -f "$W/tls.out"
  echo "scale=3; $G / $3 / 1000000000" | bc
}

mkdir -p "$W/sm"; cp -n "$W/rand1g" "$W/sm/file1g" 2>/dev/null || true
sendme_run() { # a fresh sender each run (its import is not timed), then the timed receive
  rm -f "$W/sm/send.log"
  (cd "$W/sm" && rm -rf .sendme-* && exec "$SENDME" send --relay disabled --ticket-type addresses --no-progress file1g > "$W/sm/send.log" 2>&1) &
  local spid=$! s e ticket
  until grep -q 'sendme receive' "$W/sm/send.log" 2>/dev/null; do sleep 0.1; done
  ticket=$(grep -o 'blob[a-z0-9]*' "$W/sm/send.log" | head -1)
  rm -rf "$W/sm/recv" && mkdir -p "$W/sm/recv" && sync
  s=$(now)
  (cd "$W/sm/recv" && timeout 600 "$SENDME" receive --relay disabled --no-progress "$ticket" > "$W/sm/recv.log" 2>&1) ||
    { echo "sendme receive failed: $(tail -1 "$W/sm/recv.log")" >&2; kill $spid; exit 1; }
  e=$(now)
  kill $spid; wait $spid 2>/dev/null || true
  cmp -s "$W/sm/recv/file1g" "$W/rand1g" || { echo "bad sendme transfer" >&2; exit 1; }
  gbs "$s" "$e"
}

: > "$W/p2p-ron.txt"; : > "$W/p2p-pin.txt"; : > "$W/p2p-sendme.txt"; : > "$W/p2p-tls.txt"
TLS=0; tls_stop; tls_start && TLS=1 && trap 'cleanup; tls_stop' EXIT
for _ in $(seq "$RUNS"); do
  ron_run >> "$W/p2p-ron.txt"
  pin_run >> "$W/p2p-pin.txt"
  sendme_run >> "$W/p2p-sendme.txt"
  [ $TLS = 0 ] || tls_run >> "$W/p2p-tls.txt"
done
RON_TOTAL=$(awk '{print $1}' "$W/p2p-ron.txt" | med)
RON_STORED=$(awk '{print $2}' "$W/p2p-ron.txt" | med)
RON_PIN=$(med < "$W/p2p-pin.txt")
SM=$(med < "$W/p2p-sendme.txt")
echo
echo "| 1 GiB between two local nodes | ron | sendme | ratio |"
echo "|---|---|---|---|"
echo "| end to end, GB/s (median of $RUNS) | $RON_TOTAL | $SM | $(echo "scale=2; $RON_TOTAL / $SM" | bc) |"
echo "| ron's copy committed in the store (fsynced), GB/s | $RON_STORED | | $(echo "scale=2; $RON_STORED / $SM" | bc) |"
echo "| node to node: \`ron pin\` on B, GB/s | $RON_PIN | $SM | $(echo "scale=2; $RON_PIN / $SM" | bc) |"
if [ $TLS = 1 ]; then
  CEIL=$(med < "$W/p2p-tls.txt")
  echo "| ceiling: nginx HTTPS to curl, nothing verified or stored, GB/s | $CEIL | | $(echo "scale=2; $CEIL / $SM" | bc) |"
  echo
  echo "ron end to end is $(echo "scale=2; $RON_TOTAL / $CEIL" | bc) of the ceiling; 2x sendme would be $(echo "scale=2; 2 * $SM / $CEIL" | bc) of it."
fi
echo
echo "runs (ron end-to-end stored / ron pin / sendme / nginx https):"
paste "$W/p2p-ron.txt" "$W/p2p-pin.txt" "$W/p2p-sendme.txt" "$W/p2p-tls.txt"
