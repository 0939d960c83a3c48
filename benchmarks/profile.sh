#!/usr/bin/env bash
# Where a proxy's CPU goes on small non-streaming POSTs (workload c of compare.sh), pinned:
# the proxy on CPU 0, `okome sim` and wrk on CPU 1, `perf record` on the proxy for 5 s. Prints
# requests/s, the split kernel / libc / binary, a rough split of user time (okome, pingora,
# allocation and copies, the rest), and the top symbols.
#
#   cargo build --release -p okome -p okome-benchmarks
#   benchmarks/profile.sh okome      # or: benchmarks/profile.sh pingora
#
# Needs perf (Debian: linux-perf), wrk and taskset; run as root or with perf_event_paranoid <= 1.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${CARGO_TARGET_DIR:-$ROOT/target}/release
WHO=${1:-okome}
W=$(mktemp -d)
trap 'kill -INT $(jobs -p) 2>/dev/null || true; sleep 0.3; rm -rf "$W"' EXIT
cat > "$W/okome.yaml" <<YAML
listeners: [{ address: 127.0.0.1:19281 }]
admin: { address: 127.0.0.1:19291 }
server: { threads: 1 }
pools:
  vllm: { kind: vllm, backends: ["127.0.0.1:19200"] }
routes:
  - { name: openai, match: { path_prefix: /v1/ }, pool: vllm }
YAML
RUST_LOG=warn taskset -c 1 "$B/okome" sim --kind vllm --listen 127.0.0.1:19200 \
  --max-concurrent 1000000 --tokens-per-second 1000000 --prefill 0ms --max-tokens 1 > "$W/sim.log" 2>&1 &
sleep 0.5
case $WHO in
  okome) RUST_LOG=warn taskset -c 0 "$B/okome" edge -c "$W/okome.yaml" > "$W/proxy.log" 2>&1 & ;;
  pingora) RUST_LOG=warn taskset -c 0 "$B/bare-pingora" --listen 127.0.0.1:19281 --upstream 127.0.0.1:19200 > "$W/proxy.log" 2>&1 & ;;
  *) echo "usage: $0 okome|pingora" >&2; exit 2 ;;
esac
PROXY=$!
sleep 1.5
printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' \
  '"{\"model\":\"Qwen/Qwen3-8B\",\"stream\":false,\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}"' > "$W/post.lua"
taskset -c 1 wrk -t1 -c64 -d8s -s "$W/post.lua" http://127.0.0.1:19281/v1/chat/completions > "$W/wrk.txt" 2>&1 &
WRK=$!
sleep 1
perf record -F 999 -g -p "$PROXY" -o "$W/perf.data" -- sleep 5 > /dev/null 2>&1
wait $WRK
echo "$WHO: $(grep Requests/sec "$W/wrk.txt")"
perf report -i "$W/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -4
perf report -i "$W/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | awk '
  {p=$1; sub("%","",p)
   if ($0 ~ /okome_/) o+=p; else if ($0 ~ /pingora_/) g+=p
   else if ($0 ~ /malloc|free|_int_|memmove|memcpy|realloc|unlink_chunk/) m+=p
   else if ($0 ~ /\[k\]/) k+=p; else r+=p}
  END {printf "self time: okome %.1f%%, pingora %.1f%%, allocation and copies %.1f%%, kernel %.1f%%, other user (tokio, http, serde, …) %.1f%%\n", o, g, m, k, r}'
echo "top symbols:"
perf report -i "$W/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -25 | cut -c1-140
