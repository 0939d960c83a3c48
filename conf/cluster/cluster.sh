#!/usr/bin/env bash
# The seed's cluster on one machine: each node in its own network namespace with its own
# address on a bridge, the configs of this folder unchanged but for the subnet.
#
#   10.77.0.1   NODE-01   ingress       okome edge -c ingress.yaml        TLS + HTTP/2 on :8443
#   10.77.0.3   NODE-03   stream node   okome edge -c stream-node-03.yaml  mTLS from the ingress
#   10.77.0.4   NODE-04   stream node   okome edge -c stream-node-04.yaml
#   10.77.0.25  control   okome control -c control.yaml
#   10.77.0.30  core      okome sim -c core-sims.yaml (vLLM, Ollama, TF Serving) + okome arbiter
#   10.77.0.254 this machine (the client), on the bridge
#
# Usage (as root; needs ip, openssl, curl):
#   conf/cluster/cluster.sh up        certificates, a demo API key, namespaces, processes; waits
#                                     until the ingress is ready and prints how to call it
#   conf/cluster/cluster.sh down      stops everything and removes the namespaces
#   conf/cluster/cluster.sh kill NODE [SIGNAL]   signal one node's process (NODE: ingress,
#                                     node-03, node-04, control, sims, arbiter; default TERM)
#   conf/cluster/cluster.sh start NODE           start one node's process again
#
# Environment: OKOME_BIN (default: okome on PATH, else target/release or target/debug),
# OKOME_CLUSTER_DIR (state: configs, certificates, logs; default /tmp/okome-cluster),
# OKOME_CLUSTER_PREFIX (names of namespaces and links, ≤ 6 chars; default okc),
# OKOME_CLUSTER_NET (the /24, first three octets; default 10.77.0).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
DIR="${OKOME_CLUSTER_DIR:-/tmp/okome-cluster}"
P="${OKOME_CLUSTER_PREFIX:-okc}"
NET="${OKOME_CLUSTER_NET:-10.77.0}"
if [[ -z "${OKOME_BIN:-}" ]]; then
  if command -v okome >/dev/null; then OKOME_BIN="$(command -v okome)"
  elif [[ -x "$here/../../target/release/okome" ]]; then OKOME_BIN="$here/../../target/release/okome"
  else OKOME_BIN="$here/../../target/debug/okome"; fi
fi

# node → last octet; process → node and config.
declare -A IP=([ingress]=1 [node-03]=3 [node-04]=4 [control]=25 [core]=30)
declare -A NODE=([ingress]=ingress [node-03]=node-03 [node-04]=node-04 [control]=control [sims]=core [arbiter]=core)
declare -A CMD=(
  [sims]="sim -c core-sims.yaml"
  [arbiter]="arbiter -c arbiter.yaml"
  [control]="control -c control.yaml"
  [node-03]="edge -c stream-node-03.yaml"
  [node-04]="edge -c stream-node-04.yaml"
  [ingress]="edge -c ingress.yaml"
)
ORDER=(sims arbiter control node-03 node-04 ingress)

ns() { echo "$P-$1"; }
say() { echo "cluster: $*" >&2; }

