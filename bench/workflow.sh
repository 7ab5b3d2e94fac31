#!/usr/bin/env bash
# Workflow engine figures (issue 11): per-step overhead of a 20-step no-op chain and the
# throughput of 64 instances of a 10-step chain, on SQLite and PostgreSQL. See bench/workflow.py.
#
#   bench/workflow.sh            # full run
#   bench/workflow.sh --smoke    # quick check of the machinery, figures not for quoting
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloudio-target}"
source "$root/scripts/services.sh"
ensure_postgres >&2
if ! command -v wrk >/dev/null 2>&1; then
    echo "[workflow] installing wrk from Debian" >&2
    _apt_install wrk
fi
echo "[workflow] building the release binary (cargo build --release -p cli)" >&2
(cd "$root" && cargo build --release -p cli) >&2
exec python3 "$here/workflow.py" --bin "$CARGO_TARGET_DIR/release/cloudio" \
    --pg "$CLOUDIO_TEST_DATABASE_URL" --out "$here/out" "$@"
