#!/usr/bin/env python3
"""Foundation figures for the `cloudio` server, measured on this machine.

Driven by bench/foundation.sh (which builds the binary and installs wrk); runnable on its own:

    python3 bench/foundation.py --bin /work/target/release/cloudio [--postgres URL]

Standard library only. Every server runs on 127.0.0.1 with a port it picks itself (`--listen
127.0.0.1:0`, address read from its `listening on <addr>` line) and a data directory under a
fresh temporary directory, removed at the end. PostgreSQL runs get fresh databases
(`cloudio_bench_<pid>_<n>`), dropped at the end.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime
import hashlib
import http.client
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
PASSWORD = "bench-Pa55word"
LISTEN_RE = re.compile(rb"listening on (\S+)")
ANSI_RE = re.compile(rb"\x1b\[[0-9;]*m")

# Servers started and not yet stopped, killed on the way out whatever happens.
LIVE: list["Server"] = []

# Extra environment for every server (--server-env K=V), e.g. GLIBC_TUNABLES for A/B runs.
SERVER_ENV: dict[str, str] = {}

# Targets from spec section 10 (the product's own claims).
STARTUP_TARGET_MS = 20.0
IDLE_RSS_TARGET_MB = 20.0


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Server processes


class Server:
    """A `cloudio serve` child. `start()` returns once `GET /v1/status` answered 200."""

    def __init__(self, binary: str, data_dir: str, db_url: str | None, rust_log: str,
                 logfile: str):
        self.binary, self.data_dir, self.db_url = binary, data_dir, db_url
        self.rust_log, self.logfile = rust_log, logfile
        self.proc: subprocess.Popen | None = None
        self.addr: tuple[str, int] | None = None
        self.t_listening_ms = self.t_ready_ms = float("nan")
        self._drain: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> "Server":
        env = dict(os.environ)
        # A developer shell's RUST_BACKTRACE=1 makes every anyhow error walk the stack.
        for k in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE"):
            env.pop(k, None)
        env.update(SERVER_ENV)
        env["CLOUDIO_ADMIN_PASSWORD"] = PASSWORD
        env["RUST_LOG"] = self.rust_log
        for k in ("CLOUDIO_DATABASE_URL", "CLOUDIO_DATA_DIR", "CLOUDIO_LISTEN", "CLOUDIO_CONFIG"):
            env.pop(k, None)
        args = [self.binary, "serve", "--data-dir", self.data_dir, "--listen", "127.0.0.1:0"]
        if self.db_url:
            args += ["--database-url", self.db_url]
        out = open(self.logfile, "ab")
        # The clock starts just before fork/exec; see `spawn_overhead_ms` for what that costs.
        t0 = time.perf_counter_ns()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=out, env=env,
                                     close_fds=True)
        LIVE.append(self)
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while True:
            m = LISTEN_RE.search(ANSI_RE.sub(b"", buf))
            if m:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RuntimeError(f"no `listening on` line within {timeout}s; see {self.logfile}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait()
                    out.write(buf)
                    out.close()
                    raise RuntimeError(f"server exited with {self.proc.returncode} before "
                                       f"listening; see {self.logfile}")
                buf += chunk
        t_listen = time.perf_counter_ns()
        host, port = m.group(1).decode().rsplit(":", 1)
        self.addr = (host, int(port))
        code = status_once(self.addr)
        while code != 200:  # Not expected: the listener is bound and serving by now.
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"/v1/status answered {code}; see {self.logfile}")
            time.sleep(0.0005)
            code = status_once(self.addr)
        t_ready = time.perf_counter_ns()
        self.t_listening_ms = (t_listen - t0) / 1e6
        self.t_ready_ms = (t_ready - t0) / 1e6
        out.write(buf)
        out.flush()
        # Keep the pipe drained so a chatty server never blocks on stdout.
        self._drain = threading.Thread(target=_drain, args=(self.proc.stdout, out), daemon=True)
        self._drain.start()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://{self.addr[0]}:{self.addr[1]}"

    def stop(self, timeout: float = 15.0) -> float:
        """SIGTERM, then SIGKILL after `timeout`. Returns the ms the process took to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"server {self.pid} ignored SIGTERM for {timeout}s; killing it")
            self.kill()
        if self._drain:
            self._drain.join(2)
        if self in LIVE:
            LIVE.remove(self)
        return (time.perf_counter() - t0) * 1000

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