certs() {
  local c="$DIR/certs"
  mkdir -p "$c"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=okome cluster CA" -keyout "$c/ca.key" -out "$c/ca.pem" 2>/dev/null
  leaf() { # name, subject CN, subjectAltName, extendedKeyUsage
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
      -keyout "$c/$1.key" -out "$c/$1.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$3" "$4" >"$c/$1.ext"
    openssl x509 -req -in "$c/$1.csr" -CA "$c/ca.pem" -CAkey "$c/ca.key" -CAcreateserial \
      -days 30 -extfile "$c/$1.ext" -out "$c/$1.pem" 2>/dev/null
    rm -f "$c/$1.csr" "$c/$1.ext"
  }
  leaf ingress api.okome.test "DNS:api.okome.test,IP:$NET.1" serverAuth
  leaf node-03 node-03.okome.test "DNS:node-03.okome.test,IP:$NET.3" serverAuth
  leaf node-04 node-04.okome.test "DNS:node-04.okome.test,IP:$NET.4" serverAuth
  leaf ingress-client ingress.okome.test "DNS:ingress.okome.test" clientAuth
  openssl rand -hex 32 >"$c/control-token"
  chmod 600 "$c"/*.key "$c/control-token"
}

start_one() {
  local p="$1" n="${NODE[$1]}"
  # shellcheck disable=SC2086 # CMD holds the arguments
  (cd "$DIR" && exec ip netns exec "$(ns "$n")" "$OKOME_BIN" ${CMD[$p]} \
    >>"$DIR/logs/$p.log" 2>&1) &
  echo $! >"$DIR/pids/$p"
}

wait_http() { # url, what, seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  say "$2 not ready after $3 s ($1); logs in $DIR/logs"
  return 1
}

up() {
  down 2>/dev/null || true
  mkdir -p "$DIR"/{logs,pids,state}
  cp "$here"/*.yaml "$DIR"/
  sed -i "s/10\.77\.0\./$NET./g" "$DIR"/*.yaml
  certs
  # A demo key for tenant `demo`; only its SHA-256 goes to the control plane.
  local key="okome-$(openssl rand -hex 20)"
  echo "$key" >"$DIR/api-key"
  printf -- '- { sha256: "%s", tenant: demo }\n' "$(printf %s "$key" | sha256sum | cut -d' ' -f1)" \
    >"$DIR/keys.yaml"

  ip link add "$P-br" type bridge
  ip addr add "$NET.254/24" dev "$P-br"
  ip link set "$P-br" up
  for n in "${!IP[@]}"; do
    ip netns add "$(ns "$n")"
    ip link add "$P-$n" type veth peer name eth0 netns "$(ns "$n")"
    ip link set "$P-$n" master "$P-br" up
    ip -n "$(ns "$n")" addr add "$NET.${IP[$n]}/24" dev eth0
    ip -n "$(ns "$n")" link set eth0 up
    ip -n "$(ns "$n")" link set lo up
  done
  for p in "${ORDER[@]}"; do start_one "$p"; done
  wait_http "http://$NET.1:9090/readyz" "the ingress" 60
  say "up: https://api.okome.test:8443 at $NET.1 (CA $DIR/certs/ca.pem, key in $DIR/api-key)"
  cat >&2 <<EOF
  curl --http2 --cacert $DIR/certs/ca.pem --resolve api.okome.test:8443:$NET.1 \\
    -H "authorization: Bearer \$(cat $DIR/api-key)" -H 'content-type: application/json' -N \\
    -d '{"model":"Qwen/Qwen3-8B","stream":true,"messages":[{"role":"user","content":"hi"}]}' \\
    https://api.okome.test:8443/v1/chat/completions
EOF
}

down() {
  if [[ -d "$DIR/pids" ]]; then
    for f in "$DIR"/pids/*; do
      [[ -e "$f" ]] || continue
      pkill -TERM -P "$(cat "$f")" 2>/dev/null || true
      kill -TERM "$(cat "$f")" 2>/dev/null || true
    done
    sleep 0.5
    for f in "$DIR"/pids/*; do
      [[ -e "$f" ]] || continue
      pkill -KILL -P "$(cat "$f")" 2>/dev/null || true
      kill -KILL "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    done
  fi
  for n in "${!IP[@]}"; do
    # Whatever still runs in the namespace goes with it.
    ip netns pids "$(ns "$n")" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$(ns "$n")" 2>/dev/null || true
    ip link del "$P-$n" 2>/dev/null || true
  done
  ip link del "$P-br" 2>/dev/null || true
}

signal_one() {
  local f="$DIR/pids/$1"
  [[ -e "$f" ]] || { say "no process $1"; return 1; }
  # `ip netns exec` execs the program: the pid is the process's own.
  kill "-${2:-TERM}" "$(cat "$f")"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  kill) signal_one "${2:?NODE}" "${3:-TERM}" ;;
  start) start_one "${2:?NODE}" ;;
  *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
