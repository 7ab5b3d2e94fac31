#!/usr/bin/env bash
# The whole test suite, on a fresh machine: makes sure PostgreSQL, MariaDB, Redis, Node.js,
# Chromium (with playwright-core) and the Python checkers (OpenAPI validator, Prometheus parser,
# schemathesis) and xmlsec1 (the SAML tests' signer) are there (starting private servers when none answers on the usual ports), then
# runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_postgres
ensure_mariadb
ensure_redis
ensure_node
ensure_chromium
ensure_browser_deps
ensure_pytools
ensure_xmlsec1
cargo test --workspace "$@"
