#!/usr/bin/env bash
# The cost of a datasource hook: W1 of bench/compare.py against the same list through a
# datasource with a trivial postQuery hook, one server, alternating. See bench/README.md
# (section `hooks.sh`).
#
#   bench/hooks.sh             # full run (waits for a quiet machine, ~3 minutes of load)
#   bench/hooks.sh --smoke     # quick check of the machinery, figures not for quoting
#   bench/hooks.sh --help      # every option of bench/hooks.py
#
# Builds the release binary into $CARGO_TARGET_DIR (default /work/target), installs wrk from
# Debian if missing, then runs bench/hooks.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"

if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 "$here/hooks.py" --help
fi

echo "[hooks] building the release binary (cargo build --release -p cli)" >&2
(cd "$root" && cargo build --release -p cli) >&2
bin="$CARGO_TARGET_DIR/release/cloudio"

if ! command -v wrk >/dev/null 2>&1; then
    echo "[hooks] installing wrk from Debian" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "[hooks] wrk is missing and this is not root: apt-get install -y wrk" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y wrk >&2 || { apt-get update -qq >&2 && apt-get install -y wrk >&2; }
fi

exec python3 "$here/hooks.py" --bin "$bin" --out "$here/out" "$@"
