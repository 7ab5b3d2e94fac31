# Sourced by scripts/test.sh and bench scripts: makes sure the services the tests need are
# reachable, starting private ones on loopback when the machine has none.
#
# ensure_postgres: exports CLOUDIO_TEST_DATABASE_URL (an admin URL; tests create a fresh
#   database per test). Uses $CLOUDIO_TEST_DATABASE_URL if set, else a server on
#   127.0.0.1:5432 if one answers, else a temporary cluster (initdb + pg_ctl) in a temp dir on
#   a free port, stopped when the calling shell exits. Installs PostgreSQL from Debian if absent.
# ensure_redis: exports CLOUDIO_TEST_REDIS_URL. Uses $CLOUDIO_TEST_REDIS_URL if set, else a
#   server on 127.0.0.1:6379 if one answers, else a private redis-server (installed from Debian
#   if absent) on a free port, keeping nothing on disk, stopped when the calling shell exits.
#   Tests use a key prefix of their own, so they never see each other's keys.
# ensure_mariadb: exports CLOUDIO_TEST_MYSQL_URL (a user that may create databases; tests make
#   their own, named after themselves). Uses $CLOUDIO_TEST_MYSQL_URL if set, else a server on
#   127.0.0.1:3306 if one answers, else a private mariadbd (installed from Debian's
#   mariadb-server if absent) in a temp dir on a free port, stopped when the shell exits.
# ensure_node: installs Node.js from Debian if `node` is missing.
# ensure_chromium: installs Debian's `chromium` if missing; exports CHROMIUM (its path).
# ensure_browser_deps: `npm ci` in tests/browser (playwright-core, which drives that chromium;
#   it downloads no browser of its own) when its node_modules is missing or older than the lock.
# ensure_xmlsec1: installs Debian's `xmlsec1` (the command-line signer the SAML tests' identity
#   provider signs with, an implementation independent of the server's) if missing.
# ensure_pytools: a virtual environment (default ~/.cache/cloudio-venv, or $CLOUDIO_VENV) with
#   openapi-spec-validator, prometheus_client and schemathesis from PyPI, pinned in
#   tests/python/requirements.txt; exports CLOUDIO_TEST_PYTHON (its python).

_cloudio_cleanup=()
_cloudio_on_exit() {
    local cmd
    for cmd in "${_cloudio_cleanup[@]}"; do eval "$cmd" || true; done
}
trap _cloudio_on_exit EXIT

_as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