def status_once(addr: tuple[str, int]) -> int:
    """One `GET /v1/status` on a fresh connection; the HTTP status, or 0 on a socket error."""
    try:
        with socket.create_connection(addr, timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            # Read to the end so the server finishes the request cleanly.
            while s.recv(65536):
                pass
        return int(data.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return 0


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile (kB) and Threads from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[k] = int(v.split()[0])
    return out


def thread_names(pid: int) -> dict[str, int]:
    names: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                n = re.sub(r"[-_]?\d+$", "", f.read().strip())
        except OSError:
            continue
        names[n] = names.get(n, 0) + 1
    return names


def spawn_overhead_ms(runs: int) -> float:
    """Median cost of the probe's own fork/exec/wait, measured on /bin/true."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        subprocess.Popen(["/bin/true"], stdout=subprocess.PIPE, close_fds=True).wait()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# HTTP helpers (keep-alive, standard library)


def auth_header() -> str:
    return "Token " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()


def login(conn: http.client.HTTPConnection) -> tuple[str, str]:
    conn.request("POST", "/v1/auth", body=b"{}",
                 headers={"Authorization": auth_header(), "Content-Type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"login: {r.status} {body[:200]!r}")
    j = json.loads(body)
    return j["jwt"], j["csrf"]


def get_session(conn: http.client.HTTPConnection, jwt: str, csrf: str) -> int:
    conn.request("GET", f"/v1/session?csrf={csrf}", headers={"Authorization": f"Bearer {jwt}"})
    r = conn.getresponse()
    r.read()
    return r.status


def harvest_tokens(addr: tuple[str, int], want: int, have: int, workers: int,
                   time_cap: float) -> list[tuple[str, str]]:
    """Logs in until `have + len(result) >= want` or `time_cap` seconds passed."""
    lock = threading.Lock()
    got: list[tuple[str, str]] = []
    deadline = time.monotonic() + time_cap
    errors: list[str] = []

    def worker() -> None:
        conn = http.client.HTTPConnection(*addr, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                if have + len(got) >= want:
                    return
            try:
                tok = login(conn)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(str(e))
                conn.close()
                conn = http.client.HTTPConnection(*addr, timeout=30)
                if len(errors) > 20:
                    return
                continue
            with lock:
                got.append(tok)

    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        for f in [ex.submit(worker) for _ in range(workers)]:
            f.result()
    if errors:
        log(f"token harvest: {len(errors)} failed logins, e.g. {errors[0]}")
    return got


# --------------------------------------------------------------------------------------------
# wrk


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: str) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_snapshot(server_pid: int) -> tuple[float, float, float]:
    """(busy CPU-seconds of the whole machine, of the server, of PostgreSQL's processes)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user + nice + system: what processes account for. Interrupt time (loopback networking
    # is softirq work) and steal stay out, so they never count as `other`.
    busy = (v[0] + v[1] + v[2]) / CLK_TCK
    pg = 0.0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() != "postgres":
                        continue
            except OSError:
                continue
            pg += _proc_cpu_s(pid)
    return busy, _proc_cpu_s(str(server_pid)), pg


class OtherCpu:
    """CPUs used by processes other than our children (servers, wrk, psql) and PostgreSQL,
    on average over a `with` block: how busy the machine was with something else."""

    def __enter__(self) -> "OtherCpu":
        self.t0 = time.monotonic()
        self.c0 = cpu_snapshot(os.getpid())
        self.r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.value = 0.0
        return self

    def __exit__(self, *exc) -> None:
        wall = time.monotonic() - self.t0
        c1 = cpu_snapshot(os.getpid())
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        total, me, pg = (a - b for a, b in zip(c1, self.c0))
        children = (r1.ru_utime + r1.ru_stime) - (self.r0.ru_utime + self.r0.ru_stime)
        self.value = max(0.0, total - me - pg - children) / wall if wall > 0 else 0.0


def run_wrk(script: str, url: str, threads: int, conns: int, secs: int, env_extra: dict,
            label: str, raw_dir: str, expect_errors: bool = False,
            server_pid: int | None = None) -> dict:
    env = dict(os.environ)
    env["BENCH_LUA_DIR"] = os.path.join(HERE, "wrk")
    env.update(env_extra)
    args = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--timeout", "10s", "--latency",
            "-s", os.path.join(HERE, "wrk", script), url]
    log(f"wrk {label}: {' '.join(args[1:])}")
    before = cpu_snapshot(server_pid) if server_pid else None
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=secs + 60)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {}
    if before:
        after = cpu_snapshot(server_pid)
        total, server, pg = (a - b for a, b in zip(after, before))
        wrk_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        # In CPUs (1.0 = one core busy for the whole phase).
        cpu = {"cpu_total": total / wall, "cpu_server": server / wall, "cpu_postgres": pg / wall,
               "cpu_wrk": wrk_cpu / wall,
               "cpu_other": max(0.0, total - server - pg - wrk_cpu) / wall}
    with open(os.path.join(raw_dir, f"wrk-{label}.txt"), "w") as f:
        f.write(p.stdout + p.stderr)
    m = re.search(r"^RESULT (\{.*\})$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk {label} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    r = json.loads(m.group(1))
    r["non2xx"] = r["err_status"] + r["non2xx_hook"] if script == "login.lua" else r["err_status"]
    r["sock_errors"] = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
    r.update(cpu)
    if (r["non2xx"] and not expect_errors) or r["sock_errors"]:
        log(f"wrk {label}: {r['non2xx']} non-2xx, socket errors connect={r['err_connect']} "
            f"read={r['err_read']} write={r['err_write']} timeout={r['err_timeout']}; "
            f"sample: {r.get('bad_sample')}")
    return r


# --------------------------------------------------------------------------------------------
# PostgreSQL databases (through psql, which the PostgreSQL client package provides)


class PgDatabases:
    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.made: list[str] = []
        self.n = 0
        if not shutil.which("psql"):
            raise RuntimeError("psql is needed to create the benchmark databases "
                               "(apt-get install -y postgresql-client)")

    def _psql(self, sql: str) -> None:
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.admin_url, "-c", sql],
                       check=True, capture_output=True, text=True, timeout=60)

    def create(self) -> str:
        self.n += 1
        name = f"cloudio_bench_{os.getpid()}_{self.n}"
        self._psql(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        u = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))

    def drop_all(self) -> None:
        for name in self.made:
            try:
                self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except subprocess.CalledProcessError as e:
                log(f"could not drop {name}: {e.stderr.strip()}")
        self.made.clear()


