#!/usr/bin/env bash
# Foundation benchmark: startup time, idle RSS, logins/s and guarded requests/s of `cloudio serve`
# on the embedded SQLite default and, when asked, on PostgreSQL. See bench/README.md.
#
#   bench/foundation.sh                                  # SQLite only
#   bench/foundation.sh --postgres postgres://postgres@127.0.0.1:5432/postgres
#   BENCH_POSTGRES_URL=postgres://... bench/foundation.sh
#
# Every other flag goes to bench/foundation.py (e.g. --runs 20 --duration 5 --tokens 500
# --no-sqlite --keep); `bench/foundation.sh --help` lists them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"

if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 "$here/foundation.py" --help
fi

echo "[bench] building the release binary (cargo build --release -p cli)" >&2
(cd "$root" && cargo build --release -p cli) >&2
bin="$CARGO_TARGET_DIR/release/cloudio"

if ! command -v wrk >/dev/null 2>&1; then
    echo "[bench] installing wrk from Debian" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "[bench] wrk is missing and this is not root: apt-get install -y wrk" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y wrk >&2 || { apt-get update -qq >&2 && apt-get install -y wrk >&2; }
fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "[bench] python3 is needed" >&2
    exit 2
fi

exec python3 "$here/foundation.py" --bin "$bin" --out "$here/out" "$@"
