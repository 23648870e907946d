#!/usr/bin/env bash
# One-node perf rig (issue 3): a release `ron node` against the reference tools on the same
# bytes, in the same run, all on 127.0.0.1. Prints a markdown table of ratios.
#
#   bash testing/perf/one-node.sh            # about 5 minutes after the release build
#
# (a) GET of a 100 MiB object: ron vs nginx serving the same file (curl, alternating, median of 9)
# (b) 1 KiB GETs, 64 connections, wrk: ron vs nginx, alternating (req/s and p99, median of 5)
# (c) `ron put` of 1 GiB: ron vs `b3sum` plus `dd conv=fsync` of the same file (median of 3)
# All with the node's default config.
# (d) node RSS when idle and after the runs
# Installs nginx, wrk and b3sum when missing. Needs about 3 GiB free under $W.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${W:-/tmp/ron-perf}
DUR=${DUR:-10s}
RON_PORT=${RON_PORT:-17700}
NGX_PORT=${NGX_PORT:-18080}

need=()
for t in nginx wrk b3sum curl bc; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -q >/dev/null; apt-get install -y -q "${need[@]}" >/dev/null; fi

cargo build --release --locked -p ron >/dev/null
RON=${CARGO_TARGET_DIR:-target}/release/ron

rm -rf "$W/data" "$W/nginx" "$W/wrk.log" && mkdir -p "$W/www" "$W/nginx/logs" "$W/nginx/tmp" "$W/data"
[ -f "$W/www/100m" ] || head -c 104857600 /dev/urandom > "$W/www/100m"
[ -f "$W/www/1k" ] || head -c 1024 /dev/urandom > "$W/www/1k"
[ -f "$W/rand1g" ] || head -c 1073741824 /dev/urandom > "$W/rand1g"

cat > "$W/nginx/nginx.conf" <<NGX
worker_processes auto;
worker_rlimit_nofile 20000;
pid $W/nginx/nginx.pid; error_log $W/nginx/logs/error.log warn;
events { worker_connections 20000; multi_accept on; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000; keepalive_timeout 60s;
  client_body_temp_path $W/nginx/tmp; proxy_temp_path $W/nginx/tmp; fastcgi_temp_path $W/nginx/tmp;
  uwsgi_temp_path $W/nginx/tmp; scgi_temp_path $W/nginx/tmp;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$NGX_PORT backlog=4096 reuseport; root $W/www; }
}
NGX

cleanup() {
  [ -f "$W/nginx/nginx.pid" ] && kill "$(cat "$W/nginx/nginx.pid")" 2>/dev/null || true
  [ -n "${RON_PID:-}" ] && kill "$RON_PID" 2>/dev/null || true
}
trap cleanup EXIT

med() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }

# The default config: no limit is raised (loopback is exempt from the per-client limits by
# default, as the node's own user is). Only garbage collection runs every second, so each
# 1 GiB PUT below stores its object anew.
printf '[storage]\ngc_interval_s = 1\n' > "$W/data/ron.toml"
"$RON" node --gateway "127.0.0.1:$RON_PORT" --data-dir "$W/data" 2>"$W/ron.log" >/dev/null &
RON_PID=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$RON_PORT/healthz" >/dev/null && break; sleep 0.1; done
sleep 1
RSS_IDLE=$(rss_kb $RON_PID)
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx"; sleep 1

export RON_NODE="http://127.0.0.1:$RON_PORT" RON_DATA_DIR="$W/data"   # owner.token is found there
TOKEN=$(cat "$W/data/owner.token")
A100=$("$RON" put "$W/www/100m"); A1K=$("$RON" put "$W/www/1k")
[ "$A100" = "b3:$(b3sum --no-names "$W/www/100m")" ] || { echo "address mismatch" >&2; exit 1; }

# (a) alternates the two servers, 9 complete downloads each (after a warm-up of each), so
# the noise of a shared machine falls on both alike; medians are compared.
dl() { # url -> Gbit/s of one complete 100 MiB download, or fail
  curl -s -o /dev/null -w '%{http_code} %{size_download} %{speed_download}\n' "$1" |
    awk '$1 != 200 || $2 != 104857600 { print "bad download: " $0 > "/dev/stderr"; exit 1 } { print $3*8/1e9 }'
}
dl "http://127.0.0.1:$NGX_PORT/100m" >/dev/null; dl "$RON_NODE/o/$A100" >/dev/null
: > "$W/get-ngx.txt"; : > "$W/get-ron.txt"
for _ in $(seq 9); do
  dl "http://127.0.0.1:$NGX_PORT/100m" >> "$W/get-ngx.txt"
  dl "$RON_NODE/o/$A100" >> "$W/get-ron.txt"
