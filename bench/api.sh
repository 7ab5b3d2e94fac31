#!/usr/bin/env bash
# Datasource API benchmark: POST /v1/api queries (filtered list, primary-key lookup) against an
# in-process floor, single-row inserts and 10,000-row posts, on SQLite and, when asked, on
# PostgreSQL. See bench/README.md.
#
#   bench/api.sh                                   # SQLite only
#   bench/api.sh --postgres                        # SQLite, then postgres://postgres@127.0.0.1:5432/postgres
#   bench/api.sh --postgres postgres://user@host:5432/postgres
#   BENCH_POSTGRES_URL=postgres://... bench/api.sh
#   bench/api.sh --no-sqlite --postgres --mysql    # PostgreSQL and MariaDB side by side (W1, W2, ...)
#
# Every other flag goes to bench/api.py (e.g. --duration 5 --rows 20000 --no-sqlite --keep);
# `bench/api.sh --help` lists them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"

if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 "$here/api.py" --help
fi

echo "[bench] building the release binary and the floor bench (into $CARGO_TARGET_DIR)" >&2
(cd "$root" && cargo build --release -p cli && cargo bench -p store --bench floor --no-run) >&2
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

for tool in python3 psql; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        [[ $tool == psql && " $* " != *" --postgres"* && -z "${BENCH_POSTGRES_URL:-}" ]] && continue
        echo "[bench] $tool is needed" >&2
        exit 2
    fi
done

exec python3 "$here/api.py" --bin "$bin" --out "$here/out" "$@"
