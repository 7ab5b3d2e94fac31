#!/usr/bin/env python3
"""cloudio vs PocketBase on the same 100,000 employees, in the same run, alternating.

Driven by bench/compare.sh (which builds the binary, installs wrk and PocketBase); runnable on
its own:

    python3 bench/compare.py --bin /work/target/release/cloudio --pocketbase VENV/bin/pocketbase

Standard library only. Both servers listen on 127.0.0.1 (ours on port 0, the address read from
its `listening on <addr>` line; PocketBase on a free port picked just before), with their data
in a fresh temporary directory, removed at the end. See bench/README.md, section
`compare.sh`, for what each figure means.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import http.client
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
LUA_DIR = os.path.join(HERE, "wrk")
PASSWORD = "bench-Pa55word"
PB_SUPERUSER = "admin@bench.local"
PB_USER = "bench@bench.local"
APP_UID = "bench"
ROLE_UID = "bench_user"
ANSI_RE = re.compile(rb"\x1b\[[0-9;]*m")
OURS_READY_RE = re.compile(rb"listening on (\S+)")
PB_READY_RE = re.compile(rb"Server started at (\S+)")

# W1 for both systems.
W1_PB_FILTER = "(name~'ab' && salary>=50000)"
W1_PB_PATH = ("/api/collections/employees/records?filter="
              + urllib.parse.quote(W1_PB_FILTER, safe="") + "&sort=name&perPage=10&skipTotal=1")
W1_OURS_BODY = {"E": {"ds": "Employees", "query": {
    "filter": [{"name": {"like": "ab"}}, {"salary": {"gte": 50000}}],
    "sort": {"name": 1}, "limit": 10}}}
W4_OURS_BODY = {"E": {"ds": "Employees", "data": [{"_rs": "I", "name": "Bench insert",
                                                      "salary": 1}]}}
W4_PB_BODY = {"name": "Bench insert", "salary": 1}

# W5 and W6: server-side JavaScript on both. Ours: a cloud function (`functions/bench.js`,
# export `hello`) and a `postQuery` hook on a second datasource over the same table
# (`EmployeesHooked`); PocketBase: `routerAdd` and `onRecordEnrich` in a `pb_hooks` file (JSVM,
# 0.40 API), loaded only by the processes of the script phases (`--hooksDir`).
HOOKED_DS = "EmployeesHooked"
POSTQUERY_JS = ("// bench/compare.py, W6: a computed field on every row.\n"
                "for (const r of rows) r.x = 1;\n")
FN_MODULE, FN_NAME = "bench", "hello"
FN_JS = ("// bench/compare.py, W5: a cloud function answering a small JSON.\n"
         "export function hello(arg) {\n  return { hello: \"world\", n: arg.n };\n}\n"
         "// The memory phase's second run: the same answer after a `db` call, so that each\n"
         "// execution waits (on the pool's threads) and up to `workers` of them are running.\n"
         "export async function held(arg) {\n"
         "  const r = await db.executeQuery(\"select 1 as one\");\n"
         "  return { hello: \"world\", n: arg.n, one: r.length };\n}\n")
FN_HELD = "held"
W5_ARG = {"n": 42}
W5_ANSWER = {"hello": "world", "n": 42}
W5_PB_PATH = "/api/bench/hello"
PB_HOOKS_JS = f"""// bench/compare.py: W5 and W6 for PocketBase's JSVM (0.40 API).
routerAdd("POST", "{W5_PB_PATH}", (e) => {{
  const body = e.requestInfo().body;
  return e.json(200, {{ hello: "world", n: body.n }});
}}, $apis.requireAuth());

onRecordEnrich((e) => {{
  e.record.withCustomData(true);
  e.record.set("x", 1);
  return e.next();
}}, "employees");
"""
W6_OURS_BODY = {"E": {**W1_OURS_BODY["E"], "ds": HOOKED_DS}}

# Targets (the issue): ours against PocketBase, and the product's own claims (spec section 10).
RATIO_TARGET = {"W1": 2.0, "W2": 2.0, "W3": 1.0, "W4": 2.0, "W5": 2.0, "W6": 2.0}
STARTUP_TARGET_MS = 20.0
IDLE_RSS_TARGET_MB = 20.0
PEAK_RSS_TARGET_MB = 60.0
SCRIPT_RSS_TARGET_MB = 100.0

LIVE: list["Server"] = []


def log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def load1() -> float:
    return float(loadavg().split()[0])


# --------------------------------------------------------------------------------------------
# The 100,000 rows: one SQL generator, run by SQLite for both systems, so row N has the same
# content in both. Names are unique (a zero-padded row number at the end), so `sort=name`
# gives one order whatever the tie-breaker of each system.

FIRST = ["Abigail", "Bruno", "Chen", "Dana", "Elif", "Farah", "Goran", "Hana", "Ivan", "Jonas",
         "Kemal", "Lucia", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Stefan",
         "Yuki"]
LAST = ["Abbott", "Baker", "Castro", "Dalton", "Evans", "Fischer", "Garcia", "Hughes", "Ito",
        "Jensen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Quinn", "Rossi",
        "Silva", "Tanaka", "Ueda", "Vargas", "Weber", "Xu", "Young", "Zimmer", "Andersen",
        "Bianchi", "Costa", "Duval", "Eriksen", "Ferrari", "Gomez", "Horvat", "Ibrahim",
        "Jovanovic", "Kim", "Lindqvist", "Mendes", "Nielsen", "Olsen", "Park", "Ricci", "Santos",
        "Torres", "Ulrich", "Volkov", "Wagner", "Yilmaz", "Zhang"]


def rows_cte(rows: int) -> str:
    """`WITH RECURSIVE ..., g(...)`: the rows as (n, name, salary, active, gender, join_date,
    email, badge), n = 1..rows."""
    f = ",\n    ".join(f"({k}, '{v}')" for k, v in enumerate(FIRST))
    la = ",\n    ".join(f"({k}, '{v}')" for k, v in enumerate(LAST))
    return f"""WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {rows - 1}),
  f(k, v) AS (VALUES
    {f}),
  l(k, v) AS (VALUES
    {la}),
  g(n, name, salary, active, gender, join_date, email, badge) AS (
    SELECT s.i + 1,
           f.v || ' ' || l.v || ' ' || printf('%06d', s.i + 1),
           30000 + (s.i * 7919) % 90000,
           CASE WHEN s.i % 7 = 0 THEN 'N' ELSE 'Y' END,
           CASE WHEN s.i % 2 = 0 THEN 'F' ELSE 'M' END,
           date('2015-01-01', '+' || ((s.i * 37) % 3650) || ' days'),
           lower(f.v || '.' || l.v) || (s.i + 1) || '@example.com',
           'B' || printf('%06d', s.i + 1)
    FROM s JOIN f ON f.k = s.i % {len(FIRST)} JOIN l ON l.k = (s.i / {len(FIRST)}) % {len(LAST)})
