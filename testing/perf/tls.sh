#!/usr/bin/env bash
# TLS perf rig (issue 4): a release node and nginx with the same certificate and key, the
# same 1 KiB file, in the same run, all on 127.0.0.1; limits raised in the node's config.
#
#   bash testing/perf/tls.sh            # about 5 minutes after the release build
#
# (a) HTTPS 1 KiB GET, keep-alive, wrk -t2 -c64: req/s and server CPU per request (median of
#     5, alternating servers)
# (b) full TLS handshakes: wrk with `Connection: close`, -c16: handshakes/s, and the server's
#     CPU seconds per 1,000 handshakes (utime+stime from /proc; the client shares the cores)
# (c) 10,000 TLS connections held open (a Python asyncio client; ulimit -n raised): node RSS,
#     and /healthz p99 over 500 requests while they are held
# Installs nginx, wrk, curl and bc when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${W:-/tmp/ron-perf-tls}
DUR=${DUR:-8s}
HOLD=${HOLD:-10000}
ulimit -n "$(ulimit -Hn)"   # 10k held needs ~10k descriptors per side
need=()
for t in nginx wrk curl bc python3; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -q >/dev/null; apt-get install -y -q "${need[@]}" >/dev/null; fi

cargo build --release --locked -p ron >/dev/null
RON=${CARGO_TARGET_DIR:-target}/release/ron
rm -rf "$W" && mkdir -p "$W/data" "$W/www" "$W/nginx/logs" "$W/nginx/tmp"
head -c 1024 /dev/urandom > "$W/www/1k"
printf '[limits]\nper_peer_rps = 0\nper_peer_bytes_per_sec = 0\nper_peer_streams = 0\nglobal_concurrency = 100000\nread_idle_ms = 600000\n' > "$W/data/ron.toml"
"$RON" node --gateway 127.0.0.1:17720 --gateway-tls 127.0.0.1:17721 --oap-listen 127.0.0.1:17722 \
  --tls-self-signed --data-dir "$W/data" 2>"$W/ron.log" >/dev/null &
