#!/usr/bin/env bash
# ensure-services.sh - make sure PostgreSQL, Redis and NATS (JetStream) answer at
# the URLs the service uses (MAILLEDGER_DATABASE_URL, MAILLEDGER_REDIS_URL,
# MAILLEDGER_NATS_URL). A service on a local host (127.0.0.1, ::1, localhost) that
# is down is installed with apt if needed and started without requiring systemd;
# Redis/NATS state lives in <repo>/.run. An unreachable remote host is an error.
# The PostgreSQL role/password from the URL is fixed up for a local server.
#   --check   only report; exit 1 if anything is unreachable. Nothing is changed.
# shellcheck disable=SC2016  # single-quoted snippets are expanded by an inner shell
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR="$ROOT/.run"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
CHECK=0 FAILED=0 APT_UPDATED=0
case "${1:-}" in
  --check) CHECK=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

die() { echo "ensure-services: $*" >&2; exit 1; }
is_local() { [[ $1 == 127.0.0.1 || $1 == ::1 || $1 == localhost ]]; }
bind_addr() { if [[ $1 == localhost ]]; then echo 127.0.0.1; else echo "$1"; fi; }
reachable() { timeout 1 bash -c ': <"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }
has_systemd() { [[ $(cat /proc/1/comm 2>/dev/null) == systemd ]]; }
has_unit() { has_systemd && systemctl cat "$1" >/dev/null 2>&1; }
urldecode() { local s=${1//\\/\\\\}; printf '%b' "${s//%/\\x}"; }

# parse_url URL DEFAULT_PORT -> sets U_HOST U_PORT U_USER U_PASS
parse_url() {
  local rest=${1#*://} userinfo="" hostport
  rest=${rest%%,*}; rest=${rest%%[/?#]*}; hostport=$rest
  if [[ $rest == *@* ]]; then userinfo=${rest%@*}; hostport=${rest##*@}; fi
  U_USER=$(urldecode "${userinfo%%:*}") U_PASS=""
  if [[ $userinfo == *:* ]]; then U_PASS=$(urldecode "${userinfo#*:}"); fi
  if [[ $hostport == \[* ]]; then
    U_HOST=${hostport#\[}; U_HOST=${U_HOST%%]*}; hostport=${hostport#*]}
  else
    U_HOST=${hostport%%:*}; hostport=${hostport#"$U_HOST"}
  fi
  U_HOST=${U_HOST:-127.0.0.1}; U_PORT=${hostport#:}; U_PORT=${U_PORT:-$2}
}

# Called when NAME at HOST:PORT is down. Returns 0 if we should install/start it.
down() {
  if ((CHECK)); then echo "$1: NOT reachable at $2:$3"; FAILED=1; return 1; fi
  is_local "$2" || die "$1: cannot reach $2:$3 (from $4); not a local host, so not starting it"
  echo "$1: not reachable at $2:$3, starting it locally" >&2
}

as_root() {
  if ((EUID == 0)); then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root or sudo to run: $*"; fi
}
as_postgres() {
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "need root or sudo to run psql as postgres"
    (cd / && sudo -u postgres "$@")
  elif command -v runuser >/dev/null; then (cd / && runuser -u postgres -- "$@")
  else (cd / && su -s /bin/sh postgres -c 'exec "$0" "$@"' "$@"); fi
}

apt_install() {
  if ((APT_UPDATED == 0)); then as_root apt-get update; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

# wait_port NAME HOST PORT LOGFILE [PID]
wait_port() {
  local i
  for ((i = 0; i < 60; i++)); do
    if reachable "$2" "$3"; then return 0; fi
    if [[ -n ${5:-} ]] && ! kill -0 "$5" 2>/dev/null; then die "$1: exited while starting; see $4"; fi
    sleep 0.5
  done
  die "$1: still not reachable at $2:$3 after 30 s; see $4"
}

# ---------------------------------------------------------------- PostgreSQL
pg_login() { # URL -> try "select 1" on the postgres maintenance db; prints errors
  local base=${1%%\?*} query="" auth
  if [[ $1 == *\?* ]]; then query="?${1#*\?}"; fi
  auth=${base#*://}; auth=${auth%%/*}
  { PGCONNECT_TIMEOUT=3 psql -w -Atq "${base%%://*}://$auth/postgres$query" -c 'select 1' >/dev/null; } 2>&1
}

start_postgres() { # PORT HOST
  local line ver cluster status="down" log
  line=$(pg_lsclusters -h 2>/dev/null | awk -v p="$1" '$3 == p { print; exit }')
  if [[ -n $line ]]; then
    read -r ver cluster _ status _ _ log <<<"$line"
  else
    ver=$(printf '%s\n' /usr/lib/postgresql/*/bin/postgres | sort -V | tail -n1)
    ver=${ver#/usr/lib/postgresql/}; ver=${ver%%/*}
    cluster=main
    if [[ -d /etc/postgresql/$ver/main ]]; then cluster=mailledger_$1; fi
    echo "postgres: creating cluster $ver/$cluster on port $1" >&2
    as_root pg_createcluster "$ver" "$cluster" --port "$1" >/dev/null
  fi
  log=${log:-/var/log/postgresql/postgresql-$ver-$cluster.log}
  if has_unit "postgresql@$ver-$cluster.service"; then
    as_root systemctl start "postgresql@$ver-$cluster.service"
  elif [[ $status != online ]]; then
    as_root pg_ctlcluster "$ver" "$cluster" start
  fi
  wait_port postgres "$2" "$1" "$log"
}

ensure_postgres() {
  local url=${MAILLEDGER_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/mailledger}
  local state=reachable err
  parse_url "$url" 5432
  local host=$U_HOST port=$U_PORT user=$U_USER pass=$U_PASS
  if ! reachable "$host" "$port"; then
    down postgres "$host" "$port" MAILLEDGER_DATABASE_URL || return 0
    if ! command -v pg_ctlcluster >/dev/null || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
      apt_install postgresql postgresql-client
    fi
    if ! reachable "$host" "$port"; then start_postgres "$port" "$host"; fi
    state=started
  fi
  if command -v psql >/dev/null && ! err=$(pg_login "$url"); then
    if ((CHECK)) || ! is_local "$host" || [[ -z $user || -z $pass ]] ||
      ! grep -qiE 'authentication|password|role .* does not exist' <<<"$err"; then
      echo "postgres: $host:$port is up but login as '$user' failed: $err" >&2
      ((CHECK)) || exit 1
      FAILED=1; return 0
    fi
    echo "postgres: setting password of role '$user' from MAILLEDGER_DATABASE_URL" >&2
    as_postgres psql -X -q -p "$port" -d postgres -v ON_ERROR_STOP=1 -v u="$user" -v p="$pass" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN SUPERUSER', :'u')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'u') \gexec
ALTER ROLE :"u" WITH LOGIN PASSWORD :'p';
SQL
    err=$(pg_login "$url") || die "postgres: still cannot log in as '$user' at $host:$port: $err"
  fi
  echo "postgres: $state at $host:$port"
}

# ---------------------------------------------------------------------- Redis
ensure_redis() {
  parse_url "${MAILLEDGER_REDIS_URL:-redis://127.0.0.1:6379}" 6379
  local host=$U_HOST port=$U_PORT log="$RUN_DIR/redis.log"
  if reachable "$host" "$port"; then echo "redis: reachable at $host:$port"; return 0; fi
  down redis "$host" "$port" MAILLEDGER_REDIS_URL || return 0
  if ! command -v redis-server >/dev/null; then apt_install redis-server; fi
  if ! reachable "$host" "$port"; then
    if [[ $port == 6379 ]] && has_unit redis-server.service; then
      as_root systemctl start redis-server.service; log=/var/log/redis/redis-server.log
    else
      mkdir -p "$RUN_DIR"
      local args=(--daemonize yes --bind "$(bind_addr "$host")" --port "$port" --save ""
        --appendonly no --dir "$RUN_DIR" --logfile "$log" --pidfile "$RUN_DIR/redis.pid")
      if [[ -n $U_PASS ]]; then args+=(--requirepass "$U_PASS"); fi
      redis-server "${args[@]}" >/dev/null || die "redis: redis-server failed to start on port $port; see $log"
    fi
  fi
  wait_port redis "$host" "$port" "$log"
  echo "redis: started at $host:$port (log $log)"
}

# ----------------------------------------------------------------------- NATS
nats_has_js() { # HOST PORT -> true unless the server's INFO line lacks JetStream
  local info
  info=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"; head -n1 <&3' "$1" "$2" 2>/dev/null) || return 0
  [[ $info != INFO* || $info == *'"jetstream":true'* ]]
}

ensure_nats() {
  parse_url "${MAILLEDGER_NATS_URL:-nats://127.0.0.1:4222}" 4222
  local host=$U_HOST port=$U_PORT log="$RUN_DIR/nats.log"
  if reachable "$host" "$port"; then
    if nats_has_js "$host" "$port"; then echo "nats: reachable at $host:$port"; return 0; fi
    echo "nats: server at $host:$port is up but JetStream is disabled; restart it with -js (for the" \
      "packaged nats-server.service: 'sudo systemctl disable --now nats-server', then re-run)" >&2
    ((CHECK)) || exit 1
    FAILED=1; return 0
  fi
  down nats "$host" "$port" MAILLEDGER_NATS_URL || return 0
  if ! command -v nats-server >/dev/null; then
    apt_install nats-server
    # The packaged unit has no JetStream; we run our own instance instead.
    if has_systemd; then as_root systemctl disable --now nats-server.service >/dev/null 2>&1 || true; fi
  fi
  local pid
  pid=$(cat "$RUN_DIR/nats.pid" 2>/dev/null) || true
  if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == nats-server ]]; then
    die "nats: our nats-server (pid $pid) already uses $RUN_DIR/nats on another port; stop it first (kill $pid)"
  fi
  mkdir -p "$RUN_DIR/nats"
  local args=(-a "$(bind_addr "$host")" -p "$port" -js -sd "$RUN_DIR/nats") sync="every 2 min (nats-server's default)"
  # fsync every JetStream write before acknowledging it, where the server can (2.10+):
  # with the default lazy fsync an acknowledged command can be lost in a power cut.
  if nats_supports_sync_always; then
    printf 'jetstream {\n  store_dir: "%s"\n  sync_interval: always\n}\n' "$RUN_DIR/nats" >"$RUN_DIR/nats.conf"
    args=(-a "$(bind_addr "$host")" -p "$port" -c "$RUN_DIR/nats.conf")
    sync="on every write"
  fi
  if [[ -n $U_USER ]]; then args+=(--user "$U_USER" --pass "$U_PASS"); fi
  setsid nohup nats-server "${args[@]}" >>"$log" 2>&1 </dev/null &
  pid=$!
  wait_port nats "$host" "$port" "$log" "$pid"
  echo "$pid" >"$RUN_DIR/nats.pid"
  nats_has_js "$host" "$port" || die "nats: started but JetStream is off; see $log"
  echo "nats: started (JetStream, store .run/nats, fsync $sync) at $host:$port (log $log)"
}

nats_supports_sync_always() { # nats-server 2.10 and later know `sync_interval: always`
  local v
  v=$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [[ -n $v ]] || return 1
  read -r major minor <<<"$v"
  ((major > 2 || (major == 2 && minor >= 10)))
}

ensure_postgres
ensure_redis
ensure_nats
exit "$FAILED"
