#!/usr/bin/env bash
# Instructions per request and per streamed token: a figure that does not move with machine
# noise. Each proxy (bare Pingora, okome with benchmarks/conf/okome.yaml, nginx as compare.sh
# runs it but with one process) runs under valgrind's callgrind in front of `okome sim` (run
# natively); after a warm-up, `callgrind_control -z` / `-d` bracket each load, and start-up,
# connection set-up and teardown cancel out by difference:
#
#   per small POST    = (I(2N POSTs) - I(N POSTs)) / N           one keep-alive connection
#   per streamed token = (I(M streams of T2) - I(M streams of T1)) / (M (T2 - T1))
#
# I is the instructions (callgrind's Ir, user space only; the kernel's share is not counted)
# executed by the proxy's busiest thread (the worker that serves the requests: okome's and
# Pingora's periodic background work runs on other threads, on a timer, and would make the
# figure depend on how long the run took); the whole process is shown beside it. Requests are
# sent one at a time so every read and write is the same from run to run; tokens come 1/TPS
# apart so each arrives in a read of its own.
#
#   cargo build --release -p okome -p okome-benchmarks
#   benchmarks/instructions.sh                       # prints the section (markdown)
#   benchmarks/instructions.sh --out FILE --keep DIR --repeat 2 --contenders pingora,okome
#
# Options: --requests N (default 200), --streams M (5), --tokens T1,T2 (10,50), --tps TPS (100),
# --repeat R (2: runs each contender R times, to show the figure repeats), --contenders LIST
# (pingora,okome,nginx), --okome-conf FILE (an okome.yaml template, default
# benchmarks/conf/okome.yaml), --out FILE (also write the section there), --keep DIR (keep the
# callgrind dumps there: callgrind_annotate --inclusive=yes DIR/okome.1/post2n.<thread>).
# Environment: OKOME_BIN, LOAD_BIN, PINGORA_BIN as in compare.sh. Needs valgrind and curl (the POSTs: okome-load counts tokens, a plain answer has none).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OKOME=${OKOME_BIN:-$TARGET/release/okome}
LOAD=${LOAD_BIN:-$TARGET/release/okome-load}
PINGORA=${PINGORA_BIN:-$TARGET/release/bare-pingora}
N=200; M=5; T1=10; T2=50; TPS=100; REPEAT=2; CONTENDERS=pingora,okome,nginx
OKOME_CONF=$ROOT/benchmarks/conf/okome.yaml; OUTFILE=""; KEEP=""
while [ $# -gt 0 ]; do
  case $1 in
    --requests) N=$2; shift ;;
    --streams) M=$2; shift ;;
    --tokens) T1=${2%,*}; T2=${2#*,}; shift ;;
    --tps) TPS=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --contenders) CONTENDERS=$2; shift ;;
    --okome-conf) OKOME_CONF=$2; shift ;;
    --out) OUTFILE=$2; shift ;;
    --keep) KEEP=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || {
  echo "needs valgrind (callgrind_control)" >&2; exit 2; }
for b in "$OKOME" "$LOAD"; do
  [ -x "$b" ] || { echo "missing $b: cargo build --release -p okome -p okome-benchmarks" >&2; exit 2; }
done
case ",$CONTENDERS," in *,pingora,*) [ -x "$PINGORA" ] || { echo "missing $PINGORA" >&2; exit 2; } ;; esac
case ",$CONTENDERS," in *,nginx,*) command -v nginx >/dev/null || {
  echo "nginx not installed: left out" >&2; CONTENDERS=$(echo ",$CONTENDERS," | sed 's/,nginx,/,/; s/^,//; s/,$//'); } ;; esac

W=$(mktemp -d)
SIM=127.0.0.1:19300; LISTEN=127.0.0.1:19301; ADMIN=127.0.0.1:19302
PIDS=()
stop() { # pid: SIGINT, then SIGKILL after 10 s
  kill -INT "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && stop "$p"; done
  PIDS=()
}
trap 'cleanup; rm -rf "$W"' EXIT

