#!/usr/bin/env bash
# Side-by-side harness: on one machine, `okome sim` is the engine, and the same workloads run,
# interleaved round by round (A B A B …), against the engine directly (the floor), bare Pingora
# (`bare-pingora`: the same Pingora crates with one upstream_peer, the floor for okome's design),
# okome, nginx, HAProxy and LiteLLM. On a machine with two or more CPUs the proxies run pinned to
# their own core(s) and the engine plus load generator to the others (PIN=0 turns that off), so
# a heavier proxy does not also slow the engine and the client. Raw results go to OUT/runs.jsonl; okome-report writes OUT/RESULTS.md and
# the PNG plots.
#
#   cargo build --release -p okome -p okome-benchmarks && benchmarks/compare.sh
#   benchmarks/compare.sh --smoke --out /tmp/smoke       # seconds; direct + okome only (CI)
#
# Options: --smoke, --out DIR (default benchmarks/), --rounds N (default 3), --workers N (worker
# processes / threads for every proxy, default 1), --only a,b,c,d,e, --contenders LIST.
# Environment: OKOME_BIN, LOAD_BIN, REPORT_BIN, PINGORA_BIN override the binaries (default
# $CARGO_TARGET_DIR/release or target/release); sizes: A_STREAMS, A_TOKENS, B_SIZES, B_TOKENS,
# C_CONC, C_SECS, D_STREAMS, D_SECS, A_RAMP, B_RAMP, LITELLM_A_STREAMS; INSTRUCTIONS=0 skips the
# instructions-per-request section (benchmarks/instructions.sh, ~1 minute, needs valgrind). Needs jq and curl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OKOME=${OKOME_BIN:-$TARGET/release/okome}
LOAD=${LOAD_BIN:-$TARGET/release/okome-load}
REPORT=${REPORT_BIN:-$TARGET/release/okome-report}
PINGORA=${PINGORA_BIN:-$TARGET/release/bare-pingora}
CONF=$ROOT/benchmarks/conf
OUT=$ROOT/benchmarks
ROUNDS=3; WORKERS=1; SMOKE=0; ONLY=a,b,c,d,e; CONTENDERS=""
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) SMOKE=1 ;;
    --out) OUT=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --contenders) CONTENDERS=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for b in "$OKOME" "$LOAD" "$REPORT"; do
  [ -x "$b" ] || { echo "missing $b: cargo build --release -p okome -p okome-benchmarks" >&2; exit 2; }
done
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FDS=$(ulimit -n)

if [ "$SMOKE" = 1 ]; then
  ROUNDS=1
  : "${A_STREAMS:=20}" "${A_TOKENS:=10}" "${A_TPS:=200}" "${B_SIZES:=20 50}" "${B_TOKENS:=3}" "${B_TPS:=10}"
  : "${C_CONC:=4}" "${C_SECS:=1}" "${D_STREAMS:=4}" "${D_SECS:=1}" "${A_RAMP:=100ms}" "${B_RAMP:=200ms}"
  [ -n "$CONTENDERS" ] || CONTENDERS=direct,pingora,okome
else
  : "${A_STREAMS:=1000}" "${A_TOKENS:=200}" "${A_TPS:=50}" "${B_SIZES:=1000 4000 9000}" "${B_TOKENS:=10}" "${B_TPS:=1}"
  : "${C_CONC:=64}" "${C_SECS:=5}" "${D_STREAMS:=100}" "${D_SECS:=5}" "${A_RAMP:=1s}" "${B_RAMP:=3s}"
  [ -n "$CONTENDERS" ] || CONTENDERS=direct,pingora,okome,nginx,haproxy,litellm
