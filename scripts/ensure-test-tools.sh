#!/usr/bin/env bash
# ensure-test-tools.sh - the programs `make test` needs besides reachable services:
#   nginx         the TLS proxy test
#   openssl       scripts/make-cert.sh
#   redis-server  tests that start (and stop) a Redis of their own
#   nats-server   tests that start (and stop) a NATS of their own
#   grpcurl       a test calls the service as the README does (scripts/ensure-example-tools.sh)
# The last two are needed even when the shared PostgreSQL, NATS and Redis run elsewhere
# (another host, Docker), which is why scripts/ensure-services.sh, which installs a
# service only when it is unreachable, is not enough. Installs what is missing with apt
# (root, or sudo) and keeps the packaged services from starting: the tests run their own.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
missing=() units=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light) units+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server) units+=(redis-server)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server) units+=(nats-server)
if ((${#missing[@]})); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "ensure-test-tools: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  echo "ensure-test-tools: installing ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # A package may start a system service (nginx on :80, Redis on :6379, NATS on :4222)
  # that would clash with a Redis or NATS already serving those ports: stop it again.
  if command -v systemctl >/dev/null 2>&1 && [[ $(cat /proc/1/comm 2>/dev/null) == systemd ]]; then
    for unit in "${units[@]}"; do $sudo systemctl disable --now "$unit" >/dev/null 2>&1 || true; done
  fi
fi
for tool in nginx openssl redis-server nats-server; do
  command -v "$tool" >/dev/null 2>&1 || { echo "ensure-test-tools: $tool still missing" >&2; exit 1; }
done
# grpcurl (a test calls the service with it, as the README does), jq and psql.
bash "$(dirname "${BASH_SOURCE[0]}")/ensure-example-tools.sh"
echo "test tools: nginx, openssl, redis-server, nats-server and grpcurl present"