RON_PID=$!
cleanup() {
  kill "$RON_PID" 2>/dev/null || true
  [ -f "$W/nginx/nginx.pid" ] && kill "$(cat "$W/nginx/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do curl -sf 127.0.0.1:17720/healthz >/dev/null && break; sleep 0.1; done
ADDR=$(RON_NODE=http://127.0.0.1:17720 RON_DATA_DIR="$W/data" "$RON" put "$W/www/1k")

cat > "$W/nginx/nginx.conf" <<NGX
worker_processes auto;
worker_rlimit_nofile 65536;
pid $W/nginx/nginx.pid; error_log $W/nginx/logs/error.log warn;
events { worker_connections 30000; multi_accept on; }
http {
  access_log off; sendfile on; keepalive_requests 1000000; keepalive_timeout 600s;
  client_body_temp_path $W/nginx/tmp; proxy_temp_path $W/nginx/tmp; fastcgi_temp_path $W/nginx/tmp;
  uwsgi_temp_path $W/nginx/tmp; scgi_temp_path $W/nginx/tmp;
  default_type application/octet-stream;
  ssl_certificate $W/data/tls/cert.pem; ssl_certificate_key $W/data/tls/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
  server { listen 127.0.0.1:18443 ssl backlog=4096; root $W/www; }
}
NGX
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx"; sleep 1

med() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
rps() { wrk -t2 -c"$1" -d"$DUR" "${@:3}" "$2" | awk '/Requests\/sec/{print $2}'; }
ticks() { # utime+stime of the given pids, in clock ticks
  local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
NGX_PIDS=$(pgrep -f "nginx: (master|worker)" | tr '\n' ' ')
HZ=$(getconf CLK_TCK)

# (a) req/s, and the server's CPU microseconds per request (steadier than req/s when the
# client shares the cores)
ka() { # $1 url, $2.. pids -> "req/s cpu_us_per_request"
  local url=$1; shift
  local t0; t0=$(ticks "$@")
  local out; out=$(wrk -t2 -c64 -d"$DUR" "$url")
  local t1; t1=$(ticks "$@")
  local reqs; reqs=$(awk '/requests in/{print $1}' <<<"$out")
  echo "$(awk '/Requests\/sec/{print $2}' <<<"$out") $(echo "($t1 - $t0) / $HZ / $reqs * 1000000" | bc -l)"
}
RA=(); NA=(); RU=(); NU=()
for r in 1 2 3 4 5; do
  read -r a b < <(ka "https://127.0.0.1:17721/o/$ADDR" "$RON_PID"); RA+=("$a"); RU+=("$b")
  # shellcheck disable=SC2086
  read -r a b < <(ka https://127.0.0.1:18443/1k $NGX_PIDS); NA+=("$a"); NU+=("$b")
done
ra=$(printf '%s\n' "${RA[@]}" | med); na=$(printf '%s\n' "${NA[@]}" | med)
ru=$(printf '%s\n' "${RU[@]}" | med); nu=$(printf '%s\n' "${NU[@]}" | med)

# (b) handshakes: req/s with Connection: close, and CPU per 1000
hs() { # $1 url, $2.. pids -> "handshakes/s cpu_s_per_1000"
  local url=$1; shift
  local t0; t0=$(ticks "$@")
  local out; out=$(wrk -t2 -c16 -d"$DUR" -H 'Connection: close' "$url")
  local t1; t1=$(ticks "$@")
  local reqs; reqs=$(awk '/requests in/{print $1}' <<<"$out")
  local rate; rate=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  echo "$rate $(echo "($t1 - $t0) / $HZ / $reqs * 1000" | bc -l)"
}
RB=(); NB=(); RC=(); NC=()
for r in 1 2 3; do
  read -r a b < <(hs "https://127.0.0.1:17721/o/$ADDR" "$RON_PID"); RB+=("$a"); RC+=("$b")
  # shellcheck disable=SC2086
  read -r a b < <(hs https://127.0.0.1:18443/1k $NGX_PIDS); NB+=("$a"); NC+=("$b")
done
rb=$(printf '%s\n' "${RB[@]}" | med); nb=$(printf '%s\n' "${NB[@]}" | med)
rc=$(printf '%s\n' "${RC[@]}" | med); nc=$(printf '%s\n' "${NC[@]}" | med)

# (c) hold connections
cat > "$W/hold.py" <<'PY'
import asyncio, ssl, sys, time, urllib.request
n, port = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
async def main():
    sem = asyncio.Semaphore(200); held = []
    async def one():
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            held.append(w)
    await asyncio.gather(*(one() for _ in range(n)))
    print(len(held), flush=True)
    sys.stdin.readline()   # hold until told
asyncio.run(main())
PY
coproc HOLDER { python3 "$W/hold.py" "$HOLD" 17721; }
read -r HELD <&"${HOLDER[0]}"
RSS=$(awk '/^VmRSS/{print $2}' "/proc/$RON_PID/status")
P99=$(python3 - <<'PY'
import time, urllib.request
lat = []
for _ in range(500):
    t = time.perf_counter(); urllib.request.urlopen("http://127.0.0.1:17720/healthz").read(); lat.append(time.perf_counter() - t)
lat.sort(); print(f"{lat[int(len(lat)*0.99)-1]*1000:.2f}")
PY
)
echo >&"${HOLDER[1]}"; wait "$HOLDER_PID" 2>/dev/null || true

echo "| measure | ron | nginx (same cert) | ratio | target |"
echo "|---|---|---|---|---|"
printf '| (a) HTTPS 1 KiB keep-alive, wrk -c64, req/s | %.0f | %.0f | %.2f | >= 1.0 |\n' "$ra" "$na" "$(echo "$ra / $na" | bc -l)"
printf '| (a) server CPU us per keep-alive request | %.1f | %.1f | %.2f | |\n' "$ru" "$nu" "$(echo "$ru / $nu" | bc -l)"
printf '| (b) full handshakes/s (Connection: close, -c16) | %.0f | %.0f | %.2f | |\n' "$rb" "$nb" "$(echo "$rb / $nb" | bc -l)"
printf '| (b) server CPU s per 1,000 handshakes | %.3f | %.3f | %.2f | <= 0.67 |\n' "$rc" "$nc" "$(echo "$rc / $nc" | bc -l)"
printf '| (c) %s TLS connections held: node RSS | %.0f MB | | | <= 150 MB |\n' "$HELD" "$(echo "$RSS / 1024" | bc -l)"
printf '| (c) /healthz p99 while held | %s ms | | | < 15 ms |\n' "$P99"