fi
: "${LITELLM_A_STREAMS:=100}"
has() { case ",$CONTENDERS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
NOTES=()
if has pingora && [ ! -x "$PINGORA" ]; then
  NOTES+=("bare Pingora left out: $PINGORA is not built (cargo build --release -p okome-benchmarks).")
  CONTENDERS=$(echo ",$CONTENDERS," | sed "s/,pingora,/,/; s/^,//; s/,$//")
fi
# Pinning: proxies on their own core(s), the engine and the load generator on the rest.
NCPU=$(nproc)
PX=""; RX=""
if [ "${PIN:-1}" = 1 ] && [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
  PW=$WORKERS; [ "$PW" -gt $((NCPU - 1)) ] && PW=$((NCPU - 1))
  PROXY_CPUS="0-$((PW - 1))"; REST_CPUS="$PW-$((NCPU - 1))"
  PX="taskset -c $PROXY_CPUS"; RX="taskset -c $REST_CPUS"
  NOTES+=("Pinned: the proxy under test on CPU(s) $PROXY_CPUS, the engine and the load generator on CPU(s) $REST_CPUS (taskset).")
else
  NOTES+=("Not pinned (PIN=0, one CPU, or no taskset): proxies, engine and load generator share the CPUs.")
fi
for c in nginx haproxy litellm; do
  if has $c && ! command -v $c >/dev/null; then
    NOTES+=("$c is not installed on this machine: left out.")
    CONTENDERS=$(echo ",$CONTENDERS," | sed "s/,$c,/,/; s/^,//; s/,$//")
  fi
done

NOTES+=("Load average when the run started: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs; anything else running on the machine shows up in every contender's numbers alike (rounds are interleaved).")
[ "$FDS" -lt 25000 ] && NOTES+=("Open files limited to $FDS per process (hard limit, not raisable here): a proxy holds 2 descriptors per stream, so workload b stops at ${B_SIZES##* } streams, not 10,000.")
WORK=$(mktemp -d)
RAW=$WORK/raw; mkdir -p "$RAW" "$OUT"
: > "$RAW/runs.jsonl"
PIDS=()
cleanup() { # SIGINT: fast shutdown for okome (Pingora), nginx and HAProxy; then SIGKILL stragglers
  local all=() p
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && all+=($(tree "$p")); done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -INT "$p" 2>/dev/null || true; done
  for _ in $(seq 30); do
    local alive=0
    for p in "${all[@]:-}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for p in "${all[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'cleanup; rm -rf "$WORK"' EXIT

SIM=127.0.0.1:19100
declare -A ADDR=([direct]=$SIM [pingora]=127.0.0.1:19185 [okome]=127.0.0.1:19181 [nginx]=127.0.0.1:19182 [haproxy]=127.0.0.1:19183 [litellm]=127.0.0.1:19184)
declare -A PID
OKOME_ADMIN=127.0.0.1:19191

fill() { # template out upstream listen
  sed -e "s|@WORKERS@|$WORKERS|g" -e "s|@DIR@|$WORK|g" -e "s|@UPSTREAM@|$2|g" \
      -e "s|@LISTEN@|$3|g" -e "s|@ADMIN@|$OKOME_ADMIN|g" "$CONF/$1" > "$WORK/$1"
}

wait_port() { # addr
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; return 1
}

# Start the engine (with the workload's knobs) and every contender in front of it.
start_all() { # sim flags...
  RUST_LOG=warn $RX "$OKOME" sim --kind vllm --listen $SIM --max-concurrent 1000000 "$@" > "$WORK/sim.log" 2>&1 &
  PID[direct]=$!; PIDS+=($!)
  wait_port $SIM
  if has pingora; then
    RUST_LOG=warn $PX "$PINGORA" --listen "${ADDR[pingora]}" --upstream $SIM --threads "$WORKERS" > "$WORK/pingora.log" 2>&1 &
    PID[pingora]=$!; PIDS+=($!)
    wait_port "${ADDR[pingora]}"
  fi
  if has okome; then
    fill okome.yaml $SIM "${ADDR[okome]}"
    RUST_LOG=warn $PX "$OKOME" edge -c "$WORK/okome.yaml" > "$WORK/okome.log" 2>&1 &
    PID[okome]=$!; PIDS+=($!)
    wait_port "${ADDR[okome]}"
    for _ in $(seq 100); do curl -sf "http://$OKOME_ADMIN/readyz" >/dev/null && break; sleep 0.1; done
  fi
  if has nginx; then
    mkdir -p "$WORK"/nginx_{body,proxy,fastcgi,uwsgi,scgi}
    fill nginx.conf $SIM "${ADDR[nginx]}"
    $PX nginx -c "$WORK/nginx.conf" -p "$WORK" > "$WORK/nginx.log" 2>&1 &
    PID[nginx]=$!; PIDS+=($!)
    wait_port "${ADDR[nginx]}"
  fi
  if has haproxy; then
    fill haproxy.cfg $SIM "${ADDR[haproxy]}"
    $PX haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.log" 2>&1 &
    PID[haproxy]=$!; PIDS+=($!)
    wait_port "${ADDR[haproxy]}"
  fi
  if has litellm && [ "${LITELLM_THIS:-1}" = 1 ]; then
    fill litellm.yaml $SIM "${ADDR[litellm]}"
    LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true $PX litellm --config "$WORK/litellm.yaml" \
      --host 127.0.0.1 --port "${ADDR[litellm]#*:}" --num_workers "$WORKERS" > "$WORK/litellm.log" 2>&1 &
    PID[litellm]=$!; PIDS+=($!)
    wait_port "${ADDR[litellm]}" || { NOTES+=("LiteLLM did not start: see its log."); tail -5 "$WORK/litellm.log" >&2; }
  fi
  sleep 0.5
}
stop_all() { cleanup; sleep 0.5; }

# Process tree of a contender (nginx: master + workers; LiteLLM: uvicorn + workers).
tree() {
  local p=$1; echo "$p"
  for c in $(pgrep -P "$p" 2>/dev/null); do tree "$c"; done
}
rss_kb() { # pid -> sum of VmRSS over the tree
  local s=0 p v
  for p in $(tree "$1"); do
    v=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0); s=$((s + ${v:-0}))
  done
  echo $s
}
# A process tree's CPU ticks: utime + stime, or with `sys` only the kernel's share (stime), for
# "where the cost goes".
cpu_ticks() {
  local s=0 p v expr='$14 + $15'
  [ "${2:-}" = sys ] && expr='$15'
  for p in $(tree "$1"); do
    v=$(awk "{print $expr}" "/proc/$p/stat" 2>/dev/null || echo 0); s=$((s + ${v:-0}))
  done
  echo $s
}
sampler() { # pid stopfile outfile: peak RSS while the run lasts
  local max=0 r
  while [ ! -e "$2" ]; do r=$(rss_kb "$1"); [ "$r" -gt "$max" ] && max=$r; sleep 0.1; done
  echo $max > "$3"
}

# Run one measurement and append a JSON record: w c round streams loadcmd...
measure() {
  local w=$1 c=$2 round=$3 streams=$4; shift 4
  local pid=${PID[$c]} stop=$WORK/stop.$$ peak=$WORK/peak.$$
  rm -f "$stop"
  local base; base=$(rss_kb "$pid"); local t0; t0=$(cpu_ticks "$pid"); local s0; s0=$(cpu_ticks "${PID[direct]}")
  local k0; k0=$(cpu_ticks "$pid" sys)
  sampler "$pid" "$stop" "$peak" &
  local sp=$!
  local out; out=$($RX "$@" 2> "$WORK/load.err") || true
  touch "$stop"; wait $sp
  local t1; t1=$(cpu_ticks "$pid"); local s1; s1=$(cpu_ticks "${PID[direct]}")
  local k1; k1=$(cpu_ticks "$pid" sys)
  [ -n "$out" ] || out='{"error":"load generator failed"}'
  local hz; hz=$(getconf CLK_TCK)
  jq -c -n --arg w "$w" --arg c "$c" --argjson round "$round" --argjson streams "$streams" \
    --argjson base "$base" --argjson peak "$(cat "$peak")" --argjson load "$out" \
    --argjson t0 "$t0" --argjson t1 "$t1" --argjson s0 "$s0" --argjson s1 "$s1" --argjson hz "$hz" \
    --argjson k0 "$k0" --argjson k1 "$k1" \
    '{w:$w, c:$c, round:$round, streams:$streams, rss_base_kb:$base, rss_peak_kb:$peak, cpu_s:(($t1 - $t0) / $hz), cpu_sys_s:(($k1 - $k0) / $hz), sim_cpu_s:(($s1 - $s0) / $hz), load:$load}' \
    >> "$RAW/runs.jsonl"
  printf '%s %-8s round %s: %s\n' "$w" "$c" "$round" "$(echo "$out" | head -c 300)" >&2
}

chat() { # max_tokens stream(true/false)
  echo "{\"model\":\"Qwen/Qwen3-8B\",\"stream\":$2,\"max_tokens\":$1,\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}"
}
order() { echo "$CONTENDERS" | tr ',' ' '; }

# --- a. concurrent streams: TTFT, gaps, jitter ------------------------------------------------
if want a; then
  start_all --tokens-per-second "$A_TPS" --prefill 20ms --max-tokens "$A_TOKENS"
  for r in $(seq "$ROUNDS"); do
    for c in $(order); do
      n=$A_STREAMS; [ "$c" = litellm ] && n=$LITELLM_A_STREAMS
      [ "$c" = litellm ] && [ "$SMOKE" = 0 ] && [ "$n" -lt "$A_STREAMS" ] && [ "$r" = 1 ] && \
        NOTES+=("LiteLLM ran workload a at $n streams instead of $A_STREAMS (one worker cannot keep up; see its errors).")
      measure a "$c" "$r" "$n" "$LOAD" --target "${ADDR[$c]}" --concurrency "$n" --requests 1 \
        --ramp "$A_RAMP" --cdf --source-ips 4 --body "$(chat "$A_TOKENS" true)"
    done
  done
  stop_all
fi

# --- b. many long streams: memory -------------------------------------------------------------
if want b; then
  LITELLM_THIS=0 start_all --tokens-per-second "$B_TPS" --prefill 100ms --max-tokens "$B_TOKENS"
  has litellm && NOTES+=("LiteLLM left out of workload b (thousands of concurrent streams on one worker).")
  for n in $B_SIZES; do
    for c in $(order); do
      [ "$c" = litellm ] && continue
      measure b "$c" 1 "$n" "$LOAD" --target "${ADDR[$c]}" --concurrency "$n" --requests 1 \
        --ramp "$B_RAMP" --source-ips 16 --body "$(chat "$B_TOKENS" true)"
      sleep 1
    done
  done
  stop_all
fi

# --- c. non-streaming small POSTs -------------------------------------------------------------
if want c; then
  body=$(chat 1 false)
  if command -v oha >/dev/null; then TOOL=oha; elif command -v wrk >/dev/null; then TOOL=wrk; else TOOL=""; fi
  if [ -z "$TOOL" ]; then
    NOTES+=("Workload c skipped: neither oha nor wrk is installed.")
  else
    printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' \
      "$(jq -Rn --arg b "$body" '$b')" > "$WORK/post.lua"
    start_all --tokens-per-second 1000000 --prefill 0ms --max-tokens 1
    for r in $(seq "$ROUNDS"); do
      for c in $(order); do
        if [ $TOOL = oha ]; then
          measure c "$c" "$r" "$C_CONC" bash -c "oha -z ${C_SECS}s -c $C_CONC -m POST -H 'Content-Type: application/json' -d '$body' --no-tui -j http://${ADDR[$c]}/v1/chat/completions | jq -c '{rps: .summary.requestsPerSec, requests: ([.statusCodeDistribution[]] | add // 0), p50_ms: (.latencyPercentiles.p50 * 1000), p99_ms: (.latencyPercentiles.p99 * 1000), errors: ((.statusCodeDistribution | to_entries | map(select(.key != \"200\") | .value) | add) // 0)}'"
        else
          measure c "$c" "$r" "$C_CONC" bash -c "wrk -t1 -c$C_CONC -d${C_SECS}s --latency -s $WORK/post.lua http://${ADDR[$c]}/v1/chat/completions | awk '
            function ms(v) { if (v ~ /us\$/) return v/1000; if (v ~ /ms\$/) return v+0; if (v ~ /s\$/) return v*1000; return v }
            /Requests\/sec/ {rps=\$2} / 50%/ {p50=ms(\$2)} / 99%/ {p99=ms(\$2)} / requests in / {req=\$1}
            /Non-2xx/ {err+=\$NF} /Socket errors/ {err+=0}
            END {printf \"{\\\"rps\\\":%s,\\\"requests\\\":%d,\\\"p50_ms\\\":%s,\\\"p99_ms\\\":%s,\\\"errors\\\":%d}\", rps+0, req, p50+0, p99+0, err}'"
        fi
      done
    done
    NOTES+=("Workload c used $TOOL: $C_CONC connections, ${C_SECS}s per run, one keep-alive connection each.")
    stop_all
  fi
fi

# --- d. relay throughput on one worker --------------------------------------------------------
if want d; then
  WORKERS_SAVED=$WORKERS; WORKERS=1
  LITELLM_THIS=0 start_all --tokens-per-second 100000 --prefill 0ms --max-tokens 2000
  for r in $(seq "$ROUNDS"); do
    for c in $(order); do
      [ "$c" = litellm ] && continue
      measure d "$c" "$r" "$D_STREAMS" "$LOAD" --target "${ADDR[$c]}" --concurrency "$D_STREAMS" \
        --duration "${D_SECS}s" --body "$(chat 2000 true)"
    done
  done
  stop_all; WORKERS=$WORKERS_SAVED
fi

# --- e. shedding (okome only) -------------------------------------------------------------------
E_DESC="Not measured in this run (okome not among the contenders, smoke mode, or wrk missing)."
if want e && has okome && [ "$SMOKE" = 0 ] && command -v wrk >/dev/null; then
  E_OUT=$(OKOME_BIN="$OKOME" bash "$ROOT/benchmarks/shed_rate.sh" 5 64 2>/dev/null | grep -v '^\[' || true)
  E_DESC=$(printf 'okome only (benchmarks/shed_rate.sh): a real `okome arbiter` marks the only pool shedding (the simulated vLLM reports a queue of 40); the edge, 1 worker, answers 503 with Retry-After; wrk, 64 connections, 5 s.\n\n```\n%s\n```' "$E_OUT")
fi

# --- instructions per request (deterministic; benchmarks/instructions.sh) ----------------------
if [ "$SMOKE" = 0 ] && [ "${INSTRUCTIONS:-1}" = 1 ] && command -v valgrind >/dev/null; then
  ic=$(echo ",$CONTENDERS," | tr ',' '\n' | grep -xE 'pingora|okome|nginx' | paste -sd, -)
  if [ -n "$ic" ]; then
    OKOME_BIN="$OKOME" LOAD_BIN="$LOAD" PINGORA_BIN="$PINGORA" bash "$ROOT/benchmarks/instructions.sh" \
      --contenders "$ic" --out "$RAW/instructions.md" > /dev/null 2> "$WORK/instructions.err" ||
      NOTES+=("instructions.sh failed: $(tail -1 "$WORK/instructions.err")")
  fi
fi

# --- meta and report --------------------------------------------------------------------------
notes_json=$(printf '%s\n' "${NOTES[@]:-}" | jq -R . | jq -s -c 'map(select(length > 0))')
vers="okome $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo ?)"
command -v nginx >/dev/null && vers="$vers; $(nginx -v 2>&1 | sed 's/.*: //')"
command -v haproxy >/dev/null && vers="$vers; HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}')"
command -v litellm >/dev/null && vers="$vers; LiteLLM $(pip show litellm 2>/dev/null | awk '/^Version/ {print $2}')"
jq -n -c \
  --arg date "$(date -u +%Y-%m-%dT%H:%MZ)" \
  --arg commit "$(cd "$ROOT" && git rev-parse HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (dirty)')" \
  --arg machine "$(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB" \
  --arg kernel "$(uname -r)" --arg workers "$WORKERS (okome server.threads, nginx worker_processes, HAProxy nbthread, LiteLLM --num_workers); workload d: 1" \
  --arg rounds "$ROUNDS (a, c, d interleaved A B A B; b one pass per size)" --arg versions "$vers" \
  --arg mode "$([ $SMOKE = 1 ] && echo 'smoke (tiny sizes; not a measurement)' || echo full)" \
  --arg a_desc "Closed loop, $A_STREAMS concurrent streams (ramped over $A_RAMP), one request each, $A_TOKENS tokens at $A_TPS tokens/s per stream (one token every $((1000 / A_TPS)) ms), prefill 20 ms, SSE." \
  --arg b_desc "Closed loop, $B_SIZES concurrent streams (ramped over $B_RAMP), $B_TOKENS tokens at $B_TPS token/s each: long-lived, mostly idle streams." \
  --arg c_desc "Non-streaming POST /v1/chat/completions, max_tokens 1, engine prefill 0, fixed concurrency $C_CONC." \
  --arg d_desc "$D_STREAMS closed-loop streams of 2000 tokens each, engine as fast as it goes, ${D_SECS}s per run, every proxy on one worker. tokens/s counts SSE events delivered to the client; the engine on the other core is the ceiling (see direct)." \
  --arg e_desc "$E_DESC" \
  --argjson notes "$notes_json" \
  '{date:$date, commit:$commit, machine:$machine, kernel:$kernel, workers:$workers, rounds:$rounds, versions:$versions, mode:$mode, a_desc:$a_desc, b_desc:$b_desc, c_desc:$c_desc, d_desc:$d_desc, e_desc:$e_desc, notes:$notes}' \
  > "$RAW/meta.json"
cp "$RAW/runs.jsonl" "$RAW/meta.json" "$OUT/"
"$REPORT" "$RAW" "$OUT"
echo "wrote $OUT/RESULTS.md and plots" >&2