"""


def ours_migration(rows: int) -> str:
    return (f"-- bench/compare.py: {rows} deterministic employees, the same as PocketBase's.\n"
            "CREATE TABLE EMPLOYEES (\n"
            "    EMP_ID INTEGER PRIMARY KEY AUTOINCREMENT,\n"
            "    NAME TEXT NOT NULL,\n"
            "    SALARY NUMERIC,\n"
            "    ACTIVE TEXT,\n"
            "    GENDER TEXT,\n"
            "    JOIN_DATE TEXT,\n"
            "    EMAIL_ADDRESS TEXT,\n"
            "    BADGE TEXT,\n"
            "    CREATED_BY TEXT,\n"
            "    CREATION_DATE TEXT,\n"
            "    LAST_UPDATED_BY TEXT,\n"
            "    LAST_UPDATE_DATE TEXT\n"
            ");\n"
            "CREATE INDEX EMPLOYEES_NAME ON EMPLOYEES (NAME);\n"
            "CREATE INDEX EMPLOYEES_SALARY ON EMPLOYEES (SALARY);\n"
            + rows_cte(rows) +
            "INSERT INTO EMPLOYEES (EMP_ID, NAME, SALARY, ACTIVE, GENDER, JOIN_DATE, EMAIL_ADDRESS,\n"
            "                       BADGE, CREATED_BY, CREATION_DATE, LAST_UPDATED_BY,\n"
            "                       LAST_UPDATE_DATE)\n"
            "SELECT n, name, salary, active, gender, join_date, email, badge,\n"
            "       'system', '2026-01-01T00:00:00.000000Z', 'system', "
            "'2026-01-01T00:00:00.000000Z'\n"
            "FROM g;\n")


def pb_insert_sql(rows: int) -> str:
    # PocketBase's id: 15 characters of [a-z0-9]; its datetimes: `YYYY-MM-DD HH:MM:SS.mmmZ`.
    return (rows_cte(rows) +
            "INSERT INTO employees (id, name, salary, active, gender, joinDate, email, badge,\n"
            "                       created, updated)\n"
            "SELECT 'e' || printf('%014d', n), name, salary, active, gender, join_date, email,\n"
            "       badge, '2026-01-01 00:00:00.000Z', '2026-01-01 00:00:00.000Z'\n"
            "FROM g")


def pb_id(n: int) -> str:
    return f"e{n:014d}"


DATASOURCE = {
    "name": "Employees",
    "table": "EMPLOYEES",
    "primaryKey": ["empId"],
    "keyGeneration": "auto",
    "attributes": [
        {"code": "empId", "type": "Integer"},
        {"code": "name", "type": "String", "required": True},
        {"code": "salary", "type": "Decimal"},
        {"code": "active", "type": "YN"},
        {"code": "gender", "type": "String"},
        {"code": "joinDate", "type": "Date"},
        {"code": "email", "type": "Email", "column": "EMAIL_ADDRESS"},
        {"code": "badge", "type": "String", "updatable": False},
    ],
    "defaultSort": {"name": 1},
}


def write_app_dir(root: str, rows: int, scripts: bool = False) -> str:
    """Our app: apps/demo's Employees datasource (read from the repository when it is there),
    app uid `bench`, one role with all four actions, SQLite migrations with `rows` rows.
    `scripts`: also the W5/W6 scripts: a second datasource `EmployeesHooked` (the same but for
    its name, so over the same table) with the `postQuery` hook, the function module
    `functions/bench.js`, and their grants on the same role."""
    app = os.path.join(root, APP_UID)
    os.makedirs(os.path.join(app, "datasources"))
    os.makedirs(os.path.join(app, "migrations", "sqlite"))
    demo_ds = os.path.join(os.path.dirname(HERE), "apps", "demo", "datasources", "Employees.json")
    ds = DATASOURCE
    if os.path.exists(demo_ds):
        with open(demo_ds) as f:
            ds = json.load(f)
    with open(os.path.join(app, "app.json"), "w") as f:
        json.dump({"appUid": APP_UID, "name": "Bench",
                   "description": "bench/compare.py: 100k employees"}, f)
    with open(os.path.join(app, "datasources", "Employees.json"), "w") as f:
        json.dump(ds, f, indent=1)
    role = {"roleUid": ROLE_UID, "name": "Bench user", "grants": {
        "Employees": ["query", "insert", "update", "delete"]}}
    if scripts:
        with open(os.path.join(app, "datasources", f"{HOOKED_DS}.json"), "w") as f:
            json.dump({**ds, "name": HOOKED_DS}, f, indent=1)
        with open(os.path.join(app, "datasources", f"{HOOKED_DS}.postQuery.js"), "w") as f:
            f.write(POSTQUERY_JS)
        os.makedirs(os.path.join(app, "functions"))
        with open(os.path.join(app, "functions", f"{FN_MODULE}.js"), "w") as f:
            f.write(FN_JS)
        role["grants"][HOOKED_DS] = ["query"]
        role["functions"] = {FN_MODULE: ["*"]}
    with open(os.path.join(app, "roles.json"), "w") as f:
        json.dump({"roles": [role]}, f)
    with open(os.path.join(app, "migrations", "sqlite",
                           "io_20261128000100_create_employees.sql"), "w") as f:
        f.write(ours_migration(rows))
    return app


# --------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_once(addr, method: str, path: str, body: bytes | None = None,
              headers: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    """One request on a new connection; (status, body), or (0, b"") on a socket error."""
    conn = http.client.HTTPConnection(*addr, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


class Server:
    """`cloudio serve` (kind "ours") or `pocketbase serve` (kind "pb"). `start()` returns once
    the health endpoint answered 200; the clock runs from just before fork/exec."""

    def __init__(self, kind: str, binary: str, data_dir: str, logfile: str,
                 app_dir: str | None = None, extra_args: list[str] | None = None):
        self.kind, self.binary, self.data_dir, self.logfile = kind, binary, data_dir, logfile
        self.app_dir = app_dir
        # Appended to `serve ...`: PocketBase's `--hooksDir DIR`, our `--config FILE`.
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.addr: tuple[str, int] | None = None
        self.t_ready_ms = self.t_line_ms = float("nan")
        self._drain: threading.Thread | None = None
        self._t0 = 0

    @property
    def health_path(self) -> str:
        return "/v1/status" if self.kind == "ours" else "/api/health"

    def start(self, timeout: float = 120.0) -> "Server":
        env = dict(os.environ)
        for k in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "RUST_LOG", "CLOUDIO_DATABASE_URL",
                  "CLOUDIO_DATA_DIR", "CLOUDIO_LISTEN", "CLOUDIO_CONFIG"):
            env.pop(k, None)
        if self.kind == "ours":
            env["CLOUDIO_ADMIN_PASSWORD"] = PASSWORD
            args = [self.binary, "serve", "--data-dir", self.data_dir, "--listen", "127.0.0.1:0"]
            if self.app_dir:
                args += ["--app-dir", self.app_dir]
            ready_re = OURS_READY_RE
        else:
            port = free_port()
            self.addr = ("127.0.0.1", port)
            args = [self.binary, "serve", "--http", f"127.0.0.1:{port}", "--dir", self.data_dir]
            ready_re = PB_READY_RE
        args += self.extra_args
        out = open(self.logfile, "ab")
        out.write(f"--- {' '.join(args)}\n".encode())
        out.flush()
        self._t0 = time.perf_counter_ns()
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE,
            stderr=out if self.kind == "ours" else subprocess.STDOUT, env=env, close_fds=True)
        LIVE.append(self)
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while True:
            m = ready_re.search(ANSI_RE.sub(b"", buf))
            if m:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RuntimeError(f"{self.kind}: no ready line within {timeout}s; "
                                   f"see {self.logfile}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait()
                    out.write(buf)
                    out.close()
                    raise RuntimeError(f"{self.kind} exited with {self.proc.returncode} before "
                                       f"listening; see {self.logfile}")
                buf += chunk
        t_line = time.perf_counter_ns()
        if self.kind == "ours":
            host, port = m.group(1).decode().rsplit(":", 1)
            self.addr = (host, int(port))
        # PocketBase prints its banner just before it accepts; both get the same probe loop.
        code, _ = http_once(self.addr, "GET", self.health_path, timeout=5)
        while code != 200:
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.kind}: health answered {code}; see {self.logfile}")
            time.sleep(0.0005)
            code, _ = http_once(self.addr, "GET", self.health_path, timeout=5)
        t_ready = time.perf_counter_ns()
        self.t_line_ms = (t_line - self._t0) / 1e6
        self.t_ready_ms = (t_ready - self._t0) / 1e6
        out.write(buf)
        out.flush()
        self._drain = threading.Thread(target=_drain, args=(self.proc.stdout, out), daemon=True)
        self._drain.start()
        return self

    def since_start_ms(self) -> float:
        return (time.perf_counter_ns() - self._t0) / 1e6

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://{self.addr[0]}:{self.addr[1]}"

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            if self in LIVE:
                LIVE.remove(self)
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.kind} {self.pid} ignored SIGTERM for {timeout}s; killing it")
            self.kill()
        if self._drain:
            self._drain.join(2)
        if self in LIVE:
            LIVE.remove(self)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self in LIVE:
            LIVE.remove(self)


def _drain(pipe, out) -> None:
    try:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            out.write(chunk)
            out.flush()
    finally:
        out.close()


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[k] = int(v.split()[0])
    return out


class Poller:
    """Calls `sample()` every `every` seconds in a thread, inside a `with` block."""

    def __init__(self, every: float):
        self.every = every
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> bool:
        """One sample; False stops the polling."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set() and self.sample():
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a) -> None:
        self._stop.set()
        self._t.join()


class RssSampler(Poller):
    """Samples VmRSS of a process every `every` seconds; `peak_kb` is the highest."""

    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(every)
        self.pid, self.peak_kb, self.samples = pid, 0, 0

    def sample(self) -> bool:
        try:
            self.peak_kb = max(self.peak_kb, proc_status(self.pid)["VmRSS"])
        except OSError:
            return False
        self.samples += 1
        return True


class RunningSampler(Poller):
    """Polls our `/metrics`; `peak` is the highest `cloudio_script_running` (executions
    holding a runtime at once)."""

    def __init__(self, addr, every: float = 0.02):
        super().__init__(every)
        self.addr, self.peak = addr, 0

    def sample(self) -> bool:
        host, port = self.addr
        try:
            c = http.client.HTTPConnection(host, port, timeout=5)
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
            c.close()
        except OSError:
            return True
        m = re.search(r"^cloudio_script_running (\d+)", text, re.M)
        if m:
            self.peak = max(self.peak, int(m.group(1)))
        return True


# --------------------------------------------------------------------------------------------
# Setting up both systems


def json_req(addr, method, path, obj=None, headers=None) -> tuple[int, dict | None]:
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    status, body = http_once(addr, method, path,
                             None if obj is None else json.dumps(obj).encode(), h)
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, {"raw": body[:300].decode(errors="replace")}


