#!/usr/bin/env bash
# Workload e (okome only): how fast the edge answers 503 + Retry-After when the arbiter marks the
# pool shedding. A simulated vLLM reports a queue of 40 (PUT /_sim/pressure), a real `okome
# arbiter` decides `shedding`, the edge (1 worker) refuses; wrk measures the refusals per second.
#
#   cargo build --release -p okome && bash benchmarks/shed_rate.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}; CONNS=${2:-64}
BIN=${OKOME_BIN:-$PWD/target/release/okome}
SIM=127.0.0.1:18400; ARB=127.0.0.1:18470; EDGE=127.0.0.1:18480; ADMIN=127.0.0.1:18490
dir=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/arbiter.yaml" <<YAML
listen: $ARB
interval: 100ms
gpu: { source: fake, reserve: 2GiB }
mode: shared
gpus: [{ uuid: GPU-sim-18400, memory: 80GiB }]
engines: [{ name: vllm, kind: vllm, address: $SIM, budget: 30GiB }]
YAML
cat > "$dir/edge.yaml" <<YAML
listeners: [{ address: $EDGE }]
admin: { address: $ADMIN }
server: { threads: 1 }
pools:
  vllm: { kind: vllm, backends: ["$SIM"] }
routes:
  - { name: openai, match: { path_prefix: /v1/ }, pool: vllm }
arbiter: { addresses: ["$ARB"], max_age: 3s }
YAML
RUST_LOG=warn $BIN sim --kind vllm --listen $SIM --max-concurrent 100000 >/dev/null &
sleep 0.3
RUST_LOG=warn $BIN arbiter -c "$dir/arbiter.yaml" &
RUST_LOG=warn $BIN edge -c "$dir/edge.yaml" &
for _ in $(seq 50); do curl -sf http://$ADMIN/readyz >/dev/null && break; sleep 0.1; done
curl -s -X PUT http://$SIM/_sim/pressure -d '{"extra_waiting":40}' >/dev/null
for _ in $(seq 50); do curl -s http://$ADMIN/metrics | grep -q 'okome_backend_arbiter_state{.*} 2' && break; sleep 0.1; done
BODY='{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
printf 'wrk.method="POST"\nwrk.body=%s\nwrk.headers["Content-Type"]="application/json"\n' "'$BODY'" > "$dir/post.lua"
echo "# edge (1 worker) answering while its only pool is shedding; wrk -t1 -c$CONNS -d${SECS}s"
curl -si http://$EDGE/v1/chat/completions -H 'content-type: application/json' -d "$BODY" | grep -iE '^HTTP|^retry-after'
wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$dir/post.lua" http://$EDGE/v1/chat/completions | grep -E 'Requests/sec|Non-2xx|50%|99%|requests in'
echo "edge: $(curl -s http://$ADMIN/metrics | grep '^okome_shed_total')"
echo "engine requests during the run (should stay 0): $(curl -s http://$SIM/_sim/stats | jq .requests)"
