#!/usr/bin/env bash
# TF Serving gRPC relay overhead: unary Predict on the simulated TF Serving's gRPC port, directly
# and through the edge (h2c listener, pool grpc_port), interleaved A B A B, with the official
# grpcio client (asyncio; benchmarks/grpc_latency.py). The engine answers after a 1 ms prefill
# (a prediction is a one-token generation; decoding it takes 10 µs here), so the difference is
# the cost of the edge and its extra hop per call.
#
#   cargo build --release -p okome && bash benchmarks/grpc_latency.sh [concurrency] [requests] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-1}; N=${2:-2000}; ROUNDS=${3:-3}
BIN=target/release/okome
PY=${OKOME_PYENV:-$HOME/.cache/okome/pyenv}/bin/python
REST=127.0.0.1:18601; GRPC=127.0.0.1:18600; EDGE=127.0.0.1:18680; ADMIN=127.0.0.1:18690
dir=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/edge.yaml" <<YAML
listeners: [{ address: $EDGE, http2: true }]
admin: { address: $ADMIN }
server: { threads: 1 }
access_log: { enabled: false }
pools:
  tf: { kind: tfserving, backends: ["$REST"], models: [half_plus_two], grpc_port: ${GRPC##*:} }
routes:
  - { name: tf, pool: tf }
YAML
RUST_LOG=warn $BIN sim --kind tfserving --listen $REST --grpc-listen $GRPC --prefill 1ms --tokens-per-second 100000 --max-concurrent 100000 >/dev/null &
sleep 0.5
RUST_LOG=warn $BIN edge -c "$dir/edge.yaml" &
for _ in $(seq 50); do curl -sf http://$ADMIN/readyz >/dev/null && break; sleep 0.1; done
echo "# unary Predict (3 floats), $C concurrent calls, $N per run, edge with 1 worker thread"
for r in $(seq "$ROUNDS"); do
  echo "direct $($PY benchmarks/grpc_latency.py --proto proto --target $GRPC --concurrency "$C" --requests "$N")"
  echo "edge   $($PY benchmarks/grpc_latency.py --proto proto --target $EDGE --concurrency "$C" --requests "$N")"
done