def must(status_body, what: str) -> dict:
    status, body = status_body
    if not 200 <= status < 300:
        raise RuntimeError(f"{what}: HTTP {status}: {json.dumps(body)[:400]}")
    return body


def setup_ours(opts, tmp: str, logdir: str, scripts: bool = False) -> dict:
    """A data directory with app `bench` loaded and its role granted to admin. `scripts`: the
    app with the W5/W6 scripts, in a data directory of its own (`ours-js-data`), so the
    processes of the other phases load no script at all."""
    name = "ours-js" if scripts else "ours"
    data = os.path.join(tmp, f"{name}-data")
    app = write_app_dir(os.path.join(tmp, "apps-js" if scripts else "apps"), opts.rows, scripts)
    logfile = os.path.join(logdir, f"{name}.log")
    log(f"{name}: first start, loading app `{APP_UID}` ({opts.rows} rows by migration)")
    t0 = time.monotonic()
    s = Server("ours", opts.bin, data, logfile, app_dir=app).start(timeout=600)
    load_secs = time.monotonic() - t0
    s.stop()
    p = subprocess.run([opts.bin, "role", "grant", "--user", "admin", "--app", APP_UID,
                        "--role", ROLE_UID, "--data-dir", data],
                       capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "RUST_LOG"})
    if p.returncode != 0:
        raise RuntimeError(f"cloudio role grant failed: {p.stdout}{p.stderr}")
    log(f"{name}: loaded in {load_secs:.1f} s; role `{ROLE_UID}` granted to admin")
    return {"data_dir": data, "app_dir": app, "logfile": logfile, "load_secs": load_secs}


PB_EMPLOYEES = {
    "name": "employees", "type": "base",
    "listRule": '@request.auth.id != ""', "viewRule": '@request.auth.id != ""',
    "createRule": '@request.auth.id != ""', "updateRule": None, "deleteRule": None,
    "fields": [
        {"name": "name", "type": "text", "required": True},
        {"name": "salary", "type": "number"},
        {"name": "active", "type": "text"},
        {"name": "gender", "type": "text"},
        {"name": "joinDate", "type": "text"},
        {"name": "email", "type": "email"},
        {"name": "badge", "type": "text"},
        {"name": "created", "type": "autodate", "onCreate": True, "onUpdate": False},
        {"name": "updated", "type": "autodate", "onCreate": True, "onUpdate": True},
    ],
    "indexes": ["CREATE INDEX idx_employees_name ON employees (name)",
                "CREATE INDEX idx_employees_salary ON employees (salary)"],
}


def setup_pb(opts, tmp: str, logdir: str) -> dict:
    data = os.path.join(tmp, "pb_data")
    logfile = os.path.join(logdir, "pocketbase.log")
    t0 = time.monotonic()
    p = subprocess.run([opts.pocketbase, "superuser", "upsert", PB_SUPERUSER, PASSWORD,
                        "--dir", data], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"pocketbase superuser upsert failed: {p.stdout}{p.stderr}")
    s = Server("pb", opts.pocketbase, data, logfile).start()
    try:
        su = must(json_req(s.addr, "POST", "/api/collections/_superusers/auth-with-password",
                           {"identity": PB_SUPERUSER, "password": PASSWORD}), "PB superuser auth")
        h = {"Authorization": su["token"]}
        must(json_req(s.addr, "POST", "/api/collections", PB_EMPLOYEES, h),
             "PB create collection employees")
        must(json_req(s.addr, "POST", "/api/collections/users/records",
                      {"email": PB_USER, "password": PASSWORD, "passwordConfirm": PASSWORD,
                       "verified": True, "name": "Bench"}, h), "PB create user")
    finally:
        s.stop()
    log(f"pb: collection and user made through the API; inserting {opts.rows} rows into "
        f"pb_data/data.db")
    db = sqlite3.connect(os.path.join(data, "data.db"))
    try:
        with db:
            db.execute(pb_insert_sql(opts.rows))
        n = db.execute("SELECT count(*) FROM employees").fetchone()[0]
    finally:
        db.close()
    if n != opts.rows:
        raise RuntimeError(f"PB employees has {n} rows, expected {opts.rows}")
    load_secs = time.monotonic() - t0
    log(f"pb: loaded in {load_secs:.1f} s")
    return {"data_dir": data, "logfile": logfile, "load_secs": load_secs}


# --------------------------------------------------------------------------------------------
# Logins, requests and checks from Python


def ours_login(addr) -> tuple[str, str]:
    auth = "Token " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    body = must(json_req(addr, "POST", "/v1/auth", {}, {"Authorization": auth}), "ours login")
    return body["jwt"], body["csrf"]


def pb_login(addr) -> str:
    body = must(json_req(addr, "POST", "/api/collections/users/auth-with-password",
                         {"identity": PB_USER, "password": PASSWORD}), "PB login")
    return body["token"]


def ours_query(addr, tok, query: dict, ds: str = "Employees") -> list[dict]:
    jwt, csrf = tok
    body = must(json_req(addr, "POST", f"/v1/api?csrf={csrf}",
                         {"E": {"ds": ds, "query": query}},
                         {"Authorization": f"Bearer {jwt}"}), "ours query")
    return body["data"]["E"]


def ours_fn_path(csrf: str, name: str = FN_NAME) -> str:
    return f"/v1/fn/{APP_UID}/{FN_MODULE}/{name}?csrf={csrf}"


def num(x) -> float | None:
    return None if x is None or x == "" else float(x)


def check_same(ours_addr, ours_tok, pb_addr, pb_tok, rows: int, sample: int) -> dict:
    """Row counts, W1's 10 rows in order, and `sample` random rows by key, compared."""
    res: dict = {}
    # Row counts.
    n_ours = ours_query(ours_addr, ours_tok, {"limit": 1, "count": True})["totalCount"]
    st, pb = json_req(pb_addr, "GET", "/api/collections/employees/records?perPage=1",
                      headers={"Authorization": pb_tok})
    n_pb = must((st, pb), "PB count")["totalItems"]
    res["count"] = {"ours": n_ours, "pb": n_pb, "ok": n_ours == n_pb}
    # W1: names and salaries, in order.
    o = [(r["name"], num(r["salary"])) for r in
         ours_query(ours_addr, ours_tok, W1_OURS_BODY["E"]["query"])["data"]]
    p = [(r["name"], num(r["salary"])) for r in
         must(json_req(pb_addr, "GET", W1_PB_PATH, headers={"Authorization": pb_tok}),
              "PB W1")["items"]]
    res["w1"] = {"ok": o == p and len(o) == 10, "ours": o, "pb": p}
    # W2: a sample of keys, every field.
    rnd = random.Random(12345)
    ids = sorted(rnd.sample(range(1, rows + 1), min(sample, rows)))
    bad = []
    for n in ids:
        d = ours_query(ours_addr, ours_tok, {"filter": [{"empId": {"eq": n}}]})["data"]
        st, r = json_req(pb_addr, "GET", f"/api/collections/employees/records/{pb_id(n)}",
                         headers={"Authorization": pb_tok})
        if len(d) != 1 or st != 200:
            bad.append((n, len(d), st))
            continue
        a = d[0]
        mine = (a["name"], num(a["salary"]), a["active"], a["gender"], a["joinDate"],
                a["email"], a["badge"])
        theirs = (r["name"], num(r["salary"]), r["active"], r["gender"], r["joinDate"],
                  r["email"], r["badge"])
        if mine != theirs:
            bad.append((n, mine, theirs))
    res["w2"] = {"ok": not bad, "checked": len(ids), "mismatches": bad[:5]}
    res["ok"] = res["count"]["ok"] and res["w1"]["ok"] and res["w2"]["ok"]
    return res


def check_scripts(ours_addr, ours_tok, pb_addr, pb_tok) -> dict:
    """W5: both answer the same small JSON, and only to an authenticated caller. W6: both give
    W1's 10 rows, in order, each with `x` = 1; ours gives no `x` without the hook."""
    res: dict = {}
    jwt, csrf = ours_tok
    st, o = json_req(ours_addr, "POST", ours_fn_path(csrf), W5_ARG,
                     {"Authorization": f"Bearer {jwt}"})
    st_anon, _ = json_req(ours_addr, "POST", ours_fn_path(csrf), W5_ARG)
    pst, p = json_req(pb_addr, "POST", W5_PB_PATH, W5_ARG, {"Authorization": pb_tok})
    pst_anon, _ = json_req(pb_addr, "POST", W5_PB_PATH, W5_ARG)
    res["w5"] = {"ours": [st, o], "pb": [pst, p], "anonymous": {"ours": st_anon, "pb": pst_anon},
                 "ok": (st == 200 and o == {"status": "OK", "data": W5_ANSWER} and pst == 200
                        and p == W5_ANSWER and st_anon in (401, 403)
                        and pst_anon in (401, 403))}
    q = W1_OURS_BODY["E"]["query"]
    hooked = ours_query(ours_addr, ours_tok, q, HOOKED_DS)["data"]
    plain = ours_query(ours_addr, ours_tok, q)["data"]
    items = must(json_req(pb_addr, "GET", W1_PB_PATH, headers={"Authorization": pb_tok}),
                 "PB W6")["items"]
    ho = [(r["name"], num(r["salary"]), r.get("x")) for r in hooked]
    hp = [(r["name"], num(r["salary"]), r.get("x")) for r in items]
    pl = [(r["name"], num(r["salary"])) for r in plain]
    res["w6"] = {"ours": ho, "pb": hp, "ok": (ho == hp and len(ho) == 10
                                              and all(x == 1 for _, _, x in ho)
                                              and pl == [(n, sal) for n, sal, _ in ho]
                                              and not any("x" in r for r in plain))}
    res["ok"] = res["w5"]["ok"] and res["w6"]["ok"]
    return res


