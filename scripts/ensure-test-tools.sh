#!/usr/bin/env bash
# ensure-test-tools.sh - the programs `make test` needs besides the services:
# nginx (the TLS proxy test) and openssl (scripts/make-cert.sh). Installs them with apt
# when missing (root, or sudo).
set -euo pipefail
missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]})); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "ensure-test-tools: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  echo "ensure-test-tools: installing ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package may start a system nginx on :80; the tests run their own.
  if command -v systemctl >/dev/null 2>&1 && [[ $(cat /proc/1/comm 2>/dev/null) == systemd ]]; then
    $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
fi
echo "test tools: nginx and openssl present"
