#!/usr/bin/env bash
# The admission latency the shared limit store adds: LimitStore::admit on the local store vs the
# Redis store with a redis-server on loopback (one Lua script, one round trip per admission),
# one caller at a time and 32 at once; p50/p99/max in microseconds.
#
#   bash benchmarks/limits_latency.sh [requests] [concurrency]
#   (PROFILE=debug to use a debug build; the default builds and runs --release)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}; C=${2:-32}; PORT=${PORT:-16399}; PROFILE=${PROFILE:-release}
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)"; exit 1; }
flag=--release; [ "$PROFILE" = debug ] && flag=
cargo build $flag -q -p okome-benchmarks --bin limits-latency
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
trap 'kill $(jobs -p) 2>/dev/null' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
"target/$PROFILE/limits-latency" --redis "127.0.0.1:$PORT" --requests "$N" --concurrency "$C"
