#!/usr/bin/env bash
# Control-plane calls during a load run: `okome control` with one tenant and a minted key, a
# simulated vLLM, and the edge with auth/policy/ratelimit; okome-load sends authenticated streams,
# then the control plane's own counters say how many key lookups and snapshot polls it served.
#
#   cargo build --release -p okome -p okome-benchmarks && bash benchmarks/policy_load.sh [concurrency] [requests]
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-50}; N=${2:-40}
BIN=$PWD/target/release/okome; LOAD=$PWD/target/release/okome-load
SIM=127.0.0.1:18200; EDGE=127.0.0.1:18280; ADMIN=127.0.0.1:18290; CTRL=127.0.0.1:18270
dir=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/control.yaml" <<YAML
listen: $CTRL
edges: 1
keys_file: keys.yaml
tenants:
  - { id: load, priority: standard, models: ["*"], requests_per_minute: 1000000, tokens_per_minute: 1000000000 }
routes:
  - { model: "*", pool: vllm }
YAML
KEY=$($BIN control -c "$dir/control.yaml" add-key --tenant load 2>/dev/null | grep -o 'okome-[0-9a-f]*')
cat > "$dir/edge.yaml" <<YAML
listeners: [{ address: $EDGE }]
admin: { address: $ADMIN }
server: { threads: 1 }
pools:
  vllm: { kind: vllm, backends: ["$SIM"] }
routes:
  - name: openai
    match: { path_prefix: /v1/ }
    filters: [{ type: auth }, { type: policy }, { type: ratelimit }]
control: { address: $CTRL, state_dir: $dir/state }
YAML
RUST_LOG=warn $BIN control -c "$dir/control.yaml" &
RUST_LOG=warn $BIN sim --kind vllm --listen $SIM --tokens-per-second 100 --prefill 5ms --max-concurrent 100000 &
sleep 0.5
RUST_LOG=warn $BIN edge -c "$dir/edge.yaml" &
for _ in $(seq 50); do curl -sf http://$ADMIN/readyz >/dev/null && break; sleep 0.1; done
BODY='{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":20,"messages":[{"role":"user","content":"hello"}]}'
echo "load:  $($LOAD --target $EDGE --concurrency "$C" --requests "$N" --body "$BODY" --header "Authorization: Bearer $KEY")"
echo "control plane requests served during the run:"
curl -s http://$CTRL/metrics | grep '^okome_control_requests_total'
echo "edge policy cache:"
curl -s http://$ADMIN/metrics | grep '^okome_policy_cache_requests_total'
