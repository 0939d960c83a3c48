#!/usr/bin/env bash
# The seed's cluster (conf/cluster/cluster.sh, network namespaces on a bridge) measured as a
# client sees it. Builds nothing: run as root after
#   cargo build --release -p okome -p okome-benchmarks
#
#   bash benchmarks/cluster_latency.sh [latency]   (default) brings the cluster up, then
#       1. ROUNDS rounds, alternating: okome-load straight to the simulated vLLM (NET.30:8000,
#          plaintext) and through both hops (the ingress NET.1:8443 over TLS with the demo key →
#          a stream node over mTLS → the engine); C concurrent streams × N requests, TOKENS
#          tokens each at 50 tokens/s. Prints each round's raw JSON and a table: TTFT p50/p99,
#          gap p99, per-stream jitter p50, direct and via, and what the two hops add.
#       2. A killed stream node: with streams running on both nodes, SIGKILL node-04, then at
#          once send short requests (curl over HTTPS) for a conversation that lived on node-04;
#          reports when the first 200 served by node-03 came back (from the kill) and how many
#          failed before (the ingress retries a refused connect: should be 0).
#       Then takes the cluster down (trap on EXIT).
#   bash benchmarks/cluster_latency.sh handshakes [seconds] [clients]
#       Full TLS handshakes per second of ONE edge worker: `okome edge` with `server.threads: 1`
#       and a TLS listener (ECDSA P-256 certificate, as cluster.sh makes) pinned to CPU 0;
#       `clients` parallel `openssl s_time -new` (no resumption) pinned to CPU 1, TLS 1.3 then
#       TLS 1.2. Prints handshakes/s and handshakes per CPU-second of the edge (its utime+stime
#       from /proc/PID/stat): the client side may not saturate the edge's core, so the second
#       figure is the honest one-worker capacity.
#
# Environment: OKOME_BIN (default target/release/okome), OKOME_LOAD (default
# target/release/okome-load), OKOME_CLUSTER_DIR (default /tmp/okc-bench), OKOME_CLUSTER_PREFIX
# (default okb), OKOME_CLUSTER_NET (default 10.79.0: away from the default cluster and the test
# suite's), C (50), N (3), ROUNDS (3), TOKENS (64).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-latency}
export OKOME_BIN=${OKOME_BIN:-$PWD/target/release/okome}
LOAD=${OKOME_LOAD:-$PWD/target/release/okome-load}
export OKOME_CLUSTER_DIR=${OKOME_CLUSTER_DIR:-/tmp/okc-bench}
export OKOME_CLUSTER_PREFIX=${OKOME_CLUSTER_PREFIX:-okb}
export OKOME_CLUSTER_NET=${OKOME_CLUSTER_NET:-10.79.0}
NET=$OKOME_CLUSTER_NET
DIR=$OKOME_CLUSTER_DIR
CLUSTER=conf/cluster/cluster.sh
C=${C:-50}; N=${N:-3}; ROUNDS=${ROUNDS:-3}; TOKENS=${TOKENS:-64}
for b in "$OKOME_BIN" "$LOAD"; do
  [[ -x $b ]] || { echo "missing $b: cargo build --release -p okome -p okome-benchmarks" >&2; exit 2; }
done
now_ms() { echo $(($(date +%s%N) / 1000000)); }
body() { printf '{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":%d,"messages":[{"role":"user","content":"hello"}]}' "$1"; }

