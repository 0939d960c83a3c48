#!/usr/bin/env bash
# Prefix affinity vs least loaded (okome only): four simulated vLLM replicas, each with vLLM's
# prefix cache (16-token blocks; a cached prefix skips its share of the prefill), behind the edge;
# a multi-turn chat workload from the official OpenAI SDK (tests/clients/multiturn.py: many
# conversations, several at once, each resending its growing history, one shared system prompt).
# The same workload runs twice on fresh replicas: `pick: least_loaded`, then `pick:
# prefix_affinity`. Prints per policy: the engines' prefix-cache hit rate (their own
# vllm:prefix_cache_hits_total / queries_total), TTFT p50/p90/p99 as the client saw it, the
# engines' mean TTFT (vllm:time_to_first_token_seconds), and each replica's share of requests.
#
#   cargo build --release -p okome && bash benchmarks/prefix_affinity.sh [conversations] [turns] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/.."
CONVS=${1:-48}; TURNS=${2:-6}; CONC=${3:-16}
BIN=${OKOME_BIN:-$PWD/target/release/okome}
PY=${OKOME_PYENV:-$HOME/.cache/okome/pyenv}/bin/python
[ -x "$PY" ] || bash tests/clients/setup.sh
# Prefill like an 8B model on one GPU (~20k prompt tokens/s): 20 ms + 50 ms per 1k uncached tokens.
SIM_FLAGS="--prefill 20ms --prefill-per-1k-tokens 50ms --tokens-per-second 100 --max-tokens 16"
PORTS=(18500 18501 18502 18503); EDGE=127.0.0.1:18580; ADMIN=127.0.0.1:18590
dir=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT

metric() { # sum of a metric's samples on a /metrics page
  curl -s "$1" | awk -v m="$2" '$1 ~ "^"m"({|$)" { s += $NF } END { printf "%.6f", s }'
}

run() {
  local pick=$1 pids=()
  for p in "${PORTS[@]}"; do
    # shellcheck disable=SC2086
    RUST_LOG=warn $BIN sim --kind vllm --listen 127.0.0.1:$p $SIM_FLAGS >/dev/null & pids+=($!)
  done
  cat > "$dir/edge.yaml" <<YAML
listeners: [{ address: $EDGE }]
admin: { address: $ADMIN }
server: { threads: 2 }
pools:
  vllm:
    kind: vllm
    backends: [$(printf '"127.0.0.1:%s",' "${PORTS[@]}" | sed 's/,$//')]
    health_check: { interval: 200ms, timeout: 150ms }
    pick: $pick
routes:
  - { name: openai, match: { path_prefix: /v1/ }, pool: vllm }
YAML
  RUST_LOG=warn $BIN edge -c "$dir/edge.yaml" >/dev/null 2>&1 & pids+=($!)
  for _ in $(seq 100); do curl -sf http://$ADMIN/readyz >/dev/null && break; sleep 0.1; done
  for _ in $(seq 50); do
    [ "$(metric http://$ADMIN/metrics okome_backend_healthy)" = "4.000000" ] && break; sleep 0.1
  done
  local out; out=$("$PY" tests/clients/multiturn.py --base-url "http://$EDGE/v1" \
    --conversations "$CONVS" --turns "$TURNS" --concurrency "$CONC" \
    --system-bytes 2000 --user-bytes 1000 --max-tokens 16)
  local q=0 h=0 tsum=0 tcount=0 shares=""
  for p in "${PORTS[@]}"; do
    local m=http://127.0.0.1:$p/metrics
    q=$(echo "$q + $(metric $m vllm:prefix_cache_queries_total)" | bc -l)
    h=$(echo "$h + $(metric $m vllm:prefix_cache_hits_total)" | bc -l)
    tsum=$(echo "$tsum + $(metric $m vllm:time_to_first_token_seconds_sum)" | bc -l)
    tcount=$(echo "$tcount + $(metric $m vllm:time_to_first_token_seconds_count)" | bc -l)
    shares="$shares $(curl -s http://127.0.0.1:$p/_sim/stats | jq .requests)"
  done
  printf '%-16s hit rate %.3f | client TTFT ms p50 %6.1f p90 %6.1f p99 %6.1f | engine TTFT mean %6.1f ms | requests per replica:%s\n' \
    "$pick" "$(echo "$h / $q" | bc -l)" \
    "$(echo "$out" | jq .ttft_ms.p50)" "$(echo "$out" | jq .ttft_ms.p90)" "$(echo "$out" | jq .ttft_ms.p99)" \
    "$(echo "1000 * $tsum / $tcount" | bc -l)" "$shares"
  [ "$pick" = prefix_affinity ] && echo "  edge: $(curl -s http://$ADMIN/metrics | grep '^okome_prefix_affinity_picks_total' | sed 's/okome_prefix_affinity_picks_total//' | tr '\n' ' ')"
  kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true
}

echo "# 4 simulated vLLM replicas ($SIM_FLAGS); $CONVS conversations x $TURNS turns, $CONC at once; system prompt 2000 B, user turns 1000 B"
run least_loaded
run prefix_affinity
