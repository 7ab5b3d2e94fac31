#!/usr/bin/env bash
# Three nodes on one PostgreSQL, with and without Redis: W1 under wrk -c1000 across the nodes
# (req/s, p99, errors, peak RSS per node) and cross-node revocation latency. See bench/README.md.
#
#   bench/cluster.sh                                  # PostgreSQL and Redis on their usual ports
#   bench/cluster.sh --duration 5 --conns 100 --rows 10000 --revocations 20   # a quick check
#   BENCH_POSTGRES_URL=postgres://... BENCH_REDIS_URL=redis://... bench/cluster.sh
#
# Every flag goes to bench/cluster.py (`bench/cluster.sh --help` lists them). Run the full
# figures only on a quiet machine (load average < 1): the report warns otherwise.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"

if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    exec python3 "$here/cluster.py" --bin /dev/null --help
fi

# PostgreSQL and Redis as the test suite finds or starts them.
source "$root/scripts/services.sh"
if [[ -z "${BENCH_POSTGRES_URL:-}" ]]; then ensure_postgres; export BENCH_POSTGRES_URL="$CLOUDIO_TEST_DATABASE_URL"; fi
if [[ -z "${BENCH_REDIS_URL:-}" ]]; then ensure_redis; export BENCH_REDIS_URL="$CLOUDIO_TEST_REDIS_URL"; fi

echo "[bench] building the release binary (into $CARGO_TARGET_DIR)" >&2
(cd "$root" && cargo build --release -p cli) >&2
bin="$CARGO_TARGET_DIR/release/cloudio"

if ! command -v wrk >/dev/null 2>&1; then
    echo "[bench] installing wrk from Debian" >&2
    _apt_install wrk
fi
command -v psql >/dev/null 2>&1 || { echo "[bench] psql is needed" >&2; exit 2; }

# Not exec: the services started above are stopped when this shell exits.
python3 "$here/cluster.py" --bin "$bin" --out "$here/out" "$@"