# --------------------------------------------------------------------------------------------
# wrk


def write_file(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


class Workloads:
    """The wrk invocation (script, path, env) of each workload for each system."""

    def __init__(self, tmp: str, ours_tok: tuple[str, str], pb_tok: str, rows: int):
        jwt, csrf = ours_tok
        d = os.path.join(tmp, "wrk-inputs")
        os.makedirs(d, exist_ok=True)
        f = lambda name, text: write_file(os.path.join(d, name), text)  # noqa: E731
        ours_h = f("ours-api.h", f"Authorization: Bearer {jwt}\nContent-Type: application/json\n")
        pb_h = f("pb-api.h", f"Authorization: {pb_tok}\nContent-Type: application/json\n")
        cred = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        ours_auth_h = f("ours-auth.h", f"Authorization: Token {cred}\n"
                                       "Content-Type: application/json\n")
        json_h = f("json.h", "Content-Type: application/json\n")
        api = f"/v1/api?csrf={csrf}"
        self.spec = {
            ("W1", "ours"): ("compare_fixed.lua", {"BENCH_METHOD": "POST", "BENCH_PATH": api,
                             "BENCH_HEADERS": ours_h,
                             "BENCH_BODY": f("ours-w1.json", json.dumps(W1_OURS_BODY))}),
            ("W1", "pb"): ("compare_fixed.lua", {"BENCH_METHOD": "GET", "BENCH_PATH": W1_PB_PATH,
                           "BENCH_HEADERS": pb_h}),
            ("W2", "ours"): ("compare_pk.lua", {"BENCH_KIND": "ours", "BENCH_PATH": api,
                             "BENCH_HEADERS": ours_h, "BENCH_ROWS": str(rows)}),
            ("W2", "pb"): ("compare_pk.lua", {"BENCH_KIND": "pb", "BENCH_HEADERS": pb_h,
                           "BENCH_ROWS": str(rows)}),
            ("W3", "ours"): ("compare_fixed.lua", {"BENCH_METHOD": "POST", "BENCH_PATH": "/v1/auth",
                             "BENCH_HEADERS": ours_auth_h,
                             "BENCH_BODY": f("ours-w3.json", "{}")}),
            ("W3", "pb"): ("compare_fixed.lua", {
                "BENCH_METHOD": "POST", "BENCH_PATH": "/api/collections/users/auth-with-password",
                "BENCH_HEADERS": json_h,
                "BENCH_BODY": f("pb-w3.json", json.dumps({"identity": PB_USER,
                                                          "password": PASSWORD}))}),
            ("W4", "ours"): ("compare_fixed.lua", {"BENCH_METHOD": "POST", "BENCH_PATH": api,
                             "BENCH_HEADERS": ours_h,
                             "BENCH_BODY": f("ours-w4.json", json.dumps(W4_OURS_BODY))}),
            ("W4", "pb"): ("compare_fixed.lua", {
                "BENCH_METHOD": "POST", "BENCH_PATH": "/api/collections/employees/records",
                "BENCH_HEADERS": pb_h, "BENCH_BODY": f("pb-w4.json", json.dumps(W4_PB_BODY))}),
        }


def fixed_request(d: str, name: str, method: str, path: str, headers: str,
                  body: dict | None = None) -> tuple[str, dict]:
    """The wrk spec (script, env) of one fixed request, its inputs written into directory `d`
    as `<name>.h` (header lines) and `<name>.json` (the body)."""
    os.makedirs(d, exist_ok=True)
    env = {"BENCH_METHOD": method, "BENCH_PATH": path,
           "BENCH_HEADERS": write_file(os.path.join(d, f"{name}.h"), headers)}
    if body is not None:
        env["BENCH_BODY"] = write_file(os.path.join(d, f"{name}.json"), json.dumps(body))
    return "compare_fixed.lua", env


def ours_headers(jwt: str) -> str:
    return f"Authorization: Bearer {jwt}\nContent-Type: application/json\n"


def script_workloads(tmp: str, ours_tok: tuple[str, str], pb_tok: str) -> dict:
    """W5 and W6 for both (ours: the token of the scripts' data directory)."""
    jwt, csrf = ours_tok
    d = os.path.join(tmp, "wrk-inputs")
    pb_h = f"Authorization: {pb_tok}\nContent-Type: application/json\n"
    return {
        ("W5", "ours"): fixed_request(d, "ours-w5", "POST", ours_fn_path(csrf),
                                      ours_headers(jwt), W5_ARG),
        ("W5db", "ours"): fixed_request(d, "ours-w5db", "POST", ours_fn_path(csrf, FN_HELD),
                                        ours_headers(jwt), W5_ARG),
        ("W5", "pb"): fixed_request(d, "pb-w5", "POST", W5_PB_PATH, pb_h, W5_ARG),
        ("W6", "ours"): fixed_request(d, "ours-w6", "POST", f"/v1/api?csrf={csrf}",
                                      ours_headers(jwt), W6_OURS_BODY),
        ("W6", "pb"): fixed_request(d, "pb-w6", "GET", W1_PB_PATH, pb_h),
    }


def run_wrk(server: Server, script: str, env_extra: dict, threads: int, conns: int, secs: float,
            label: str, raw_dir: str, seed: int = 1) -> dict:
    env = dict(os.environ)
    env["BENCH_LUA_DIR"] = LUA_DIR
    env["BENCH_SEED"] = str(seed)
    env.update(env_extra)
    args = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--timeout", "10s", "--latency",
            "-s", os.path.join(LUA_DIR, script), server.base]
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=secs + 120)
    with open(os.path.join(raw_dir, f"wrk-{label}.txt"), "w") as f:
        f.write(" ".join(args) + "\n" + p.stdout + p.stderr)
    m = re.search(r"^RESULT (\{.*\})$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk {label} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    r = json.loads(m.group(1))
    r["non2xx"] = r["err_status"]
    r["sock_errors"] = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
    if r["non2xx"] or r["sock_errors"]:
        log(f"wrk {label}: {r['non2xx']} non-2xx, socket errors connect={r['err_connect']} "
            f"read={r['err_read']} write={r['err_write']} timeout={r['err_timeout']}")
    return r


# --------------------------------------------------------------------------------------------
# The run


def wait_for_quiet(max_wait: float, threshold: float) -> tuple[str, float]:
    t0 = time.monotonic()
    la = load1()
    if la < threshold:
        return loadavg(), 0.0
    log(f"load average {loadavg()}: waiting (up to {max_wait:.0f} s) for the 1-minute figure "
        f"to drop below {threshold}")
    while time.monotonic() - t0 < max_wait:
        time.sleep(5)
        if load1() < threshold:
            break
    waited = time.monotonic() - t0
    if load1() >= threshold:
        log(f"still busy after {waited:.0f} s (load {loadavg()}); measuring anyway, figures "
            f"will be noisy")
    return loadavg(), waited


def run_rounds(opts, servers: dict, spec: dict, workloads, conns: dict, logdir: str,
               errors: dict, loadavgs: dict) -> dict:
    """Each workload, ours then PocketBase, `rounds` times (a warm-up before each measured
    run); {(workload, kind): [wrk result of each round]}. Errors are added to `errors`."""
    phases: dict = {}
    for w in workloads:
        loadavgs[w] = loadavg()
        for rnd in range(opts.rounds):
            for kind in ("ours", "pb"):
                script, env = spec[(w, kind)]
                label = f"{w}-{kind}-r{rnd + 1}"
                if opts.warmup > 0:
                    wu = run_wrk(servers[kind], script, env, opts.threads, conns[w],
                                 opts.warmup, label + "-warmup", logdir, seed=1000 + rnd)
                    errors[kind] += wu["non2xx"] + wu["sock_errors"]
                log(f"{label}: wrk -c{conns[w]} {opts.duration}s (load {loadavg()})")
                r = run_wrk(servers[kind], script, env, opts.threads, conns[w],
                            opts.duration, label, logdir, seed=rnd + 1)
                r["loadavg"] = loadavg()
                errors[kind] += r["non2xx"] + r["sock_errors"]
                phases.setdefault((w, kind), []).append(r)
                log(f"{label}: {r['rps']:.0f} req/s, p50 {r['p50_us']} us, p99 "
                    f"{r['p99_us']} us, errors {r['non2xx']}+{r['sock_errors']}")
    return phases


def measure_scripts(opts, tmp: str, logdir: str, js: dict, pb: dict, pb_tok: str,
                    loadavgs: dict) -> dict:
    """W5 and W6 on processes that load the scripts (ours: the `ours-js` data directory;
    PocketBase: `--hooksDir`), then our peak RSS with as many script workers as connections."""
    out: dict = {"conns": opts.script_conns, "pb_hooks_pool": opts.pb_hooks_pool}

    def ours(extra=None) -> Server:
        return Server("ours", opts.bin, js["data_dir"], js["logfile"], extra_args=extra)

    def pbs() -> Server:
        pool = ["--hooksPool", str(opts.pb_hooks_pool)] if opts.pb_hooks_pool else []
        return Server("pb", opts.pocketbase, pb["data_dir"], pb["logfile"],
                      extra_args=["--hooksDir", pb["hooks_dir"]] + pool)

    # Login (Argon2 / bcrypt: kept out of the measured processes' memory) and checks.
    o, p = ours().start(), pbs().start()
    try:
        tok = ours_login(o.addr)
        out["check"] = check_scripts(o.addr, tok, p.addr, pb_tok)
        out["workers"] = script_workers(o.pid)
    finally:
        o.stop()
        p.stop()
    log(f"scripts: checks W5 same: {out['check']['w5']['ok']}, W6 same: "
        f"{out['check']['w6']['ok']}")
    if not out["check"]["ok"]:
        log(f"MISMATCH: {json.dumps(out['check'])[:2000]}")

    # W5, W6: fresh processes, their RSS sampled all along.
    spec = script_workloads(tmp, tok, pb_tok)
    errors = {"ours": 0, "pb": 0}
    o, p = ours().start(), pbs().start()
    servers = {"ours": o, "pb": p}
    try:
        out["rss_start"] = {k: proc_status(s.pid) for k, s in servers.items()}
        with RssSampler(o.pid) as so, RssSampler(p.pid) as sp:
            phases = run_rounds(opts, servers, spec, ("W5", "W6"),
                                {"W5": opts.script_conns, "W6": opts.script_conns}, logdir,
                                errors, loadavgs)
        out["rss_end"] = {k: proc_status(s.pid) for k, s in servers.items()}
        out["peak_sampled_kb"] = {"ours": so.peak_kb, "pb": sp.peak_kb}
        out["threads_end"] = {k: proc_status(s.pid)["Threads"] for k, s in servers.items()}
    finally:
        o.stop()
        p.stop()
    out["phases"] = {f"{w}/{k}": v for (w, k), v in phases.items()}
    log(f"scripts: peak RSS ours {out['rss_end']['ours']['VmHWM']} kB, PB "
        f"{out['rss_end']['pb']['VmHWM']} kB (VmHWM)")

    # Our pool runs one execution per core and queues the rest: with `[scripts] workers` = the
    # connections (and as many requests of one user at once), every connection can have an
    # execution (a QuickJS runtime) of its own.
    n = opts.script_workers_peak
    if n:
        cfg = write_file(os.path.join(tmp, f"ours-{n}-workers.toml"),
                         f"user_max_inflight = {n}\n[scripts]\nworkers = {n}\n")
        loadavgs["scripts_workers"] = loadavg()
        s = ours(["--config", cfg]).start()
        try:
            script, env = spec[("W5", "ours")]
            before = proc_status(s.pid)
            workers = script_workers(s.pid)
            log(f"scripts-{n}-workers: W5 wrk -c{opts.script_conns} {opts.duration}s "
                f"({workers} script threads)")
            with RssSampler(s.pid) as sampler:
                r = run_wrk(s, script, env, opts.threads, opts.script_conns, opts.duration,
                            f"W5-ours-{n}-workers", logdir)
            after = proc_status(s.pid)
            errors["ours"] += r["non2xx"] + r["sock_errors"]
            r.update({"workers": n, "script_threads": workers, "rss_before": before,
                      "rss_after": after, "peak_sampled_kb": sampler.peak_kb})
            out["many_workers"] = r
            log(f"scripts-{n}-workers: {r['rps']:.0f} req/s, VmHWM {after['VmHWM']} kB, errors "
                f"{r['non2xx']}+{r['sock_errors']}")
            # W5 runs whole on the request's threads (a couple of executions at once); with a
            # `db` call each execution moves to the pool's threads and waits there, so up to
            # `n` run at once, each in a runtime of its own.
            script, env = spec[("W5db", "ours")]
            log(f"scripts-{n}-workers: W5 with a db call, wrk -c{opts.script_conns} "
                f"{opts.duration}s")
            with RssSampler(s.pid) as sampler, RunningSampler(s.addr) as running:
                r = run_wrk(s, script, env, opts.threads, opts.script_conns, opts.duration,
                            f"W5db-ours-{n}-workers", logdir)
            after = proc_status(s.pid)
            errors["ours"] += r["non2xx"] + r["sock_errors"]
            r.update({"workers": n, "rss_after": after, "peak_sampled_kb": sampler.peak_kb,
                      "peak_running": running.peak})
            out["many_workers_db"] = r
            log(f"scripts-{n}-workers: W5 with a db call {r['rps']:.0f} req/s, up to "
                f"{running.peak} executions at once, VmHWM {after['VmHWM']} kB, errors "
                f"{r['non2xx']}+{r['sock_errors']}")
        finally:
            s.stop()
    out["errors"] = errors
    return out


def script_workers(pid: int) -> int:
    """Threads of `pid` named `script-<n>` (our script pool's workers)."""
    n = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                if re.fullmatch(r"script-\d+", f.read().strip()):
                    n += 1
    except OSError:
        pass
    return n


def measure(opts, tmp: str) -> dict:
    logdir = os.path.join(tmp, "logs")
    os.makedirs(logdir)
    res: dict = {"loadavg": {}}
    ours_setup = setup_ours(opts, tmp, logdir)
    pb_setup = setup_pb(opts, tmp, logdir)
    res["load_secs"] = {"ours": ours_setup["load_secs"], "pb": pb_setup["load_secs"]}
    if opts.scripts:
        js_setup = setup_ours(opts, tmp, logdir, scripts=True)
        # Not pb_data/../pb_hooks (PocketBase's default): only the script phases' processes
        # load these, with --hooksDir.
        pb_setup["hooks_dir"] = os.path.join(tmp, "pb-js-hooks")
        os.makedirs(pb_setup["hooks_dir"])
        write_file(os.path.join(pb_setup["hooks_dir"], "bench.pb.js"), PB_HOOKS_JS)

    def ours_server() -> Server:
        return Server("ours", opts.bin, ours_setup["data_dir"], ours_setup["logfile"])

    def pb_server() -> Server:
        return Server("pb", opts.pocketbase, pb_setup["data_dir"], pb_setup["logfile"])

    # Logins (tokens kept for the whole run) and the correctness checks.
    o, p = ours_server().start(), pb_server().start()
    try:
        ours_tok, pb_tok = ours_login(o.addr), pb_login(p.addr)
        res["check_before"] = check_same(o.addr, ours_tok, p.addr, pb_tok, opts.rows,
                                         opts.check_sample)
    finally:
        o.stop()
        p.stop()
    log(f"checks: counts {res['check_before']['count']}, W1 same: "
        f"{res['check_before']['w1']['ok']}, W2 sample same: {res['check_before']['w2']['ok']}")
    if not res["check_before"]["ok"]:
        log(f"MISMATCH: {json.dumps(res['check_before'])[:2000]}")

    if not opts.no_wait:
        res["loadavg"]["before_measuring"], res["waited_secs"] = wait_for_quiet(
            opts.max_wait, opts.load_threshold)
    else:
        res["loadavg"]["before_measuring"] = loadavg()

    # 1. Startup (warm restart over the loaded data), alternating; then, on each start, the time
    # to the first W1 answer (token from before the restart) and the idle RSS after it.
    ours_w1 = json.dumps(W1_OURS_BODY).encode()
    st: dict = {k: {"ready": [], "line": [], "first_w1": [], "idle": []} for k in ("ours", "pb")}
    log(f"startup x{opts.runs}, alternating")
    for i in range(opts.runs):
        for kind in ("ours", "pb"):
            s = (ours_server if kind == "ours" else pb_server)().start()
            try:
                if kind == "ours":
                    code, _ = http_once(s.addr, "POST", f"/v1/api?csrf={ours_tok[1]}", ours_w1,
                                        {"Authorization": f"Bearer {ours_tok[0]}",
                                         "Content-Type": "application/json"})
                else:
                    code, _ = http_once(s.addr, "GET", W1_PB_PATH, None,
                                        {"Authorization": pb_tok})
                t_w1 = s.since_start_ms()
                if code != 200:
                    raise RuntimeError(f"{kind}: first W1 after restart answered {code}")
                for _ in range(3):
                    assert http_once(s.addr, "GET", s.health_path)[0] == 200
                time.sleep(opts.settle)
                st[kind]["idle"].append(proc_status(s.pid))
                st[kind]["ready"].append(s.t_ready_ms)
                st[kind]["line"].append(s.t_line_ms)
                st[kind]["first_w1"].append(t_w1)
            finally:
                s.stop()
    res["startup"] = st

    # 2. Throughput: each workload, ours then PocketBase, `rounds` times, on two long-lived
    # servers (both up the whole time; the idle one sleeps).
    o, p = ours_server().start(), pb_server().start()
    servers = {"ours": o, "pb": p}
    wl = Workloads(tmp, ours_tok, pb_tok, opts.rows)
    conns = {"W1": opts.read_conns, "W2": opts.read_conns, "W3": opts.write_conns,
             "W4": opts.write_conns}
    errors = {"ours": 0, "pb": 0}
    peak: dict = {}
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        phases = run_rounds(opts, servers, wl.spec, ("W1", "W2", "W3", "W4"), conns, logdir,
                            errors, res["loadavg"])
        res["rss_after_load"] = {k: proc_status(s.pid) for k, s in servers.items()}
        res["check_after"] = check_same(o.addr, ours_tok, p.addr, pb_tok, opts.rows,
                                        opts.check_sample // 2)
        # 3. Peak RSS in the same long-lived processes (they have served W1-W4, logins
        # included): W1 at `peak_conns` connections, then the RSS once idle again.
        res["loadavg"]["peak"] = loadavg()
        for kind in ("ours", "pb"):
            s = servers[kind]
            script, env = wl.spec[("W1", kind)]
            before = proc_status(s.pid)
            log(f"peak-{kind}: W1 wrk -c{opts.peak_conns} {opts.duration}s (long-lived process)")
            with RssSampler(s.pid) as sampler:
                r = run_wrk(s, script, env, opts.threads, opts.peak_conns, opts.duration,
                            f"peak-{kind}", logdir)
            after = proc_status(s.pid)
            time.sleep(opts.settle_after)
            idle_after = proc_status(s.pid)
            r.update({"rss_before": before, "rss_after": after, "rss_idle_after": idle_after,
                      "peak_sampled_kb": sampler.peak_kb, "samples": sampler.samples})
            errors[kind] += r["non2xx"] + r["sock_errors"]
            peak[kind] = r
            log(f"peak-{kind}: sampled peak {sampler.peak_kb} kB, VmHWM {after['VmHWM']} kB, "
                f"{r['rps']:.0f} req/s, errors {r['non2xx']}+{r['sock_errors']}; "
                f"{idle_after['VmRSS']} kB idle {opts.settle_after:g} s later")
    finally:
        o.stop()
        p.stop()
    res["phases"] = {f"{w}/{k}": v for (w, k), v in phases.items()}
    res["peak"] = peak
    res["nofile"] = old
    res["errors"] = errors

    # 4. Server-side JavaScript: W5 and W6, and the RSS with scripts running.
    if opts.scripts:
        res["scripts"] = measure_scripts(opts, tmp, logdir, js_setup, pb_setup, pb_tok,
                                         res["loadavg"])
    res["loadavg"]["end"] = loadavg()
    return res


# --------------------------------------------------------------------------------------------
# Report


def machine_facts() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_kb / 1048576, 1),
            "kernel": os.uname().release}