_apt_install() {
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null ||
            { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
    fi
}

_pg_answers() {
    python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
# An SSLRequest: a PostgreSQL server answers with one byte, 'S' or 'N'.
s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
sys.exit(0 if s.recv(1) in (b"S", b"N") else 1)
PY
}

ensure_postgres() {
    if [ -n "${CLOUDIO_TEST_DATABASE_URL:-}" ]; then return 0; fi
    if [ -z "${CLOUDIO_TEST_PRIVATE_PG:-}" ] && _pg_answers 5432; then
        export CLOUDIO_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
        echo "services: using PostgreSQL on 127.0.0.1:5432"
        return 0
    fi
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bin" ]; then
        echo "services: installing PostgreSQL from Debian"
        _apt_install postgresql
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    local dir port
    dir=$(mktemp -d /tmp/cloudio-pg.XXXXXX)
    port=$(_free_port)
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    _as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log"; return 1; }
    _as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null ||
        { cat "$dir/server.log"; return 1; }
    _cloudio_cleanup+=("_as_postgres '$bin/pg_ctl' -D '$dir/data' -m immediate stop >/dev/null 2>&1; rm -rf '$dir'")
    export CLOUDIO_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    echo "services: started a private PostgreSQL on 127.0.0.1:$port"
}

ensure_node() {
    if ! command -v node >/dev/null 2>&1; then
        echo "services: installing Node.js from Debian"
        _apt_install nodejs
    fi
}

ensure_chromium() {
    local bin
    bin=$(command -v chromium || true)
    if [ -z "$bin" ]; then
        echo "services: installing Chromium from Debian"
        _apt_install chromium
        bin=$(command -v chromium)
    fi
    export CHROMIUM="$bin"
}

ensure_xmlsec1() {
    if ! command -v xmlsec1 >/dev/null 2>&1; then
        echo "services: installing xmlsec1 from Debian"
        _apt_install xmlsec1
    fi
}

ensure_browser_deps() {
    local dir=tests/browser
    if [ ! -d "$dir/node_modules/playwright-core" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        echo "services: installing $dir's npm packages"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
}

ensure_pytools() {
    local venv="${CLOUDIO_VENV:-$HOME/.cache/cloudio-venv}"
    local req=tests/python/requirements.txt
    if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        command -v python3 >/dev/null 2>&1 || _apt_install python3
        python3 -m venv "$venv" 2>/dev/null || { _apt_install python3-venv && python3 -m venv "$venv"; }
    fi
    if ! cmp -s "$req" "$venv/.cloudio-requirements"; then
        echo "services: installing $req into $venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >/dev/null
        cp "$req" "$venv/.cloudio-requirements"
    fi
    export CLOUDIO_TEST_PYTHON="$venv/bin/python"
}

_redis_answers() {
    python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(7).startswith(b"+PONG") else 1)
PY
}

ensure_redis() {
    if [ -n "${CLOUDIO_TEST_REDIS_URL:-}" ]; then return 0; fi
    if [ -z "${CLOUDIO_TEST_PRIVATE_REDIS:-}" ] && _redis_answers 6379; then
        export CLOUDIO_TEST_REDIS_URL="redis://127.0.0.1:6379"
        echo "services: using Redis on 127.0.0.1:6379"
        return 0
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "services: installing Redis from Debian"
        _apt_install redis-server
    fi
    local dir port
    dir=$(mktemp -d /tmp/cloudio-redis.XXXXXX)
    port=$(_free_port)
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null ||
        { cat "$dir/redis.log" 2>/dev/null; return 1; }
    local i
    for i in $(seq 1 50); do
        _redis_answers "$port" && break
        sleep 0.1
    done
    _cloudio_cleanup+=("kill \$(cat '$dir/redis.pid') 2>/dev/null; rm -rf '$dir'")
    export CLOUDIO_TEST_REDIS_URL="redis://127.0.0.1:$port"
    echo "services: started a private Redis on 127.0.0.1:$port"
}

_mysql_answers() {
    python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
# A MySQL/MariaDB server speaks first: a handshake packet, protocol version 10.
head = s.recv(5)
sys.exit(0 if len(head) == 5 and head[4] == 10 else 1)
PY
}

ensure_mariadb() {
    if [ -n "${CLOUDIO_TEST_MYSQL_URL:-}" ]; then return 0; fi
    if [ -z "${CLOUDIO_TEST_PRIVATE_MYSQL:-}" ] && _mysql_answers 3306; then
        export CLOUDIO_TEST_MYSQL_URL="mysql://root@127.0.0.1:3306"
        echo "services: using MariaDB/MySQL on 127.0.0.1:3306"
        return 0
    fi
    if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
        echo "services: installing MariaDB from Debian"
        _apt_install mariadb-server
    fi
    local bin=/usr/sbin/mariadbd dir port user
    command -v mariadbd >/dev/null 2>&1 && bin=$(command -v mariadbd)
    dir=$(mktemp -d /tmp/cloudio-mariadb.XXXXXX)
    port=$(_free_port)
    user=$(id -un)
    if [ "$(id -u)" = 0 ]; then user=mysql; chown mysql "$dir"; fi
    mariadb-install-db --no-defaults --datadir="$dir/data" --user="$user" \
        --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 ||
        { cat "$dir/install.log"; return 1; }
    "$bin" --no-defaults --datadir="$dir/data" --user="$user" --bind-address=127.0.0.1 \
        --port="$port" --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" \
        --innodb-flush-log-at-trx-commit=0 --skip-log-bin --max-connections=500 \
        >"$dir/server.log" 2>&1 &
    local i
    for i in $(seq 1 100); do
        _mysql_answers "$port" && break
        sleep 0.2
    done
    _mysql_answers "$port" || { cat "$dir/server.log"; return 1; }
    _cloudio_cleanup+=("kill \$(cat '$dir/mysqld.pid') 2>/dev/null; sleep 1; rm -rf '$dir'")
    export CLOUDIO_TEST_MYSQL_URL="mysql://root@127.0.0.1:$port"
    echo "services: started a private MariaDB on 127.0.0.1:$port"
}
