#!/usr/bin/env bash
# A 3-node NATS JetStream cluster on loopback, for trying replicated streams (nats.replicas=3)
# and fail-over by hand:
#
#   scripts/nats-cluster.sh start    # nodes n1..n3: clients on 4301..4303, routes on 6301..6303
#   scripts/nats-cluster.sh status   # which node answers, which is up
#   scripts/nats-cluster.sh kill n2  # SIGKILL one node;  `start` brings every stopped node back
#   scripts/nats-cluster.sh stop     # stop all (the data stays in .run/nats-cluster)
#
# Then: MAILLEDGER_NATS_URL=nats://127.0.0.1:4301,nats://127.0.0.1:4302,nats://127.0.0.1:4303 \
#       MAILLEDGER_NATS_REPLICAS=3 make run
# Ports can be moved with NATS_CLUSTER_BASE (default 4300: clients BASE+i, routes BASE+2000+i).
set -euo pipefail

cd "$(dirname "$0")/.."
DIR=${NATS_CLUSTER_DIR:-.run/nats-cluster}
BASE=${NATS_CLUSTER_BASE:-4300}
NODES=(n1 n2 n3)
BIN=$(command -v nats-server || true)
for candidate in /usr/sbin/nats-server /usr/bin/nats-server; do
  [[ -z "$BIN" && -x "$candidate" ]] && BIN=$candidate
done
[[ -n "$BIN" ]] || { echo "nats-server not found: sudo apt-get install -y nats-server" >&2; exit 1; }

port() { echo $((BASE + $1)); }
route() { echo $((BASE + 2000 + $1)); }
pidfile() { echo "$DIR/$1.pid"; }
running() { [[ -f "$(pidfile "$1")" ]] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }

start() {
  mkdir -p "$DIR"
  local routes=() i
  for i in 1 2 3; do routes+=("nats://127.0.0.1:$(route $i)"); done
  for i in 1 2 3; do
    local name=${NODES[$((i - 1))]}
    if running "$name"; then echo "$name: already running on $(port $i)"; continue; fi
    mkdir -p "$DIR/$name"
    # Every JetStream write fsynced before it is acknowledged where the server can (2.10+).
    local sync="" v major minor
    v=$("$BIN" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    read -r major minor <<<"${v:-0 0}"
    if ((major > 2 || (major == 2 && minor >= 10))); then sync="  sync_interval: always"; fi
    cat >"$DIR/$name.conf" <<CONF
server_name: $name
listen: 127.0.0.1:$(port $i)
jetstream {
  store_dir: "$DIR/$name"
$sync
}
cluster {
  name: mailledger
  listen: 127.0.0.1:$(route $i)
  routes: [$(IFS=,; echo "${routes[*]}")]
}
CONF
    "$BIN" -c "$DIR/$name.conf" -P "$(pidfile "$name")" >>"$DIR/$name.log" 2>&1 &
    echo "$name: started on 127.0.0.1:$(port $i) (log $DIR/$name.log)"
  done
  for i in 1 2 3; do
    for _ in $(seq 1 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$(port $i)") 2>/dev/null && break
      sleep 0.1
    done
  done
  echo "MAILLEDGER_NATS_URL=$(urls) MAILLEDGER_NATS_REPLICAS=3"
}

urls() {
  local out=() i
  for i in 1 2 3; do out+=("nats://127.0.0.1:$(port $i)"); done
  (IFS=,; echo "${out[*]}")
}

signal() { # signal NAME SIG
  running "$1" || { echo "$1: not running"; return 0; }
  kill "-$2" "$(cat "$(pidfile "$1")")"
  echo "$1: sent SIG$2"
}

case "${1:-start}" in
  start) start ;;
  stop) for n in "${NODES[@]}"; do signal "$n" TERM; done ;;
  kill) signal "${2:?which node: n1, n2 or n3}" KILL ;;
  status)
    for i in 1 2 3; do
      n=${NODES[$((i - 1))]}
      if running "$n"; then echo "$n: up on 127.0.0.1:$(port $i)"; else echo "$n: down"; fi
    done
    echo "MAILLEDGER_NATS_URL=$(urls)"
    ;;
  urls) urls ;;
  *) echo "usage: $0 start|stop|status|urls|kill NODE" >&2; exit 2 ;;
esac
