#!/usr/bin/env bash
# Makes Postfix's smtp-sink and smtp-source available to the benchmark without installing
# (or starting) Postfix: Debian's `postfix` package and the libraries it needs are
# downloaded with `apt-get download` and unpacked under target/tools/postfix. Prints the
# directory holding the two programs; run them with LD_LIBRARY_PATH set to the lines
# this script prints after it (`lib=…`).
#
#   scripts/postfix-tools.sh            # prints: bin=<dir> and lib=<dirs>
#
# When smtp-sink and smtp-source are already on the PATH (or in /usr/sbin), those are used.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)/target/tools/postfix"

for dir in "$(dirname "$(command -v smtp-sink 2>/dev/null || echo /nonexistent/x)")" /usr/sbin; do
    if [ -x "$dir/smtp-sink" ] && [ -x "$dir/smtp-source" ]; then
        echo "bin=$dir"
        echo "lib="
        exit 0
    fi
done

libs="$root/usr/lib/postfix:$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu:$root/usr/lib/aarch64-linux-gnu:$root/lib/aarch64-linux-gnu"
if [ ! -x "$root/usr/sbin/smtp-sink" ]; then
    if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
        echo "postfix-tools: smtp-sink is not installed and this is not a Debian/Ubuntu machine;" >&2
        echo "  install Postfix's smtp-sink and smtp-source (package postfix) and run again" >&2
        exit 1
    fi
    mkdir -p "$root/debs"
    cd "$root/debs"
    # The package, and the libraries it links that this system lacks.
    wanted="postfix"
    for dep in $(apt-cache depends postfix 2>/dev/null | awk '/Depends: lib/ {print $2}' | tr -d '<>' | sort -u); do
        dpkg -s "$dep" >/dev/null 2>&1 || wanted="$wanted $dep"
    done
    for pkg in $wanted; do
        ls "${pkg}"_*.deb >/dev/null 2>&1 || apt-get download "$pkg" >/dev/null 2>&1 \
            || { [ "$pkg" = postfix ] && { echo "postfix-tools: apt-get download postfix failed (apt-get update?)" >&2; exit 1; }; } \
            || true
    done
    for deb in ./*.deb; do
        dpkg-deb -x "$deb" "$root"
    done
fi
echo "bin=$root/usr/sbin"
echo "lib=$libs"
