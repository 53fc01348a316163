#!/usr/bin/env bash
# readme-examples.sh - runs README.md's examples as a newcomer pastes them: every ```sh
# block, in order, in one bash session (so KEY, ID, … carry from block to block), from
# the repository root, against the service `make run` started (in another terminal).
# A block whose first line is `# needs: …` is skipped and listed: it needs another
# set-up first (TLS, the compose stack, dead letters).
#
# It fails, naming the README line, when a command exits non-zero, when curl gets an
# HTTP status of 400 or more, or when a search finds nothing (an example must show what
# a newcomer sees). The files the examples write into the repository root (suppressions.csv, kept-….note,
# ledger-….ndjson) are removed after.
#   scripts/readme-examples.sh            (or: make examples)
#   README=path/to/README.md scripts/readme-examples.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
README=${README:-$ROOT/README.md}
cd "$ROOT"
die() { echo "readme-examples: $*" >&2; exit 1; }

bash scripts/ensure-example-tools.sh >/dev/null
command -v mailledger >/dev/null || die "mailledger is not on PATH: make install (the examples say \`mailledger …\`)"
curl -sf -o /dev/null http://127.0.0.1:8080/ready || die "no ready service on 127.0.0.1:8080: start it with \`make run\` (another terminal)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
before=$(ls -A "$ROOT")

# Blocks: "LINE<TAB>needs-text" into an index, each block's text into its own file.
awk -v dir="$work" '
  /^```sh[[:space:]]*$/ { inside = 1; n++; start = NR + 1; first = 1; next }
  inside && /^```[[:space:]]*$/ { inside = 0; close(file); print start "\t" needs > (dir "/index"); next }
  inside {
    file = sprintf("%s/block-%03d.sh", dir, n)
    if (first) { needs = ($0 ~ /^# needs:/) ? substr($0, 10) : ""; first = 0 }
    print > file
  }
' "$README"
[[ -s $work/index ]] || die "no \`\`\`sh blocks in $README"

{
  cat <<'PRELUDE'
set -eEuo pipefail
LINE=0
trap 'echo "readme-examples: README.md:$LINE: failed: $BASH_COMMAND" >&2' ERR
# curl as pasted, but an HTTP error status or a search that finds nothing is a failure.
curl() {
  local body status
  body=$(mktemp)
  status=$(command curl -o "$body" -w '%{http_code}' "$@") || { cat "$body"; rm -f "$body"; return 1; }
  cat "$body"
  if [[ $status -ge 400 ]]; then
    echo; echo "readme-examples: README.md:$LINE: HTTP $status from: curl $*" >&2; rm -f "$body"; return 1
  fi
  if grep -q '"total_count":0[,}]' "$body"; then
    echo; echo "readme-examples: README.md:$LINE: the search found nothing: curl $*" >&2; rm -f "$body"; return 1
  fi
  rm -f "$body"
}
PRELUDE
  n=0
  while IFS=$'\t' read -r line needs; do
    n=$((n + 1))
    [[ -n $needs ]] && continue
    printf 'LINE=%d\necho; echo "== README.md:%d"\n' "$line" "$line"
    cat "$(printf '%s/block-%03d.sh' "$work" "$n")"
    # A person pastes one block at a time: what a block sent is projected before the next.
    printf '\nsleep 1\n'
  done < "$work/index"
} > "$work/run.sh"

status=0
bash "$work/run.sh" || status=$?

# Files the examples wrote (suppressions.csv, kept-….note, ledger-….ndjson, me.key, …).
for f in $(comm -13 <(echo "$before" | sort) <(ls -A "$ROOT" | sort)); do
  case $f in suppressions.* | kept-*.note | ledger-*.ndjson | me.*) rm -f "${ROOT:?}/$f" ;; esac
done

echo
total=$(wc -l < "$work/index")
skipped=$(awk -F'\t' '$2 != ""' "$work/index")
echo "readme-examples: $((total - $(echo -n "$skipped" | grep -c '^' || true))) of $total blocks run; skipped, each needing another set-up:"
echo "$skipped" | awk -F'\t' 'NF { printf "  README.md:%s:%s\n", $1, $2 }'
if ((status == 0)); then echo "readme-examples: every block ran without error"; else echo "readme-examples: FAILED" >&2; fi
exit "$status"
