#!/usr/bin/env bash
# Resumable streams: memory per detached stream and resume latency. One simulated vLLM (slow
# tokens, so streams outlive the run), the edge on one worker with `resumable` on, N streams
# opened (K events read by each), then every client dropped at once, then every stream resumed
# from its cursor (benchmarks/resume_load.py, plain asyncio sockets). Prints the edge's RSS idle,
# with N attached streams and with N detached ones (from /proc), the buffered bytes, and the time
# from a resume request to its first replayed byte (p50/p99/max), and checks that every resumed
# stream ended with exactly one [DONE].
#
#   cargo build --release -p okome && bash benchmarks/resume.sh [streams] [events_before_drop]
#   RESUMABLE=0 bash benchmarks/resume.sh      # the same streams on a plain route: attached RSS only
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}; K=${2:-20}
BIN=${OKOME_BIN:-$PWD/target/release/okome}
PY=${PYTHON:-python3}
SIM=127.0.0.1:18600; EDGE=127.0.0.1:18680; ADMIN=127.0.0.1:18690
dir=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
ulimit -n 65536 2>/dev/null || true

metric() { curl -s "http://$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $NF }'; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

# 20 tokens/s: K events in about K/20 s, and a 400-token answer lasts 20 s, past the run.
RUST_LOG=warn $BIN sim --kind vllm --listen $SIM --tokens-per-second 20 --max-concurrent 100000 \
  --max-queue 100000 >/dev/null 2>&1 &
RESUME_KEY="resumable: { grace: 60s, buffer: 256KiB }   # holds a whole 400-token answer"
[ "${RESUMABLE:-1}" = 0 ] && RESUME_KEY="resumable: false"
cat > "$dir/edge.yaml" <<YAML
listeners: [{ address: $EDGE }]
admin: { address: $ADMIN }
server: { threads: 1 }
pools:
  vllm: { kind: vllm, backends: ["$SIM"] }
routes:
  - name: openai
    match: { path_prefix: /v1/ }
    pool: vllm
    $RESUME_KEY
limits: { resumable_buffer: 1GiB }
YAML
RUST_LOG=warn $BIN edge -c "$dir/edge.yaml" >"$dir/edge.log" 2>&1 & EDGE_PID=$!
for _ in $(seq 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
sleep 1
# Warm the edge's allocator and pools with one short stream.
curl -s "http://$EDGE/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}' >/dev/null
sleep 1
idle=$(rss_kib $EDGE_PID)

coproc LOAD { "$PY" benchmarks/resume_load.py "$EDGE" "$N" "$K"; }
read -r opened <&"${LOAD[0]}"; echo "$opened"
sleep 1; attached=$(rss_kib $EDGE_PID)
if [ "${RESUMABLE:-1}" = 0 ]; then
  echo "plain route: edge RSS idle $idle KiB, $N attached $attached KiB ($(( (attached - idle) * 1024 / N )) bytes/stream)"
  kill "$LOAD_PID" 2>/dev/null; exit 0
fi
echo go >&"${LOAD[1]}"; read -r dropped <&"${LOAD[0]}"
for _ in $(seq 100); do [ "$(metric okome_resumable_streams_detached)" = "$N" ] && break; sleep 0.1; done
sleep 1; detached=$(rss_kib $EDGE_PID)
det=$(metric okome_resumable_streams_detached); buf=$(metric okome_resumable_buffer_bytes)
echo go >&"${LOAD[1]}"; read -r resumed <&"${LOAD[0]}"
wait "$LOAD_PID" 2>/dev/null || true

echo
echo "streams: $N, events read before the drop: $K, detached seen by the edge: $det"
echo "edge RSS idle:            $idle KiB"
echo "edge RSS, $N attached:    $attached KiB  ($(( (attached - idle) * 1024 / N )) bytes/stream)"
echo "edge RSS, $N detached:    $detached KiB  ($(( (detached - idle) * 1024 / N )) bytes/stream)"
echo "buffered event bytes:     $buf  ($(( ${buf%.*} / N )) bytes/stream, part of the RSS above)"
echo "resume request → first replayed byte: $resumed"