# --------------------------------------------------------------------------------------------
# The measurements, for one backend


def expect(status: int, what: str) -> None:
    if status != 200:
        raise RuntimeError(f"{what} answered {status}, not 200")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def summarize(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs),
            "all": [round(x, 2) for x in xs]}


def measure_backend(name: str, opts, tmp: str, pg: PgDatabases | None) -> dict:
    res: dict = {"backend": name, "loadavg_before": loadavg()}
    logdir = os.path.join(tmp, name)
    os.makedirs(logdir)
    startup_log = "warn,server::startup=info"

    def new_server(data_dir: str, db_url: str | None, rust_log: str = startup_log) -> Server:
        return Server(opts.bin, data_dir, db_url, rust_log, os.path.join(logdir, "server.log"))

    # 1. Startup, fresh: a new data directory (and a new database) every time.
    log(f"{name}: startup, fresh data dir x{opts.runs}")
    fresh, fresh_listen = [], []
    with OtherCpu() as other:
        for i in range(opts.runs):
            db_url = pg.create() if pg else None
            s = new_server(os.path.join(tmp, f"{name}-fresh-{i}"), db_url).start()
            fresh.append(s.t_ready_ms)
            fresh_listen.append(s.t_listening_ms)
            s.stop()
    res["startup_fresh"] = summarize(fresh)
    res["startup_fresh"]["cpu_other"] = other.value
    res["startup_fresh_listening"] = summarize(fresh_listen)

    # 1b. Startup, warm: the same data directory (and database) again and again.
    warm_dir = os.path.join(tmp, f"{name}-warm")
    warm_db = pg.create() if pg else None
    new_server(warm_dir, warm_db).start().stop()
    log(f"{name}: startup, warm restart x{opts.runs}")
    warm, warm_listen, stops = [], [], []
    with OtherCpu() as other:
        for _ in range(opts.runs):
            s = new_server(warm_dir, warm_db).start()
            warm.append(s.t_ready_ms)
            warm_listen.append(s.t_listening_ms)
            # Let start-up's background work (e.g. a prewarmed hash) finish: the idle case.
            time.sleep(0.5)
            stops.append(s.stop())
    res["startup_warm"] = summarize(warm)
    res["startup_warm"]["cpu_other"] = other.value
    res["startup_warm_listening"] = summarize(warm_listen)
    res["stop_ms"] = summarize(stops)

    # 2.-4. One long-lived server on the warm data directory, quiet logs.
    # The `listening on` line is an info event of server::startup; keep just that module on.
    s = new_server(warm_dir, warm_db, opts.rust_log + ",server::startup=info").start()
    try:
        for _ in range(3):
            expect(status_once(s.addr), "GET /v1/status")
        time.sleep(opts.settle)
        res["rss_start"] = proc_status(s.pid)
        conn = http.client.HTTPConnection(*s.addr, timeout=30)
        jwt, csrf = login(conn)
        for _ in range(3):
            expect(get_session(conn, jwt, csrf), "GET /v1/session")
            expect(status_once(s.addr), "GET /v1/status")
        conn.close()
        time.sleep(opts.settle)
        res["rss_idle"] = proc_status(s.pid)
        res["threads_idle"] = thread_names(s.pid)
        log(f"{name}: idle RSS {res['rss_start']['VmRSS']} kB after start, "
            f"{res['rss_idle']['VmRSS']} kB after a login; threads {res['threads_idle']}")

        # 3. Logins. The wrk script also saves every token it gets, for 4b.
        tok_prefix = os.path.join(tmp, f"{name}-tokens")
        res["login"] = run_wrk(
            "login.lua", s.base + "/v1/auth", opts.threads, opts.login_conns, opts.duration,
            {"BENCH_AUTH": auth_header().split(" ", 1)[1], "BENCH_TOKENS_OUT": tok_prefix},
            f"{name}-login", logdir, server_pid=s.pid)
        res["rss_after_login"] = proc_status(s.pid)
        res["threads_after_login"] = thread_names(s.pid)
        tokens: list[str] = []
        for f in sorted(os.listdir(tmp)):
            if f.startswith(os.path.basename(tok_prefix) + "."):
                with open(os.path.join(tmp, f)) as fh:
                    tokens += [ln.strip() for ln in fh if ln.strip()]
        harvested_by_wrk = len(tokens)
        if len(tokens) < opts.tokens:
            log(f"{name}: logging in {opts.tokens - len(tokens)} more times for distinct tokens "
                f"({opts.harvest_workers} in parallel, at most {opts.harvest_secs}s)")
            t0 = time.monotonic()
            more = harvest_tokens(s.addr, opts.tokens, len(tokens), opts.harvest_workers,
                                  opts.harvest_secs)
            tokens += [f"{j} {c}" for j, c in more]
            res["harvest"] = {"logins": len(more), "seconds": round(time.monotonic() - t0, 1)}
        tokens = tokens[: opts.tokens]
        res["tokens"] = len(tokens)
        res["tokens_from_wrk"] = min(harvested_by_wrk, opts.tokens)
        one = os.path.join(tmp, f"{name}-one-token.txt")
        many = os.path.join(tmp, f"{name}-many-tokens.txt")
        with open(one, "w") as f:
            f.write(tokens[0] + "\n")
        with open(many, "w") as f:
            f.write("\n".join(tokens) + "\n")

        # 4a. One token, reused by every request.
        res["session_one"] = run_wrk("session.lua", s.base, opts.threads, opts.session_conns,
                                     opts.duration, {"BENCH_TOKENS": one},
                                     f"{name}-session-one", logdir,
                                     server_pid=s.pid)
        # 4b. A different token per request, cycling through all of them.
        res["session_many"] = run_wrk("session.lua", s.base, opts.threads, opts.session_conns,
                                      opts.duration, {"BENCH_TOKENS": many},
                                      f"{name}-session-many", logdir,
                                      server_pid=s.pid)
        # References for reading 4a/4b: the same HTTP stack without auth, with and without a
        # database round trip.
        ref_secs = max(2, opts.duration // 2)
        res["ref_status"] = run_wrk("plain.lua", s.base + "/v1/status", opts.threads,
                                    opts.session_conns, ref_secs, {}, f"{name}-ref-status", logdir,
                                    server_pid=s.pid)
        res["ref_404"] = run_wrk("plain.lua", s.base + "/v1/no-such-endpoint", opts.threads,
                                 opts.session_conns, ref_secs, {}, f"{name}-ref-404", logdir,
                                 expect_errors=True, server_pid=s.pid)
        res["rss_after_load"] = proc_status(s.pid)
        res["threads_after_load"] = thread_names(s.pid)
        time.sleep(opts.settle)
        res["rss_after_load_settled"] = proc_status(s.pid)
    finally:
        s.stop()
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
            "kernel": os.uname().release, "loadavg": loadavg()}