handshakes() {
  local secs=${1:-10} clients=${2:-4} port=18543 admin=18590
  local dir; dir=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: $dir is local
  trap "kill \$(jobs -p) 2>/dev/null; rm -rf '$dir'" EXIT
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=hs.okome.test -addext subjectAltName=DNS:hs.okome.test \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  cat >"$dir/edge.yaml" <<YAML
listeners:
  - address: 127.0.0.1:$port
    tls: { certificates: [{ cert: $dir/cert.pem, key: $dir/key.pem }] }
admin: { address: 127.0.0.1:$admin }
server: { threads: 1 }
pools:
  vllm: { kind: vllm, backends: ["127.0.0.1:18500"] }
routes:
  - { name: openai, match: { path_prefix: /v1/ }, pool: vllm }
YAML
  RUST_LOG=error taskset -c 0 "$OKOME_BIN" edge -c "$dir/edge.yaml" 2>"$dir/edge.log" &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
  local tck; tck=$(getconf CLK_TCK)
  # utime + stime of all the edge's threads, in clock ticks (fields 14 and 15; the name in
  # field 2 has no spaces here).
  cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
  echo "# one edge worker (server.threads: 1, taskset -c 0), ECDSA P-256 cert; $clients x openssl s_time -new on CPU 1, ${secs}s each"
  printf '%-8s %12s %14s %14s %18s\n' proto handshakes handshakes/s edge_cpu_util handshakes/cpu_s
  local proto flag
  for proto in tls1_3 tls1_2; do
    flag="-$proto"
    local c0 c1 i total=0 n
    # What gets negotiated (group, cipher, signature), to stderr.
    openssl s_client -connect "127.0.0.1:$port" -brief "$flag" </dev/null 2>&1 |
      grep -E 'Protocol|Ciphersuite|signature type|Temp Key' | tr -s ' \n' ' ' >&2 || true
    echo >&2
    c0=$(cpu)
    for i in $(seq "$clients"); do
      taskset -c 1 openssl s_time -connect "127.0.0.1:$port" -new -time "$secs" "$flag" \
        >"$dir/s_time.$proto.$i" 2>&1 &
    done
    wait $(jobs -p | grep -v "^$pid\$")
    c1=$(cpu)
    for i in $(seq "$clients"); do
      # "1234 connections in 10.01s; 123.3 connections/user sec, ..." (the -new section)
      n=$(awk '/connections in/ {print $1; exit}' "$dir/s_time.$proto.$i")
      [[ -n $n ]] || { echo "s_time $proto $i:" >&2; cat "$dir/s_time.$proto.$i" >&2; n=0; }
      total=$((total + n))
    done
    awk -v p="$proto" -v n="$total" -v s="$secs" -v t=$((c1 - c0)) -v k="$tck" 'BEGIN {
      cs = t / k; printf "%-8s %12d %14.0f %13.0f%% %18.0f\n", p, n, n / s, 100 * cs / s, (cs > 0 ? n / cs : 0) }'
  done
}

