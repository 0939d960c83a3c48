#!/usr/bin/env bash
# First rough relay-overhead measurement: the same simulated vLLM measured directly and through
# the edge, interleaved A B A B, with okome-load (TTFT and inter-token gaps as the client sees them).
#
#   cargo build --release -p okome -p okome-benchmarks && bash benchmarks/relay_overhead.sh [concurrency] [requests] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-50}; N=${2:-20}; ROUNDS=${3:-3}
BIN=target/release/okome; LOAD=target/release/okome-load
SIM=127.0.0.1:18100; EDGE=127.0.0.1:18180; ADMIN=127.0.0.1:18190
dir=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/edge.yaml" <<YAML
listeners: [{ address: $EDGE }]
admin: { address: $ADMIN }
server: { threads: 1 }
pools:
  vllm: { kind: vllm, backends: ["$SIM"] }
routes:
  - { name: openai, match: { path_prefix: /v1/ }, pool: vllm }
YAML
RUST_LOG=warn $BIN sim --kind vllm --listen $SIM --tokens-per-second 50 --prefill 20ms --max-concurrent 100000 &
sleep 0.5
RUST_LOG=warn $BIN edge -c "$dir/edge.yaml" &
for _ in $(seq 50); do curl -sf http://$ADMIN/readyz >/dev/null && break; sleep 0.1; done
BODY='{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hello"}]}'
echo "# $C concurrent streams x $N requests each, 50 tokens at 50 tok/s, edge with 1 worker thread"
for r in $(seq "$ROUNDS"); do
  echo "direct $($LOAD --target $SIM --concurrency "$C" --requests "$N" --body "$BODY")"
  echo "edge   $($LOAD --target $EDGE --concurrency "$C" --requests "$N" --body "$BODY")"
done