def git_info() -> str:
    """`, from <commit> (+ uncommitted changes)` of the work tree, read-only."""
    root = os.path.dirname(HERE)
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # never write the index
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], env=env,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "-uno"], env=env,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    if not head:
        return ""
    return f", work tree at {head}" + (" with uncommitted changes" if dirty else "")


def fmt_ms(x: float) -> str:
    return f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms"


def fmt_lat(us: int) -> str:
    return f"{us / 1000:.1f} ms" if us >= 10000 else f"{us / 1000:.2f} ms"


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


def verdict(value: float, target: float) -> str:
    return "PASS" if value < target else "FAIL"


def rows_for(r: dict) -> list[tuple[str, str, str, str]]:
    b = r["backend"]
    rows = []
    for kind, label in (("fresh", "first start, fresh data dir"), ("warm", "warm restart")):
        st = r[f"startup_{kind}"]
        li = r[f"startup_{kind}_listening"]
        rows.append((f"{b}: startup to first 200, {label} (median / min of {st['n']})",
                     f"{fmt_ms(st['median'])} / {fmt_ms(st['min'])}",
                     f"< {STARTUP_TARGET_MS:.0f} ms", verdict(st["median"], STARTUP_TARGET_MS)))
        rows.append((f"{b}:   of which to `listening on` line (median)", fmt_ms(li["median"]),
                     "", ""))
    rows.append((f"{b}: shutdown on SIGTERM, idle 0.5 s after start (median)", fmt_ms(r["stop_ms"]["median"]), "", ""))
    rs, ri = r["rss_start"], r["rss_idle"]
    rows.append((f"{b}: idle RSS after start + 3 status requests", mb(rs["VmRSS"]),
                 f"< {IDLE_RSS_TARGET_MB:.0f} MB", verdict(rs["VmRSS"] / 1024, IDLE_RSS_TARGET_MB)))
    rows.append((f"{b}: idle RSS after also 1 login + 3 session requests", mb(ri["VmRSS"]),
                 f"< {IDLE_RSS_TARGET_MB:.0f} MB", verdict(ri["VmRSS"] / 1024, IDLE_RSS_TARGET_MB)))
    rows.append((f"{b}: idle threads", str(ri["Threads"]), "", ""))
    lg = r["login"]
    rows.append((f"{b}: logins/s (POST /v1/auth, -c{r['opts']['login_conns']})",
                 f"{lg['rps']:.1f}", "", ""))
    rows.append((f"{b}:   login latency p50 / p99", f"{fmt_lat(lg['p50_us'])} / "
                 f"{fmt_lat(lg['p99_us'])}", "", ""))
    rows.append((f"{b}:   login non-2xx / socket errors", f"{lg['non2xx']} / {lg['sock_errors']}",
                 "0", "PASS" if lg["non2xx"] == 0 and lg["sock_errors"] == 0 else "FAIL"))
    rows.append((f"{b}: RSS after login load (now / peak)",
                 f"{mb(r['rss_after_login']['VmRSS'])} / {mb(r['rss_after_login']['VmHWM'])}",
                 "", ""))
    for key, label in (("session_one", "one token for all"),
                       ("session_many", f"{r['tokens']} tokens cycled")):
        x = r[key]
        rows.append((f"{b}: GET /v1/session req/s, {label} (-c{r['opts']['session_conns']})",
                     f"{x['rps']:.0f}", "", ""))
        rows.append((f"{b}:   latency p50 / p99", f"{fmt_lat(x['p50_us'])} / "
                     f"{fmt_lat(x['p99_us'])}", "", ""))
        rows.append((f"{b}:   non-2xx / socket errors", f"{x['non2xx']} / {x['sock_errors']}",
                     "0", "PASS" if x["non2xx"] == 0 and x["sock_errors"] == 0 else "FAIL"))
    x = r["ref_status"]
    rows.append((f"{b}: reference: GET /v1/status req/s (no auth, 1 DB ping)",
                 f"{x['rps']:.0f}", "", ""))
    x = r["ref_404"]
    rows.append((f"{b}: reference: GET of an unknown path req/s (404, no auth, no DB)",
                 f"{x['rps']:.0f}", "", ""))
    rows.append((f"{b}: RSS after all load, settled (now / peak)",
                 f"{mb(r['rss_after_load_settled']['VmRSS'])} / "
                 f"{mb(r['rss_after_load_settled']['VmHWM'])}", "", ""))
    rows.append((f"{b}: threads after load", str(r["rss_after_load"]["Threads"]), "", ""))
    return rows


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("figure", "value", "target", "result")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|"]
                     + [line(r) for r in rows])