done
NGX_GET=$(med < "$W/get-ngx.txt")
RON_GET=$(med < "$W/get-ron.txt")

wrk1() { # url -> "req/s p99_ms" of one run
  wrk -t2 -c64 -d"$DUR" --latency "$1" | tee -a "$W/wrk.log" | awk '
    /Requests\/sec/{r=$2}
    / 99%/{v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; p=v}
    END{print r, p}'
}
# (b) alternates too: 5 runs of each, nginx then ron, so both meet the same hour; medians.
: > "$W/wrk-ngx.txt"; : > "$W/wrk-ron.txt"
for _ in $(seq "${WRK_RUNS:-5}"); do
  wrk1 "http://127.0.0.1:$NGX_PORT/1k" >> "$W/wrk-ngx.txt"
  wrk1 "$RON_NODE/o/$A1K" >> "$W/wrk-ron.txt"
done
NGX_RPS=$(awk '{print $1}' "$W/wrk-ngx.txt" | med); NGX_P99=$(awk '{print $2}' "$W/wrk-ngx.txt" | med)
RON_RPS=$(awk '{print $1}' "$W/wrk-ron.txt" | med); RON_P99=$(awk '{print $2}' "$W/wrk-ron.txt" | med)
echo "1 KiB req/s, nginx: $(awk '{print $1}' "$W/wrk-ngx.txt" | tr '\n' ' ')| ron: $(awk '{print $1}' "$W/wrk-ron.txt" | tr '\n' ' ')" >&2

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
base_put() { b3sum --no-mmap "$W/rand1g" >/dev/null; dd if="$W/rand1g" of="$W/copy1g" bs=1M conv=fsync status=none; rm -f "$W/copy1g"; }
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
cat "$W/rand1g" > /dev/null
BASE_PUT=$(for _ in 1 2 3; do secs base_put; done | med)
A1G="b3:$(b3sum --no-names "$W/rand1g")"
# Each run stores the object anew: unpinned and garbage collected (gc_interval_s = 1) between.
RON_PUT=$(for _ in 1 2 3; do
  secs "$RON" put "$W/rand1g"
  curl -sf -X DELETE -H "authorization: Bearer $TOKEN" "$RON_NODE/pin/$A1G" >/dev/null
  for _ in $(seq 100); do curl -s "$RON_NODE/stat/$A1G" | grep -q not_found && break; sleep 0.1; done
done | med)
RSS_AFTER=$(rss_kb $RON_PID)
if grep -q "Non-2xx\|Socket errors" "$W/wrk.log"; then echo "wrk saw errors; see $W/wrk.log" >&2; exit 1; fi
MB=1073741824

ratio() { echo "scale=2; $1 / $2" | bc -l; }
cat <<TABLE

| measure | ron | baseline | ratio (ron / baseline) | target |
|---|---|---|---|---|
| (a) GET 100 MiB, Gbit/s (curl) | $RON_GET | nginx $NGX_GET | $(ratio "$RON_GET" "$NGX_GET") | >= 0.8 |
| (b) 1 KiB GET, req/s (wrk -c64) | $RON_RPS | nginx $NGX_RPS | $(ratio "$RON_RPS" "$NGX_RPS") | >= 1.0 |
| (b) 1 KiB GET, p99 ms | $RON_P99 | nginx $NGX_P99 | $(ratio "$RON_P99" "$NGX_P99") | <= 1.0 |
| (c) PUT 1 GiB, s (GB/s) | $RON_PUT ($(echo "scale=2; $MB/$RON_PUT/1000000000" | bc -l)) | b3sum+dd fsync $BASE_PUT ($(echo "scale=2; $MB/$BASE_PUT/1000000000" | bc -l)) | $(ratio "$BASE_PUT" "$RON_PUT") (speed) | >= 0.5 |
| (d) RSS idle / after runs, MB | $(echo "scale=1; $RSS_IDLE/1024" | bc -l) / $(echo "scale=1; $RSS_AFTER/1024" | bc -l) | | | idle <= 15 |
TABLE
