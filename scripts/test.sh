#!/usr/bin/env bash
# The whole test suite, on a fresh machine: makes sure PostgreSQL, MariaDB, Redis and Node.js are there
# (starting a private PostgreSQL if none answers on 127.0.0.1:5432), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_postgres
ensure_mariadb
ensure_redis
ensure_node
cargo test --workspace "$@"