def report(facts: dict, results: list[dict], opts, spawn_ms: float, binary_info: str) -> str:
    rows = []
    for r in results:
        rows += rows_for(r)
    out = [f"# CloudIO foundation benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}",
           "",
           f"- machine: {facts['nproc']} CPUs, {facts['cpu']}, {facts['mem_gib']} GiB RAM, "
           f"Linux {facts['kernel']}",
           f"- load average at start: {facts['loadavg']}"
           + "".join(f"; before {r['backend']}: {r['loadavg_before']}" for r in results),
           f"- binary: {binary_info}",
           f"- wrk: -t{opts.threads}, {opts.duration}s per phase, on the same machine as the "
           f"server (they share the {facts['nproc']} CPUs); server RUST_LOG={opts.rust_log}",
           (f"- extra server environment: {SERVER_ENV}\n" if SERVER_ENV else "") +
           f"- startup clock: from just before fork/exec to the first 200 from GET /v1/status; "
           f"the probe's own spawn+wait of /bin/true costs {spawn_ms:.2f} ms (median)",
           "",
           table(rows),
           ""]
    for r in results:
        out.append(f"{r['backend']}: startup samples (ms) fresh {r['startup_fresh']['all']}, "
                   f"warm {r['startup_warm']['all']}; other processes used "
                   f"{r['startup_fresh']['cpu_other']:.2f} / {r['startup_warm']['cpu_other']:.2f} "
                   f"CPUs meanwhile")
        out.append(f"{r['backend']}: threads idle {r['threads_idle']}, "
                   f"after load {r['threads_after_load']}")
        phases = [("login", "logins"), ("session_one", "session, one token"),
                  ("session_many", "session, many tokens"), ("ref_status", "status"),
                  ("ref_404", "404")]
        parts = []
        for key, label in phases:
            x = r[key]
            if "cpu_total" in x:
                parts.append(f"{label}: server {x['cpu_server']:.2f}"
                             + (f", postgres {x['cpu_postgres']:.2f}" if x["cpu_postgres"] >= 0.005
                                else "")
                             + f", wrk {x['cpu_wrk']:.2f}, other {x['cpu_other']:.2f}")
        if parts:
            out.append(f"{r['backend']}: CPUs busy during the load phases (of "
                       f"{os.cpu_count()}; `other` is everything else on the machine, which "
                       f"should be near 0): " + "; ".join(parts))
            worst = max([r[k].get("cpu_other", 0) for k, _ in phases]
                        + [r["startup_fresh"]["cpu_other"], r["startup_warm"]["cpu_other"]])
            if worst > 0.3:
                out.append(f"{r['backend']}: WARNING: other processes used up to {worst:.2f} "
                           f"CPUs during a phase; its figures understate the server")
        x = r["session_many"]
        share = min(1.0, r["tokens"] / max(x["rps"], 1.0))
        out.append(f"{r['backend']}: in 4b each of the {r['tokens']} tokens came back about every "
                   f"{r['tokens'] / max(x['rps'], 1.0) * 1000:.0f} ms; with the guard's 1 s "
                   f"re-check, about {share:.1%} of requests took the full path (JWT "
                   f"verification + session query)")
        h = r.get("harvest")
        out.append(f"{r['backend']}: {r['tokens']} distinct tokens ({r['tokens_from_wrk']} from "
                   f"the login phase"
                   + (f", {h['logins']} more logins in {h['seconds']} s" if h else "") + ")")
        out.append("")
    return "\n".join(out)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="/work/target/release/cloudio")
    ap.add_argument("--postgres", default=os.environ.get("BENCH_POSTGRES_URL"),
                    help="admin URL of a PostgreSQL server (env BENCH_POSTGRES_URL); fresh "
                         "databases are created in it and dropped afterwards")
    ap.add_argument("--no-sqlite", action="store_true", help="skip the SQLite backend")
    ap.add_argument("--runs", type=int, default=10, help="startups of each kind (default 10)")
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk phase (default 8)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--login-conns", type=int, default=16)
    ap.add_argument("--session-conns", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=2000,
                    help="distinct tokens for the token-per-request phase (default 2000)")
    ap.add_argument("--harvest-secs", type=float, default=40,
                    help="at most this long logging in for more tokens (default 40)")
    ap.add_argument("--harvest-workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--settle", type=float, default=1.0, help="seconds before reading idle RSS")
    ap.add_argument("--rust-log", default="warn",
                    help="RUST_LOG of the loaded server (default warn; server::startup=info is "
                         "always added, for the `listening on` line)")
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V",
                    help="extra environment for the server (repeatable), e.g. "
                         "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    opts = ap.parse_args()

    for kv in opts.server_env:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--server-env wants K=V, got {kv!r}")
        SERVER_ENV[k] = v
    if not os.access(opts.bin, os.X_OK):
        log(f"no executable at {opts.bin}; build it with `cargo build --release -p cli`")
        return 2
    if not shutil.which("wrk"):
        log("wrk is not installed (apt-get install -y wrk)")
        return 2
    facts = machine_facts()
    if float(facts["loadavg"].split()[0]) > 0.5:
        log(f"warning: the machine is busy (load average {facts['loadavg']}); figures will be "
            f"noisy")
    st = os.stat(opts.bin)
    with open(opts.bin, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:12]
    binary_info = (f"{opts.bin} ({st.st_size / 1048576:.1f} MiB, sha256 {digest}, built "
                   f"{datetime.datetime.fromtimestamp(st.st_mtime).isoformat(timespec='seconds')})"
                   f"{git_info()}")
    # A SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so servers and databases are cleaned up.
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = tempfile.mkdtemp(prefix="cloudio-bench.")
    log(f"working in {tmp}")
    # Run a private copy: a rebuild in the work tree during the run must not swap the binary
    # between phases.
    private_bin = os.path.join(tmp, "cloudio")
    shutil.copy2(opts.bin, private_bin)
    opts.bin = private_bin
    pg = None
    results = []
    optd = {"login_conns": opts.login_conns, "session_conns": opts.session_conns}
    try:
        spawn_ms = spawn_overhead_ms(20)
        if not opts.no_sqlite:
            r = measure_backend("sqlite", opts, tmp, None)
            r["opts"] = optd
            results.append(r)
        if opts.postgres:
            pg = PgDatabases(opts.postgres)
            r = measure_backend("postgres", opts, tmp, pg)
            r["opts"] = optd
            results.append(r)
    finally:
        for s in list(LIVE):
            log(f"killing server {s.pid} left running")
            s.kill()
        if pg:
            pg.drop_all()
        if opts.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not results:
        log("nothing measured")
        return 2
    text = report(facts, results, opts, spawn_ms, binary_info)
    print(text)
    os.makedirs(opts.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    path = os.path.join(opts.out, f"foundation-{stamp}.md")
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.join(opts.out, f"foundation-{stamp}.json"), "w") as f:
        json.dump({"machine": facts, "results": results}, f, indent=1, default=str)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); servers stopped, databases dropped")
        sys.exit(130)