def tool_versions(opts) -> dict:
    def first_line(args):
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=20)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"
    with open(opts.bin, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:12]
    return {"pocketbase": first_line([opts.pocketbase, "--version"]),
            "wrk": first_line(["wrk", "-v"]),
            "cloudio": f"sha256 {digest}, {os.path.getsize(opts.bin) / 1048576:.1f} MiB"
                       + git_info()}


def git_info() -> str:
    root = os.path.dirname(HERE)
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], env=env,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "-uno"], env=env,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return (f", work tree at {head}" + (" with uncommitted changes" if dirty else "")) if head \
        else ""


def mean(xs):
    return sum(xs) / len(xs)


def fmt_lat(us: float) -> str:
    return f"{us / 1000:.1f} ms" if us >= 10000 else f"{us / 1000:.2f} ms"


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def figures(res: dict) -> dict:
    """The headline numbers of one run, flat (used for the table and the run-to-run spread)."""
    fig: dict = {}
    for w in ("W1", "W2", "W3", "W4"):
        for k in ("ours", "pb"):
            ph = res["phases"][f"{w}/{k}"]
            fig[f"{w}.rps.{k}"] = mean([x["rps"] for x in ph])
            fig[f"{w}.p50.{k}"] = mean([x["p50_us"] for x in ph])
            fig[f"{w}.p99.{k}"] = mean([x["p99_us"] for x in ph])
            fig[f"{w}.rps_rounds.{k}"] = [round(x["rps"]) for x in ph]
    for k in ("ours", "pb"):
        s = res["startup"][k]
        fig[f"startup.{k}"] = statistics.median(s["ready"])
        fig[f"startup_min.{k}"] = min(s["ready"])
        fig[f"startup_w1.{k}"] = statistics.median(s["first_w1"])
        fig[f"startup_line.{k}"] = statistics.median(s["line"])
        fig[f"idle_rss.{k}"] = statistics.median([x["VmRSS"] for x in s["idle"]])
        fig[f"peak_rss.{k}"] = max(res["peak"][k]["peak_sampled_kb"],
                                   res["peak"][k]["rss_after"]["VmRSS"])
        fig[f"peak_hwm.{k}"] = res["peak"][k]["rss_after"]["VmHWM"]
        fig[f"idle_after.{k}"] = res["peak"][k]["rss_idle_after"]["VmRSS"]
        fig[f"peak_rps.{k}"] = res["peak"][k]["rps"]
        fig[f"peak_p99.{k}"] = res["peak"][k]["p99_us"]
        fig[f"rss_after_load.{k}"] = res["rss_after_load"][k]["VmRSS"]
        fig[f"errors.{k}"] = res["errors"][k]
    sc = res.get("scripts")
    if sc:
        for w in ("W5", "W6"):
            for k in ("ours", "pb"):
                ph = sc["phases"][f"{w}/{k}"]
                fig[f"{w}.rps.{k}"] = mean([x["rps"] for x in ph])
                fig[f"{w}.p50.{k}"] = mean([x["p50_us"] for x in ph])
                fig[f"{w}.p99.{k}"] = mean([x["p99_us"] for x in ph])
                fig[f"{w}.rps_rounds.{k}"] = [round(x["rps"]) for x in ph]
        for k in ("ours", "pb"):
            fig[f"script_rss.{k}"] = max(sc["peak_sampled_kb"][k], sc["rss_end"][k]["VmHWM"])
            fig[f"script_errors.{k}"] = sc["errors"][k]
        if sc.get("many_workers"):
            mw = sc["many_workers"]
            fig["script_rss_many.ours"] = max(mw["peak_sampled_kb"], mw["rss_after"]["VmHWM"])
        if sc.get("many_workers_db"):
            mw = sc["many_workers_db"]
            fig["script_rss_many_db.ours"] = max(mw["peak_sampled_kb"],
                                                 mw["rss_after"]["VmHWM"])
    return fig


