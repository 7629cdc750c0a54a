#!/bin/bash
# The 100,000-connection run of bench/README.md: a multi-process reference gateway and one agent with
# several workers and source addresses, 60 s ramp, 10 min hold with heartbeats, 30 s ramp-down.
# Bounded: the agent is stopped by `timeout` after 1000 s at the latest; the gateway is stopped after it.
# Usage: bench/run_100k.sh [OUT_DIR]      (loopback only; needs ~3 GB RAM; run on a quiet machine)
set -u
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/loadgen-100k-$(date +%Y%m%d-%H%M%S)}
GWPORT=${GWPORT:-47080}; MPORT=${MPORT:-47100}; PROCS=${PROCS:-8}; WORKERS=${WORKERS:-8}
IPS=${IPS:-127.0.0.2-127.0.0.9}
mkdir -p "$OUT"
for p in $GWPORT $(seq $MPORT $((MPORT+PROCS-1))); do
  ss -ltn "sport = :$p" | grep -q LISTEN && { echo "port $p is busy; set GWPORT/MPORT" >&2; exit 1; }
done
AUTH_TOKEN=bench-token .venv/bin/loadgen gateway --port $GWPORT --metrics-port $MPORT --processes $PROCS \
  --log-level WARNING > "$OUT/gateway.log" 2>&1 &
GW=$!
sleep 3
URLS=""; for i in $(seq 0 $((PROCS-1))); do URLS="$URLS --gateway-metrics http://127.0.0.1:$((MPORT+i))/metrics"; done
.venv/bin/python bench/monitor_100k.py "$OUT/monitor.log" "loadgen run connection --stage 60s:100000" \
  "gateway --port $GWPORT" &
MON=$!
AUTH_TOKEN=bench-token timeout 1000 .venv/bin/loadgen run connection --stage 60s:100000 --stage 10m:100000 \
  --stage 30s:0 --workers $WORKERS --local-ips $IPS -e GATEWAY_PORT=$GWPORT --out "$OUT/agent" $URLS \
  > "$OUT/agent.stdout" 2> "$OUT/agent.stderr"
echo "agent exit code $?" >> "$OUT/agent.stdout"
kill -TERM $GW; wait $GW
kill $MON 2>/dev/null
echo "results in $OUT"
