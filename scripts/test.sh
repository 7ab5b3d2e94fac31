#!/usr/bin/env bash
# The whole test suite, on a fresh machine: makes sure PostgreSQL, Node.js, Chromium (with
# playwright-core) and the Python checkers (OpenAPI validator, Prometheus parser, schemathesis)
# are there (starting a private PostgreSQL if none answers on 127.0.0.1:5432), then runs every
# test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_postgres
ensure_node
ensure_chromium
ensure_browser_deps
ensure_pytools
cargo test --workspace "$@"
