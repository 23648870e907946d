#!/usr/bin/env bash
# Tracing overhead rig (issue 21): the 1 KiB GET with traces exported at the default
# sampling (0.1%) against tracing off, in one run on 127.0.0.1. Prints a table.
#
#   bash testing/perf/tracing.sh        # about 2 minutes after the release build
#
# Two release nodes of one `ron` built with `--features otlp`, defaults but for what is
# measured: "off" has no `log.otlp_endpoint` (no exporter installed, as in a ron built
# without the feature); "on" exports sampled traces to an OTLP sink on 127.0.0.1 (a small
# Python server answering 200 and counting the spans it is sent), with `trace_sample` at its
# default, 0.001. wrk -t2 -c64, alternating runs, medians. Goal: on >= 0.95x off.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${W:-/tmp/ron-perf-tracing}
DUR=${DUR:-10s}
RUNS=${RUNS:-3}
OFF_PORT=${OFF_PORT:-17820}
ON_PORT=${ON_PORT:-17821}
SINK_PORT=${SINK_PORT:-17829}
need=()
for t in wrk curl bc python3; do command -v $t >/dev/null || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -q >/dev/null; apt-get install -y -q "${need[@]}" >/dev/null; fi

cargo build --release --locked -p ron --features otlp >/dev/null
T=${CARGO_TARGET_DIR:-target}/release
rm -rf "$W"; mkdir -p "$W/off" "$W/on"
med() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

# The OTLP sink: answers every export, counts the spans in it.
cat > "$W/sink.py" <<'PY'
import http.server, json, sys
spans = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global spans
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            for rs in json.loads(body).get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    spans += len(ss.get("spans", []))
        except ValueError:
            pass
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(str(spans).encode())
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$W/sink.py" "$SINK_PORT" &
SINK=$!
printf '[log]\notlp_endpoint = "http://127.0.0.1:%s"\n' "$SINK_PORT" > "$W/on/ron.toml"
"$T/ron" node --gateway "127.0.0.1:$OFF_PORT" --p2p-listen /ip4/127.0.0.1/tcp/0 --data-dir "$W/off" >/dev/null 2>"$W/off.log" &
OFF=$!
"$T/ron" node --gateway "127.0.0.1:$ON_PORT" --p2p-listen /ip4/127.0.0.1/tcp/0 --data-dir "$W/on" >/dev/null 2>"$W/on.log" &
ON=$!
trap 'kill $OFF $ON $SINK 2>/dev/null || true' EXIT
for p in $OFF_PORT $ON_PORT; do
  for _ in $(seq 100); do curl -sf "127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
done
head -c 1024 /dev/urandom > "$W/1k"
port() { case $1 in off) echo $OFF_PORT;; on) echo $ON_PORT;; esac; }
for d in off on; do
  A=$(curl -sf -H "Authorization: Bearer $(cat "$W/$d/owner.token")" --data-binary @"$W/1k" "127.0.0.1:$(port $d)/put" | sed 's/.*"address":"\([^"]*\)".*/\1/')
done

wrk1() { # url -> "req/s p99_ms" of one run
  wrk -t2 -c64 -d"$DUR" --latency "$1" | tee -a "$W/wrk.log" | awk '
    /Requests\/sec/{r=$2}
    / 99%/{v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; p=v}
    END{print r, p}'
}
: > "$W/off.txt"; : > "$W/on.txt"
for _ in $(seq "$RUNS"); do
  for d in off on; do wrk1 "http://127.0.0.1:$(port $d)/o/$A" >> "$W/$d.txt"; done
done
if grep -q "Non-2xx\|Socket errors" "$W/wrk.log"; then echo "wrk saw errors; see $W/wrk.log" >&2; exit 1; fi
sleep 3 # the last batch
off=$(awk '{print $1}' "$W/off.txt" | med); on=$(awk '{print $1}' "$W/on.txt" | med)
offp=$(awk '{print $2}' "$W/off.txt" | med); onp=$(awk '{print $2}' "$W/on.txt" | med)
spans=$(curl -s "127.0.0.1:$SINK_PORT/")
echo "req/s off: $(awk '{print $1}' "$W/off.txt" | tr '\n' ' ')| on: $(awk '{print $1}' "$W/on.txt" | tr '\n' ' ')" >&2

echo
echo "| figure | value | against |"
echo "|---|---|---|"
printf '| 1 KiB GET req/s, traces exported at 0.1%% sampling | %.0f | %.3fx tracing off (%.0f); goal >= 0.95x |\n' "$on" "$(echo "$on / $off" | bc -l)" "$off"
printf '| 1 KiB GET p99, exported / off | %s / %s ms | |\n' "$onp" "$offp"
printf '| spans the sink received | %s | about 2 per sampled GET |\n' "$spans"
