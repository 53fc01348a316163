#!/usr/bin/env bash
# Make a local certificate authority and a server certificate signed by it, for nginx in
# front of mailledger (compose/docker-compose.yml, nginx/nginx.local.conf).
#
#   scripts/make-cert.sh [--force] [DIR]      DIR defaults to nginx/certs in the repository
#
# Writes into DIR:
#   ca.crt  ca.key          the CA (10 years); give ca.crt to clients:
#                             curl --cacert DIR/ca.crt https://localhost/health
#                             grpcurl -cacert DIR/ca.crt localhost:443 list
#   server.crt server.key   the server (825 days, serverAuth), for
#                             DNS:localhost, DNS:mailledger, IP:127.0.0.1
#
# Idempotent: when server.crt is still valid (for at least another day), matches
# server.key and is signed by ca.crt, nothing is done. Otherwise a new server
# certificate is made, signed by the existing CA when ca.crt/ca.key are usable (so
# clients that trust it keep working), else by a new CA. --force makes both anew.
# Keys are written readable by their owner only.
set -euo pipefail

usage() {
    sed -n '2,18s/^# \{0,1\}//p' "$0"
}

force=0
dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        -h | --help) usage; exit 0 ;;
        --)
            shift
            if [ $# -gt 0 ]; then dir="$1"; fi
            break
            ;;
        -*) echo "make-cert.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *)
            if [ -n "$dir" ]; then
                echo "make-cert.sh: one directory only" >&2
                exit 2
            fi
            dir="$1"
            ;;
    esac
    shift
done

if [ -z "$dir" ]; then
    repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    dir="$repo_root/nginx/certs"
fi

command -v openssl >/dev/null 2>&1 || {
    echo "make-cert.sh: openssl is needed (apt-get install openssl)" >&2
    exit 1
}

mkdir -p "$dir"
ca_crt="$dir/ca.crt"
ca_key="$dir/ca.key"
server_crt="$dir/server.crt"
server_key="$dir/server.key"

server_days=825
ca_days=3650
min_validity=86400 # seconds a certificate must still be valid to be kept

# Does the certificate $1 belong to the private key $2?
key_matches() {
    local cert_pub key_pub
    cert_pub="$(openssl x509 -in "$1" -noout -pubkey 2>/dev/null)" || return 1
    key_pub="$(openssl pkey -in "$2" -pubout 2>/dev/null)" || return 1
    [ -n "$cert_pub" ] && [ "$cert_pub" = "$key_pub" ]
}

# Is the certificate $1 with key $2 readable and valid for at least $min_validity more?
usable() {
    [ -s "$1" ] && [ -s "$2" ] &&
        openssl x509 -in "$1" -noout -checkend "$min_validity" >/dev/null 2>&1 &&
        key_matches "$1" "$2"
}

server_usable() {
    usable "$server_crt" "$server_key" && [ -s "$ca_crt" ] &&
        openssl verify -CAfile "$ca_crt" "$server_crt" >/dev/null 2>&1
}

if [ "$force" -eq 0 ] && server_usable; then
    echo "make-cert.sh: $server_crt is valid until $(openssl x509 -in "$server_crt" -noout -enddate | cut -d= -f2); nothing to do (--force to make new ones)"
    exit 0
fi

# Work in a private directory next to the target and move finished files into place,
# so an interrupted run never leaves a half-written certificate behind.
umask 077
work="$(mktemp -d "$dir/.make-cert.XXXXXX")"
trap 'rm -rf "$work"' EXIT

new_ca=0
if [ "$force" -eq 1 ] || ! usable "$ca_crt" "$ca_key"; then
    new_ca=1
    cat >"$work/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt             = no
x509_extensions    = v3_ca

[dn]
O  = mailledger local development
CN = mailledger local CA

[v3_ca]
basicConstraints     = critical, CA:TRUE, pathlen:0
keyUsage             = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key.sec1"
    openssl pkcs8 -topk8 -nocrypt -in "$work/ca.key.sec1" -out "$work/ca.key"
    openssl req -new -x509 -config "$work/ca.cnf" -key "$work/ca.key" -sha256 \
        -days "$ca_days" -set_serial "0x$(openssl rand -hex 16)" -out "$work/ca.crt"
    signing_crt="$work/ca.crt"
    signing_key="$work/ca.key"
else
    signing_crt="$ca_crt"
    signing_key="$ca_key"
fi

cat >"$work/server.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt             = no

[dn]
O  = mailledger local development
CN = localhost

[v3_server]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, DNS:mailledger, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid, issuer
EOF
openssl ecparam -name prime256v1 -genkey -noout -out "$work/server.key.sec1"
openssl pkcs8 -topk8 -nocrypt -in "$work/server.key.sec1" -out "$work/server.key"
openssl req -new -config "$work/server.cnf" -key "$work/server.key" -sha256 -out "$work/server.csr"
# (OpenSSL 3 reports "Certificate request self-signature ok" on stderr: shown only on failure.)
if ! out="$(openssl x509 -req -in "$work/server.csr" -CA "$signing_crt" -CAkey "$signing_key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$server_days" \
    -extfile "$work/server.cnf" -extensions v3_server -out "$work/server.crt" 2>&1)"; then
    echo "$out" >&2
    exit 1
fi

openssl verify -CAfile "$signing_crt" "$work/server.crt" >/dev/null

# Certificates are public: readable by all (nginx's workers, clients); keys stay 0600.
chmod 0644 "$work/server.crt"
if [ "$new_ca" -eq 1 ]; then
    chmod 0644 "$work/ca.crt"
    mv -f "$work/ca.key" "$ca_key"
    mv -f "$work/ca.crt" "$ca_crt"
fi
mv -f "$work/server.key" "$server_key"
mv -f "$work/server.crt" "$server_crt"

if [ "$new_ca" -eq 1 ]; then
    echo "make-cert.sh: new CA $ca_crt"
else
    echo "make-cert.sh: kept CA $ca_crt"
fi
echo "make-cert.sh: new server certificate $server_crt (DNS:localhost, DNS:mailledger, IP:127.0.0.1; $server_days days)"