def pf(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf") if a else float("nan")


def rows_for(res: dict, opts_d: dict) -> list[tuple]:
    f = figures(res)
    rows = []
    names = {"W1": "W1 filtered list", "W2": "W2 key lookup", "W3": "W3 password login",
             "W4": "W4 single-row insert"}
    for w in ("W1", "W2", "W3", "W4"):
        c = opts_d["read_conns"] if w in ("W1", "W2") else opts_d["write_conns"]
        o, p = f[f"{w}.rps.ours"], f[f"{w}.rps.pb"]
        t = RATIO_TARGET[w]
        rows.append((f"{names[w]} req/s (-c{c}; rounds {f[f'{w}.rps_rounds.ours']} / "
                     f"{f[f'{w}.rps_rounds.pb']})", f"{o:.0f}", f"{p:.0f}", f"{ratio(o, p):.2f}x",
                     f">= {t:g}x", pf(ratio(o, p) >= t)))
        o99, p99 = f[f"{w}.p99.ours"], f[f"{w}.p99.pb"]
        lat_ok = o99 <= p99 if w != "W3" else None
        rows.append((f"  {w} latency p50 / p99",
                     f"{fmt_lat(f[f'{w}.p50.ours'])} / {fmt_lat(o99)}",
                     f"{fmt_lat(f[f'{w}.p50.pb'])} / {fmt_lat(p99)}", f"{ratio(o99, p99):.2f}x",
                     "p99 <= PB" if lat_ok is not None else "", pf(lat_ok) if lat_ok is not None
                     else ""))
    n = len(res["startup"]["ours"]["ready"])
    rows.append((f"startup to first 200, warm restart (median of {n})",
                 f"{f['startup.ours']:.1f} ms", f"{f['startup.pb']:.1f} ms",
                 f"{ratio(f['startup.ours'], f['startup.pb']):.2f}x", f"< {STARTUP_TARGET_MS:g} ms",
                 pf(f["startup.ours"] < STARTUP_TARGET_MS)))
    rows.append(("  of which min", f"{f['startup_min.ours']:.1f} ms",
                 f"{f['startup_min.pb']:.1f} ms", "", "", ""))
    rows.append(("  of which to the ready line (median)", f"{f['startup_line.ours']:.1f} ms",
                 f"{f['startup_line.pb']:.1f} ms", "", "", ""))
    rows.append(("  to the first W1 answer (median)", f"{f['startup_w1.ours']:.1f} ms",
                 f"{f['startup_w1.pb']:.1f} ms",
                 f"{ratio(f['startup_w1.ours'], f['startup_w1.pb']):.2f}x", "", ""))
    rows.append(("idle RSS (warm start + 1 W1 + 3 health, median)", mb(f["idle_rss.ours"]),
                 mb(f["idle_rss.pb"]), f"{ratio(f['idle_rss.ours'], f['idle_rss.pb']):.2f}x",
                 f"< {IDLE_RSS_TARGET_MB:g} MB",
                 pf(f["idle_rss.ours"] / 1024 < IDLE_RSS_TARGET_MB)))
    pc = opts_d["peak_conns"]
    rows.append((f"peak RSS, W1 at -c{pc} (the long-lived process, after W1-W4)",
                 mb(f["peak_rss.ours"]),
                 mb(f["peak_rss.pb"]), f"{ratio(f['peak_rss.ours'], f['peak_rss.pb']):.2f}x",
                 f"< {PEAK_RSS_TARGET_MB:g} MB",
                 pf(f["peak_rss.ours"] / 1024 < PEAK_RSS_TARGET_MB)))
    rows.append((f"  W1 at -c{pc}: req/s, p99", f"{f['peak_rps.ours']:.0f}, "
                 f"{fmt_lat(f['peak_p99.ours'])}", f"{f['peak_rps.pb']:.0f}, "
                 f"{fmt_lat(f['peak_p99.pb'])}", f"{ratio(f['peak_rps.ours'], f['peak_rps.pb']):.2f}x",
                 "", ""))
    rows.append(("RSS after the W1-W4 phases", mb(f["rss_after_load.ours"]),
                 mb(f["rss_after_load.pb"]), "", "", ""))
    if "idle_after.ours" in f:
        sa = opts_d.get("settle_after", 5.0)
        rows.append((f"RSS idle {sa:g} s after the -c{pc} peak (same process)",
                     mb(f["idle_after.ours"]), mb(f["idle_after.pb"]),
                     f"{ratio(f['idle_after.ours'], f['idle_after.pb']):.2f}x",
                     f"< {IDLE_RSS_TARGET_MB:g} MB",
                     pf(f["idle_after.ours"] / 1024 < IDLE_RSS_TARGET_MB)))
        rows.append(("  lifetime peak (VmHWM) of that process", mb(f["peak_hwm.ours"]),
                     mb(f["peak_hwm.pb"]), "", "", ""))
    rows.append(("errors, all phases (non-2xx + socket)", str(f["errors.ours"]),
                 str(f["errors.pb"]), "", "0", pf(f["errors.ours"] == 0 and f["errors.pb"] == 0)))
    cb, ca = res["check_before"], res["check_after"]
    rows.append((f"same rows: counts, W1 10 rows in order, W2 {cb['w2']['checked']}+"
                 f"{ca['w2']['checked']} keys", f"{cb['count']['ours']} rows",
                 f"{cb['count']['pb']} rows", "", "identical",
                 pf(cb["ok"] and ca["w1"]["ok"] and ca["w2"]["ok"])))
    if res.get("scripts"):
        rows += script_rows(res, f, opts_d)
    return rows


def script_rows(res: dict, f: dict, opts_d: dict) -> list[tuple]:
    """The rows of W5, W6 and the script RSS (after the rows of W1-W4, which stay as they
    were)."""
    sc = res["scripts"]
    c = sc["conns"]
    rows = []
    names = {"W5": "W5 JS endpoint (fn / routerAdd)",
             "W6": "W6 W1 + hook adding a field (postQuery / onRecordEnrich)"}
    for w in ("W5", "W6"):
        o, p = f[f"{w}.rps.ours"], f[f"{w}.rps.pb"]
        t = RATIO_TARGET[w]
        rows.append((f"{names[w]} req/s (-c{c}; rounds {f[f'{w}.rps_rounds.ours']} / "
                     f"{f[f'{w}.rps_rounds.pb']})", f"{o:.0f}", f"{p:.0f}", f"{ratio(o, p):.2f}x",
                     f">= {t:g}x", pf(ratio(o, p) >= t)))
        o99, p99 = f[f"{w}.p99.ours"], f[f"{w}.p99.pb"]
        rows.append((f"  {w} latency p50 / p99",
                     f"{fmt_lat(f[f'{w}.p50.ours'])} / {fmt_lat(o99)}",
                     f"{fmt_lat(f[f'{w}.p50.pb'])} / {fmt_lat(p99)}", f"{ratio(o99, p99):.2f}x",
                     "p99 <= PB", pf(o99 <= p99)))
    if "W1.rps.ours" in f:
        rows.append(("  W6 / W1 req/s: the hook's cost in each system (W1 above)",
                     f"{ratio(f['W6.rps.ours'], f['W1.rps.ours']):.2f}x",
                     f"{ratio(f['W6.rps.pb'], f['W1.rps.pb']):.2f}x", "", "", ""))
    workers = sc.get("workers") or "?"
    rows.append((f"peak RSS, W5+W6 at -c{c} (fresh process; ours {workers} script workers)",
                 mb(f["script_rss.ours"]), mb(f["script_rss.pb"]),
                 f"{ratio(f['script_rss.ours'], f['script_rss.pb']):.2f}x",
                 f"< {SCRIPT_RSS_TARGET_MB:g} MB",
                 pf(f["script_rss.ours"] / 1024 < SCRIPT_RSS_TARGET_MB)))
    mw = sc.get("many_workers")
    if mw:
        rows.append((f"peak RSS, W5 at -c{c} with [scripts] workers = {mw['workers']} "
                     f"({mw['rps']:.0f} req/s, p99 {fmt_lat(mw['p99_us'])})",
                     mb(f["script_rss_many.ours"]), "", "", f"< {SCRIPT_RSS_TARGET_MB:g} MB",
                     pf(f["script_rss_many.ours"] / 1024 < SCRIPT_RSS_TARGET_MB)))
    mw = sc.get("many_workers_db")
    if mw:
        rows.append((f"  the same process, W5 with a db call: up to {mw['peak_running']} "
                     f"executions at once ({mw['rps']:.0f} req/s, p99 {fmt_lat(mw['p99_us'])})",
                     mb(f["script_rss_many_db.ours"]), "", "",
                     f"< {SCRIPT_RSS_TARGET_MB:g} MB",
                     pf(f["script_rss_many_db.ours"] / 1024 < SCRIPT_RSS_TARGET_MB)))
    rows.append(("errors, W5-W6 phases (non-2xx + socket)", str(f["script_errors.ours"]),
                 str(f["script_errors.pb"]), "", "0",
                 pf(f["script_errors.ours"] == 0 and f["script_errors.pb"] == 0)))
    ck = sc["check"]
    rows.append(("same answers: W5 JSON (401 without a token), W6 W1's 10 rows + x = 1",
                 "W5 " + ("same" if ck["w5"]["ok"] else "differs"),
                 "W6 " + ("same" if ck["w6"]["ok"] else "differs"), "", "identical",
                 pf(ck["ok"])))
    return rows


def table(rows: list[tuple]) -> str:
    head = ("figure", "ours", "PocketBase", "ours/PB", "target", "result")
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa
    return "\n".join([line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|"]
                     + [line(r) for r in rows])


def report(doc: dict) -> str:
    res, m, o, v = doc["results"], doc["machine"], doc["opts"], doc["versions"]
    la = res["loadavg"]
    out = [f"# cloudio vs PocketBase, {doc['started']}", "",
           f"- machine: {m['nproc']} CPUs, {m['cpu']}, {m['mem_gib']} GiB RAM, Linux {m['kernel']}",
           f"- cloudio: {v['cloudio']}; PocketBase: {v['pocketbase']}; {v['wrk']}",
           f"- data: {o['rows']} employees in each (loaded in {res['load_secs']['ours']:.1f} s "
           f"ours by migration, {res['load_secs']['pb']:.1f} s PocketBase by API + SQLite)",
           f"- wrk -t{o['threads']}, {o['duration']} s per phase after {o['warmup']} s warm-up, "
           f"{o['rounds']} rounds per workload alternating ours, PB, ours, PB...; wrk and the "
           f"servers share the {m['nproc']} CPUs",
           "- load average (1/5/15 min): " + "; ".join(f"{k}: {x}" for k, x in la.items())
           + (f" (waited {res.get('waited_secs', 0):.0f} s for < {o['load_threshold']})"
              if "waited_secs" in res else ""),
           ] + script_header(res) + ["", table(rows_for(res, o)), ""]
    cb = res["check_before"]
    out.append(f"W1 rows (both): {cb['w1']['ours'][:3]} ... {cb['w1']['ours'][-1:]}")
    if not cb["w1"]["ok"]:
        out.append(f"W1 PocketBase rows: {cb['w1']['pb']}")
    if not cb["w2"]["ok"]:
        out.append(f"W2 mismatches: {cb['w2']['mismatches']}")
    sc = res.get("scripts")
    if sc and not sc["check"]["ok"]:
        out.append(f"W5/W6 answers: {json.dumps(sc['check'])[:1500]}")
    out.append("startup samples (ms): ours " + str([round(x, 1) for x in
               res["startup"]["ours"]["ready"]]) + ", PB " +
               str([round(x, 1) for x in res["startup"]["pb"]["ready"]]))
    return "\n".join(out) + "\n"


def script_header(res: dict) -> list[str]:
    sc = res.get("scripts")
    if not sc:
        return []
    return [f"- W5/W6: fresh processes that load scripts (ours: app `{APP_UID}` with "
            f"`functions/{FN_MODULE}.js` and `{HOOKED_DS}.postQuery.js`, "
            f"{sc.get('workers') or '?'} script workers, the default: one per core; "
            "PocketBase: `--hooksDir` with one `bench.pb.js`, "
            + (f"`--hooksPool {sc['pb_hooks_pool']}`" if sc.get("pb_hooks_pool")
               else "JSVM pool at its default (15)") + "); "
            f"W5 POSTs `{json.dumps(W5_ARG)}` to both (ours `/v1/fn/{APP_UID}/{FN_MODULE}/"
            f"{FN_NAME}`, PocketBase `{W5_PB_PATH}` behind `$apis.requireAuth()`), W6 is W1 "
            f"(ours on `{HOOKED_DS}`)"]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


SPREAD_KEYS = [("W1.rps", "W1 req/s"), ("W2.rps", "W2 req/s"), ("W3.rps", "W3 logins/s"),
               ("W4.rps", "W4 inserts/s"), ("W1.p99", "W1 p99"), ("W2.p99", "W2 p99"),
               ("W3.p99", "W3 p99"), ("W4.p99", "W4 p99"), ("startup", "startup"),
               ("idle_rss", "idle RSS"), ("peak_rss", "peak RSS"),
               ("W5.rps", "W5 req/s"), ("W6.rps", "W6 req/s"), ("W5.p99", "W5 p99"),
               ("W6.p99", "W6 p99"), ("script_rss", "peak RSS, W5+W6")]


def results_md(paths: list[str]) -> str:
    """The tables of the runs given (JSON files written by this script) and the spread."""
    docs = []
    for pth in paths:
        with open(pth) as f:
            docs.append(json.load(f))
    m = docs[0]["machine"]
    out = ["# cloudio vs PocketBase: results", "",
           "Written by `python3 bench/compare.py --results RUN1.json RUN2.json` from two full "
           "runs of `bench/compare.sh`.", "",
           f"Machine: `nproc` = {m['nproc']}, {m['cpu']}, {m['mem_gib']} GiB RAM, Linux "
           f"{m['kernel']}. wrk runs on the same machine and shares the CPUs with the server "
           "under test.", ""]
    for i, d in enumerate(docs, 1):
        out += [f"## Run {i}", "", report(d).split("\n", 2)[2].strip(), ""]
    figs = [figures(d["results"]) for d in docs]
    out += ["## Run-to-run spread", "",
            "| figure | " + " | ".join(f"run {i}" for i in range(1, len(docs) + 1))
            + " | spread (max-min)/mean | ratio ours/PB per run |",
            "|---|" + "---|" * len(docs) + "---|---|"]
    for key, label in SPREAD_KEYS:
        if not all(f"{key}.ours" in fg for fg in figs):
            continue  # runs without the script phases
        for k, who in (("ours", "ours"), ("pb", "PB")):
            xs = [fg[f"{key}.{k}"] for fg in figs]
            unit = (lambda x: f"{x:.0f}") if key.endswith("rps") else \
                (lambda x: fmt_lat(x)) if key.endswith("p99") else \
                (lambda x: f"{x:.1f} ms") if key == "startup" else (lambda x: mb(x))
            spread = (max(xs) - min(xs)) / mean(xs) * 100 if mean(xs) else 0
            ratios = ", ".join(f"{ratio(fg[f'{key}.ours'], fg[f'{key}.pb']):.2f}x" for fg in figs) \
                if k == "ours" else ""
            out.append(f"| {label}, {who} | " + " | ".join(unit(x) for x in xs)
                       + f" | {spread:.0f}% | {ratios} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="/work/target/release/cloudio")
    ap.add_argument("--pocketbase", default="pocketbase", help="the pocketbase binary")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured phase")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    ap.add_argument("--rounds", type=int, default=2, help="ours+PB pairs per workload")
    ap.add_argument("--runs", type=int, default=7, help="warm restarts of each (startup)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--read-conns", type=int, default=64, help="connections for W1, W2")
    ap.add_argument("--write-conns", type=int, default=16, help="connections for W3, W4")
    ap.add_argument("--peak-conns", type=int, default=1000)
    ap.add_argument("--script-conns", type=int, default=64,
                    help="connections for W5, W6 (server-side JavaScript)")
    ap.add_argument("--script-workers-peak", type=int, default=64, metavar="N",
                    help="last phase: W5 on our server configured with N script workers "
                         "([scripts] workers), its peak RSS; 0 skips it")
    ap.add_argument("--pb-hooks-pool", type=int, default=0, metavar="N",
                    help="PocketBase's --hooksPool for W5/W6 (default: not given, its default "
                         "of 15 prewarmed JS runtimes)")
    ap.add_argument("--no-scripts", dest="scripts", action="store_false",
                    help="skip W5, W6 and the script RSS (the run of W1-W4 only)")
    ap.add_argument("--check-sample", type=int, default=200, help="keys compared for W2")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds before idle RSS")
    ap.add_argument("--settle-after", type=float, default=5.0,
                    help="seconds after the peak load before the idle-after-load RSS")
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait for the load average to drop (smoke runs)")
    ap.add_argument("--load-threshold", type=float, default=1.0)
    ap.add_argument("--max-wait", type=float, default=600)
    ap.add_argument("--smoke", action="store_true",
                    help="a quick check of the machinery: 2 s phases, 1 round, 3 restarts, "
                         "no waiting; figures are not for quoting")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--results", nargs="+", metavar="RUN.json",
                    help="write bench/RESULTS.md-style tables from these runs and exit")
    opts = ap.parse_args()

    if opts.results:
        print(results_md(opts.results), end="")
        return 0
    if opts.smoke:
        opts.duration, opts.warmup, opts.rounds, opts.runs = 2, 1, 1, 3
        opts.no_wait, opts.check_sample = True, 40
    for exe, what in ((opts.bin, "cloudio"), (shutil.which(opts.pocketbase) or opts.pocketbase,
                                              "pocketbase")):
        if not os.access(exe, os.X_OK):
            log(f"no executable {what} at {exe}")
            return 2
    opts.pocketbase = shutil.which(opts.pocketbase) or opts.pocketbase
    if not shutil.which("wrk"):
        log("wrk is not installed (apt-get install -y wrk)")
        return 2
    # 1,000 connections: wrk needs a descriptor each, and so does the server.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < opts.peak_conns + 200:
        log(f"warning: open-file limit {want} is low for -c{opts.peak_conns}")

    signal.signal(signal.SIGTERM, _interrupt)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    tmp = tempfile.mkdtemp(prefix="cloudio-compare.")
    log(f"working in {tmp}")
    private_bin = os.path.join(tmp, "cloudio")
    shutil.copy2(opts.bin, private_bin)
    versions = tool_versions(opts)
    opts.bin = private_bin
    try:
        res = measure(opts, tmp)
    finally:
        for s in list(LIVE):
            log(f"killing {s.kind} {s.pid} left running")
            s.kill()
        if opts.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    opts_d = {k: getattr(opts, k) for k in ("rows", "duration", "warmup", "rounds", "runs",
                                            "threads", "read_conns", "write_conns", "peak_conns", "settle_after",
                                            "load_threshold", "smoke", "scripts", "script_conns",
                                            "script_workers_peak", "pb_hooks_pool")}
    doc = {"started": started, "machine": machine_facts(), "versions": versions,
           "opts": opts_d, "results": res}
    text = report(doc)
    print(text)
    os.makedirs(opts.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    base = os.path.join(opts.out, f"compare-{stamp}{'-smoke' if opts.smoke else ''}")
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    log(f"wrote {base}.md and .json")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); servers stopped")
        sys.exit(130)