latency() {
  trap 'bash "$CLUSTER" down >/dev/null 2>&1 || true' EXIT
  # cluster.sh appends to its logs: start clean so request ids are looked up in this run only.
  rm -f "$DIR"/logs/*.log
  bash "$CLUSTER" up 2>"$DIR.up.log" || { cat "$DIR.up.log" >&2; exit 1; }
  local key ca out; key=$(cat "$DIR/api-key"); ca=$DIR/certs/ca.pem
  out=$(mktemp -d)
  local direct=(--target "$NET.30:8000")
  local via=(--target "$NET.1:8443" --tls-ca "$ca" --tls-name api.okome.test
    --header "Authorization: Bearer $key")
  # Warm up both paths (connections to the engine, the ingress's pool to the stream nodes).
  "$LOAD" "${via[@]}" --concurrency 4 --requests 2 --body "$(body 4)" >/dev/null
  echo "# $C concurrent streams x $N requests, $TOKENS tokens at 50 tok/s; direct = $NET.30:8000, via = ingress $NET.1:8443 (TLS) -> stream node (mTLS) -> engine"
  local r
  for r in $(seq "$ROUNDS"); do
    "$LOAD" "${direct[@]}" --concurrency "$C" --requests "$N" --body "$(body "$TOKENS")" >"$out/direct.$r"
    echo "round $r direct $(cat "$out/direct.$r")"
    "$LOAD" "${via[@]}" --concurrency "$C" --requests "$N" --body "$(body "$TOKENS")" >"$out/via.$r"
    echo "round $r via    $(cat "$out/via.$r")"
  done
  echo
  printf '%-6s %-7s %7s %9s %9s %9s %10s %7s\n' round path streams errors ttft_p50 ttft_p99 gap_p99 jit_p50
  for r in $(seq "$ROUNDS"); do
    jq -rn --arg r "$r" --slurpfile d "$out/direct.$r" --slurpfile v "$out/via.$r" '
      def row($p; $x): [$r, $p, ($x.streams|tostring), ($x.errors|tostring),
        ($x.ttft_ms.p50|tostring), ($x.ttft_ms.p99|tostring), ($x.gap_ms.p99|tostring),
        ($x.jitter_ms.p50|tostring)];
      def r3: . * 1000 | round / 1000;
      ($d[0]) as $d | ($v[0]) as $v |
      row("direct"; $d), row("via"; $v),
      [$r, "added", "", "", (($v.ttft_ms.p50 - $d.ttft_ms.p50)|r3|tostring),
        (($v.ttft_ms.p99 - $d.ttft_ms.p99)|r3|tostring), (($v.gap_ms.p99 - $d.gap_ms.p99)|r3|tostring),
        (($v.jitter_ms.p50 - $d.jitter_ms.p50)|r3|tostring)]
      | @tsv' | awk -F'\t' '{printf "%-6s %-7s %7s %9s %9s %9s %10s %7s\n", $1, $2, $3, $4, $5, $6, $7, $8}'
  done
  echo "(ms; via's TTFT counts from the request's write after the TLS handshake; via's connect_ms in the JSON has TCP + TLS)"
  echo
  failover "$key" "$ca" "$out"
}

# One short request through the ingress; prints "HTTP_CODE TIME_TOTAL".
chat() { # key ca conversation request-id
  curl -sS -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 10 --cacert "$2" \
    --resolve "api.okome.test:8443:$NET.1" -H "authorization: Bearer $1" \
    -H 'content-type: application/json' -H "x-conversation-id: $3" -H "x-request-id: $4" \
    -d "$(body 3)" https://api.okome.test:8443/v1/chat/completions 2>/dev/null || true
}

# Which stream node served request id $1 (last octet), from the ingress's access log.
served_by() {
  local i
  for i in $(seq 50); do
    local b
    # The log mixes JSON access records with plain log lines: pick the record first.
    b=$(grep -F "\"request_id\":\"$1\"" "$DIR/logs/ingress.log" | tail -1 |
      jq -r '.backend // empty' 2>/dev/null || true)
    [[ -n $b ]] && { b=${b%:8080}; echo "${b##*.}"; return; }
    sleep 0.02
  done
  echo "?"
}

failover() {
  local key=$1 ca=$2 out=$3 k3="" k4="" i
  for i in $(seq 40); do
    chat "$key" "$ca" "conv-$i" "probe-$i" >/dev/null
    case $(served_by "probe-$i") in
      3) [[ -z $k3 ]] && k3=conv-$i ;;
      4) [[ -z $k4 ]] && k4=conv-$i ;;
    esac
    [[ -n $k3 && -n $k4 ]] && break
  done
  [[ -n $k3 && -n $k4 ]] || { echo "failover: no conversation found on each node (k3=$k3 k4=$k4)" >&2; return 1; }
  echo "# a killed stream node: $k3 lives on node-03, $k4 on node-04; 5 streams of 300 tokens on each, then SIGKILL node-04"
  local via=(--target "$NET.1:8443" --tls-ca "$ca" --tls-name api.okome.test
    --header "Authorization: Bearer $key" --concurrency 5 --requests 1 --body "$(body 300)" --show-errors 0)
  "$LOAD" "${via[@]}" --header "x-conversation-id: $k3" >"$out/survivors" &
  local sp=$!
  "$LOAD" "${via[@]}" --header "x-conversation-id: $k4" >"$out/victims" &
  local vp=$!
  sleep 1.5
  bash "$CLUSTER" kill node-04 KILL
  local t0 first="" failed=0 sent=0 code tt now node
  t0=$(now_ms)
  # Back to back for 3 s after the kill: each a new request for the killed node's conversation.
  while (($(now_ms) - t0 < 3000)); do
    sent=$((sent + 1))
    code=000 tt=0
    read -r code tt < <(chat "$key" "$ca" "$k4" "kill-$sent") || true
    now=$(($(now_ms) - t0))
    echo "kill-$sent $code ${tt}s done_at=${now}ms" >>"$out/after-kill"
    if [[ $code != 200 ]]; then
      failed=$((failed + 1))
    elif [[ -z $first ]]; then
      node=$(served_by "kill-$sent")
      [[ $node == 3 ]] && first="request $sent, ${now}ms after the kill (its own time ${tt}s)"
    fi
  done
  wait "$sp" "$vp" || true
  cat "$out/after-kill"
  echo "first 200 from node-03: ${first:-never}"
  # Whether the ingress had to retry (a refused connect to node-04) or had already ejected node-04
  # (its streams broke at the kill, one failure ejects): its record of the first request.
  echo "ingress's record of kill-1: $(grep -F '"request_id":"kill-1"' "$DIR/logs/ingress.log" |
    tail -1 | jq -c '{status, backend, retries, duration_ms}' 2>/dev/null || true)"
  echo "requests after the kill: $sent sent, $failed not 200"
  echo "streams on node-03 during the kill: $(jq -c '{streams, errors, tokens}' "$out/survivors") (want 5 streams, 0 errors)"
  echo "streams on node-04 during the kill: $(jq -c '{streams, errors, tokens}' "$out/victims") (cut: errors or short streams expected)"
}

case $MODE in
  latency) latency ;;
  handshakes) handshakes "${2:-10}" "${3:-4}" ;;
  *) sed -n '2,30p' "$0" >&2; exit 2 ;;
esac