wait_port() { # addr seconds
  for _ in $(seq $(($2 * 10))); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; return 1
}
chat() { # max_tokens stream(true/false)
  echo "{\"model\":\"Qwen/Qwen3-8B\",\"stream\":$2,\"max_tokens\":$1,\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}"
}
load() { # requests max_tokens stream: one connection, one request at a time; fails on any error
  local out
  if [ "$3" = true ]; then
    out=$("$LOAD" --target "$LISTEN" --concurrency 1 --requests "$1" --body "$(chat "$2" "$3")" 2>"$W/load.err")
    echo "$out" | grep -q '"errors":0[,}]' && return 0
  else
    # okome-load counts tokens, which a plain JSON answer has none of: curl, every URL on the
    # one keep-alive connection.
    local urls=() i
    for i in $(seq "$1"); do urls+=("http://$LISTEN/v1/chat/completions"); done
    out=$(curl -s -w '\n%{http_code}\n' -H 'Content-Type: application/json' -d "$(chat "$2" "$3")" \
      "${urls[@]}" 2>"$W/load.err" | grep -cx 200 || true)
    [ "$out" = "$1" ] && return 0
    out="$out of $1 requests answered 200"
  fi
  echo "load failed: $out $(head -c 500 "$W/load.err")" >&2; return 1
}

# The engine, natively; started again if it is gone (a run must not measure a dead upstream).
SIMPID=""
ensure_sim() {
  [ -n "$SIMPID" ] && kill -0 "$SIMPID" 2>/dev/null && return 0
  RUST_LOG=warn "$OKOME" sim --kind vllm --listen $SIM --max-concurrent 1000 --tokens-per-second "$TPS" \
    --prefill 0ms --max-tokens 1 >> "$W/sim.log" 2>&1 &
  SIMPID=$!; PIDS+=($SIMPID)
  wait_port $SIM 30
}

# Start contender $1 under callgrind, dumps to $2/cg.out.<part>-<thread>; sets VG.
start() {
  local c=$1 d=$2 vg=(valgrind --tool=callgrind --separate-threads=yes --compress-strings=no --callgrind-out-file="$2/cg.out")
  case $c in
    pingora) RUST_LOG=warn "${vg[@]}" "$PINGORA" --listen $LISTEN --upstream $SIM --threads 1 > "$d/proxy.log" 2>&1 & ;;
    okome)
      sed -e "s|@WORKERS@|1|g" -e "s|@UPSTREAM@|$SIM|g" -e "s|@LISTEN@|$LISTEN|g" -e "s|@ADMIN@|$ADMIN|g" \
        -e "s|@DIR@|$d|g" "$OKOME_CONF" > "$d/okome.yaml"
      RUST_LOG=warn "${vg[@]}" "$OKOME" edge -c "$d/okome.yaml" > "$d/proxy.log" 2>&1 & ;;
    nginx)
      mkdir -p "$d"/nginx_{body,proxy,fastcgi,uwsgi,scgi}
      # One process (no master): the worker is the process valgrind runs.
      sed -e "s|@WORKERS@|1|g" -e "s|@DIR@|$d|g" -e "s|@UPSTREAM@|$SIM|g" -e "s|@LISTEN@|$LISTEN|g" \
        -e "s|master_process on|master_process off|" "$ROOT/benchmarks/conf/nginx.conf" > "$d/nginx.conf"
      "${vg[@]}" nginx -c "$d/nginx.conf" -p "$d" > "$d/proxy.log" 2>&1 & ;;
  esac
  VG=$!; PIDS+=($VG)
  wait_port $LISTEN 120
  if [ "$c" = okome ]; then
    for _ in $(seq 600); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
  fi
}

