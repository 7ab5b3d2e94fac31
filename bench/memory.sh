#!/usr/bin/env bash
# The memory figures alone (~2-3 minutes, no PocketBase): the long-lived process's peak at
# -c1000 and its idle RSS after it, and the peak with 64 script workers. See bench/README.md
# (section `memory.sh`).
#
#   bench/memory.sh              # waits (up to 5 min) for a load average below 1, then measures
#   bench/memory.sh --no-wait    # measures at once
#   bench/memory.sh --help       # every option of bench/memory.py
#
# Builds the release binary into $CARGO_TARGET_DIR (default /work/target) and installs wrk
# from Debian if missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"

if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 "$here/memory.py" --help
fi

echo "[memory] building the release binary (cargo build --release -p cli)" >&2
(cd "$root" && cargo build --release -p cli) >&2

if ! command -v wrk >/dev/null 2>&1; then
    echo "[memory] installing wrk from Debian" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "[memory] wrk is missing and this is not root: apt-get install -y wrk" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y wrk >&2 || { apt-get update -qq >&2 && apt-get install -y wrk >&2; }
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec python3 "$here/memory.py" --bin "$CARGO_TARGET_DIR/release/cloudio" --out "$here/out" "$@"
