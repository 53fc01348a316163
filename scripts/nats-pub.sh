#!/usr/bin/env bash
# nats-pub.sh SUBJECT PAYLOAD [MSG-ID] - publish one message to NATS and print JetStream's
# acknowledgement ({"stream":…,"seq":…}), with bash alone: for machines without the
# `nats` CLI (Debian does not package it). Speaks the NATS text protocol to the server
# in MAILLEDGER_NATS_URL (default nats://127.0.0.1:4222); user:password@ and token@ in
# the URL are sent; TLS (tls://) and .creds files are not supported (use the nats CLI).
#   scripts/nats-pub.sh mail.commands.create '{"from":"ann@example.com",…}'
# Exit 0 when the stream acknowledged the message, 1 otherwise (the error is printed).
set -euo pipefail
(($# >= 2 && $# <= 3)) || { echo "usage: $0 SUBJECT PAYLOAD [MSG-ID]" >&2; exit 2; }
subject=$1 payload=$2 msg_id=${3:-}
url=${MAILLEDGER_NATS_URL:-nats://127.0.0.1:4222}
[[ $url == nats://* ]] || { echo "nats-pub: only nats:// URLs are supported, not ${url%%://*}://" >&2; exit 2; }
rest=${url#nats://}; rest=${rest%%/*}; rest=${rest%%,*}
auth=""
if [[ $rest == *@* ]]; then auth=${rest%@*}; rest=${rest##*@}; fi
host=${rest%%:*} port=${rest##*:}; [[ $port == "$rest" ]] && port=4222
connect='{"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"name":"nats-pub.sh"'
if [[ $auth == *:* ]]; then
  connect+=$(printf ',"user":%s,"pass":%s' "$(jq -Rn --arg v "${auth%%:*}" '$v')" "$(jq -Rn --arg v "${auth#*:}" '$v')")
elif [[ -n $auth ]]; then
  connect+=$(printf ',"auth_token":%s' "$(jq -Rn --arg v "$auth" '$v')")
fi
connect+='}'
exec 3<>"/dev/tcp/$host/$port" || { echo "nats-pub: cannot connect to $host:$port" >&2; exit 1; }
IFS= read -r -t 5 info <&3 || { echo "nats-pub: no INFO from $host:$port" >&2; exit 1; }
[[ $info == INFO* ]] || { echo "nats-pub: not a NATS server at $host:$port: $info" >&2; exit 1; }
inbox="_INBOX.natspub.$$.$RANDOM"
bytes=$(LC_ALL=C; echo "${#payload}")
{
  printf 'CONNECT %s\r\nSUB %s 1\r\n' "$connect" "$inbox"
  if [[ -n $msg_id ]]; then
    headers=$(printf 'NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n' "$msg_id")
    hbytes=$(LC_ALL=C; echo "${#headers}")
    printf 'HPUB %s %s %d %d\r\n%s%s\r\n' "$subject" "$inbox" "$hbytes" $((hbytes + bytes)) "$headers" "$payload"
  else
    printf 'PUB %s %s %d\r\n%s\r\n' "$subject" "$inbox" "$bytes" "$payload"
  fi
  printf 'PING\r\n'
} >&3
while IFS= read -r -t 5 line <&3; do
  line=${line%$'\r'}
  case $line in
    MSG*) IFS= read -r -t 5 body <&3; echo "${body%$'\r'}"; exec 3<&-
          [[ $body == *'"error"'* ]] && exit 1; exit 0 ;;
    HMSG*) # no responders (503): no stream takes this subject
           read -r -t 5 _ <&3 || true; echo "nats-pub: no stream takes $subject (no responders)" >&2; exit 1 ;;
    -ERR*) echo "nats-pub: server said $line" >&2; exit 1 ;;
    PING) printf 'PONG\r\n' >&3 ;;
  esac
done
echo "nats-pub: no acknowledgement within 5 s (is $subject in a JetStream stream?)" >&2
exit 1