# Zero the counters, run the load, dump; sets BEST (the busiest thread's Ir), SUM (the whole
# process's) and BT (that thread's number).
PART=0
measure() { # dir name load-args...
  local d=$1 name=$2; shift 2
  callgrind_control -z "$VG" > /dev/null 2>&1
  load "$@"
  callgrind_control -d "$VG" > /dev/null 2>&1
  PART=$((PART + 1))
  BEST=0; SUM=0; BT=""
  local f ir
  for f in "$d"/cg.out."$PART"-*; do
    ir=$(awk '/^summary:/ {print $2}' "$f"); ir=${ir:-0}
    SUM=$((SUM + ir))
    if [ "$ir" -gt "$BEST" ]; then BEST=$ir; BT=${f##*-}; fi
    mv "$f" "$d/$name.${f##*-}"
  done
}

declare -A POST TOK POSTALL TOKALL
for c in $(echo "$CONTENDERS" | tr ',' ' '); do
  for r in $(seq "$REPEAT"); do
    d=$W/$c.$r; mkdir -p "$d"; PART=0
    echo "[instructions] $c run $r: starting under callgrind" >&2
    ensure_sim
    start "$c" "$d"
    # Warm-up: the upstream connection, lazily built state, the allocator's pools.
    load 20 1 false; load 2 "$T1" true
    measure "$d" post1n "$N" 1 false; p1=$BEST; a1=$SUM
    measure "$d" post2n $((2 * N)) 1 false; p2=$BEST; a2=$SUM; t=$BT
    measure "$d" stream1 "$M" "$T1" true; s1=$BEST; b1=$SUM
    measure "$d" stream2 "$M" "$T2" true; s2=$BEST; b2=$SUM
    stop "$VG"
    POST[$c.$r]=$(((p2 - p1) / N)); POSTALL[$c.$r]=$(((a2 - a1) / N))
    TOK[$c.$r]=$(((s2 - s1) / (M * (T2 - T1)))); TOKALL[$c.$r]=$(((b2 - b1) / (M * (T2 - T1))))
    echo "[instructions] $c run $r: ${POST[$c.$r]} per POST (thread $t; whole process ${POSTALL[$c.$r]}), ${TOK[$c.$r]} per token (whole process ${TOKALL[$c.$r]})" >&2
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP/$c.$r"; cp "$d"/post* "$d"/stream* "$d"/proxy.log "$KEEP/$c.$r/"; fi
  done
done

# Markdown: the first run's figures, the spread over the runs.
spread() { # array-name contender -> "x.x %"
  local -n a=$1; local lo="" hi="" v r
  for r in $(seq "$REPEAT"); do
    v=${a[$2.$r]}
    [ -z "$lo" ] || [ "$v" -lt "$lo" ] && lo=$v
    [ -z "$hi" ] || [ "$v" -gt "$hi" ] && hi=$v
  done
  awk -v lo="$lo" -v hi="$hi" 'BEGIN { printf "%.2f %%", (lo > 0 ? (hi - lo) * 100 / lo : 0) }'
}
runs() { local -n a=$1; local r s=""; for r in $(seq "$REPEAT"); do s="$s${s:+, }${a[$2.$r]}"; done; echo "$s"; }
label() { case $1 in pingora) echo "bare Pingora" ;; okome) echo "okome" ;; nginx) echo "nginx" ;; esac; }
{
  echo "## Instructions per request (callgrind)"
  echo
  echo "Deterministic counterpart of workloads c and d: user-space instructions the proxy executes, counted by valgrind's callgrind (\`benchmarks/instructions.sh\`), not time, so machine noise does not move them. Per small POST: the difference between $((2 * N)) and $N non-streaming POSTs (max_tokens 1) sent one at a time on one keep-alive connection, divided by $N. Per streamed token: the difference between $M streams of $T2 and of $T1 tokens (one token every $((1000 / TPS)) ms, so each arrives in a read of its own), divided by $((M * (T2 - T1))). *Worker* counts the proxy's busiest thread (the one serving the requests); *process* adds every other thread (timers, health probes, config watch). The kernel's work (syscalls, TCP) is not counted. $(date -u +%Y-%m-%dT%H:%MZ), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo ?)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (dirty)'), $(valgrind --version)."
  echo
  echo "| proxy | instructions / POST (worker) | / POST (process) | instructions / token (worker) | / token (process) | runs (worker, / POST) | spread over $REPEAT runs (POST; token) |"
  echo "|---|---|---|---|---|---|---|"
  for c in $(echo "$CONTENDERS" | tr ',' ' '); do
    echo "| $(label "$c") | ${POST[$c.1]} | ${POSTALL[$c.1]} | ${TOK[$c.1]} | ${TOKALL[$c.1]} | $(runs POST "$c") | $(spread POST "$c"); $(spread TOK "$c") |"
  done
  if [ -n "${POST[okome.1]:-}" ] && [ -n "${POST[pingora.1]:-}" ]; then
    echo
    awk -v o="${POST[okome.1]}" -v p="${POST[pingora.1]}" -v ot="${TOK[okome.1]}" -v pt="${TOK[pingora.1]}" \
      'BEGIN { printf "okome / bare Pingora: %.2f× per POST (okome adds %d instructions), %.2f× per token (adds %d).\n", o / p, o - p, ot / pt, ot - pt }'
  fi
  if [ -n "${POST[okome.1]:-}" ] && [ -n "${POST[nginx.1]:-}" ]; then
    awk -v o="${POST[okome.1]}" -v n="${POST[nginx.1]}" -v ot="${TOK[okome.1]}" -v nt="${TOK[nginx.1]}" \
      'BEGIN { printf "okome / nginx: %.2f× per POST, %.2f× per token.\n", o / n, ot / nt }'
  fi
} > "$W/section.md"
cat "$W/section.md"
[ -z "$OUTFILE" ] || cp "$W/section.md" "$OUTFILE"
