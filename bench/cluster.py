#!/usr/bin/env python3
"""Three `cloudio serve` nodes on one PostgreSQL, with and without Redis (bench/README.md).

1. A fresh PostgreSQL database; the W1 app of bench/api.py (Employees, --rows rows) written to a
   temporary directory; three nodes started at once, each with `--app-dir` and a data
   directory of its own, with `--redis-url` (a key prefix of this run's own).
2. Load: wrk against `POST /v1/api` with the W1 query on all three nodes at once (one wrk per
   node, --conns connections in all, --duration seconds): requests/s (sum), p99 (the highest of
   the three), errors (all kinds, summed), peak RSS per node (VmHWM).
3. Revocation latency: --revocations sessions, each made on node A and used once on node B
   (so B has it cached); then logout on A and B polled until it answers 401: the time from the
   logout's answer to B's 401. p50/p99/max.
4. The nodes stopped, started again without Redis on the same database, and 3 repeated.

Prints a Markdown report and writes it to --out/cluster-<date>-<time>.md. Standard library only.
Every load phase has a fixed length; every server is stopped at the end, also on Ctrl-C.
"""

import argparse
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import api  # noqa: E402  (the W1 app and query)

PASSWORD = "bench-admin-password-1"
LISTEN_RE = re.compile(rb"listening on (\S+)")
LIVE: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def psql(admin_url: str, sql: str) -> None:
    subprocess.run(["psql", admin_url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


def db_url(admin_url: str, name: str) -> str:
    base = admin_url.rsplit("/", 1)[0] if admin_url.count("/") > 2 else admin_url
    return f"{base}/{name}"


def start_nodes(opts, url: str, app_dir: str, tmp: str, tag: str, redis: str | None) -> list:
    """Starts three nodes at once; returns [(proc, (host, port))] once all listen."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CLOUDIO_") and k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    env.update({"CLOUDIO_ADMIN_PASSWORD": PASSWORD, "RUST_LOG": "warn,server::startup=info"})
    if redis:
        env["CLOUDIO_REDIS_URL"] = redis
        env["CLOUDIO_REDIS_PREFIX"] = f"cloudio-bench-{uuid.uuid4().hex}:"
    procs = []
    for i in range(3):
        data = os.path.join(tmp, f"{tag}-node{i}")
        os.makedirs(data, exist_ok=True)
        logf = open(os.path.join(tmp, f"{tag}-node{i}.log"), "ab")
        p = subprocess.Popen([opts.bin, "serve", "--data-dir", data, "--database-url", url,
                              "--listen", "127.0.0.1:0", "--app-dir", app_dir],
                             stdout=subprocess.PIPE, stderr=logf, env=env)
        LIVE.append(p)
        procs.append(p)
    nodes = []
    for p in procs:
        buf, deadline = b"", time.monotonic() + 120
        while not LISTEN_RE.search(buf):
            if time.monotonic() > deadline:
                raise RuntimeError(f"a node did not listen within 120 s (logs in {tmp})")
            chunk = p.stdout.read1(65536)
            if not chunk:
                raise RuntimeError(f"a node exited with {p.wait()} (logs in {tmp})")
            buf += chunk
        host, port = LISTEN_RE.search(buf).group(1).decode().rsplit(":", 1)
        # Keep draining stdout so the node never blocks on a full pipe.
        subprocess.Popen(["cat"], stdin=p.stdout, stdout=subprocess.DEVNULL)
        nodes.append((p, (host, int(port))))
    return nodes


def stop_nodes(nodes) -> None:
    for p, _ in nodes:
        p.send_signal(signal.SIGTERM)
    for p, _ in nodes:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
        if p in LIVE:
            LIVE.remove(p)


def request(conn: http.client.HTTPConnection, method: str, path: str, body=None,
            headers=None) -> tuple[int, dict]:
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data else {})


def login(addr) -> tuple[str, str]:
    import base64
    c = http.client.HTTPConnection(*addr, timeout=30)
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    s, b = request(c, "POST", "/v1/auth", "{}", {"Authorization": f"Token {token}",
                                                 "Content-Type": "application/json"})
    c.close()
    if s != 200:
        raise RuntimeError(f"login: {s} {b}")
    return b["jwt"], b["csrf"]


def load(opts, nodes, tmp: str) -> dict:
    jwt, csrf = login(nodes[0][1])
    body = json.dumps({"E": {"ds": "Employees", "query": api.W1_QUERY}}, separators=(",", ":"))
    for _, addr in nodes:
        c = http.client.HTTPConnection(*addr, timeout=30)
        s, b = request(c, "POST", f"/v1/api?csrf={csrf}", body,
                       {"Authorization": f"Bearer {jwt}", "Content-Type": "application/json"})
        c.close()
        if s != 200 or len(b["data"]["E"]["data"]) == 0:
            raise RuntimeError(f"W1 on {addr}: {s} {str(b)[:200]}")
    env = dict(os.environ, BENCH_LUA_DIR=os.path.join(HERE, "wrk"), BENCH_JWT=jwt, BENCH_BODY=body)
    share = [opts.conns // 3 + (1 if i < opts.conns % 3 else 0) for i in range(3)]
    log(f"load: wrk -c{opts.conns} (split {share}) for {opts.duration}s on three nodes")
    wrks = []
    for (_, addr), c in zip(nodes, share):
        out = open(os.path.join(tmp, f"wrk-{addr[1]}.out"), "wb")
        wrks.append((subprocess.Popen(
            ["wrk", "-t2", f"-c{c}", f"-d{opts.duration}s", "--timeout", "10s",
             "-s", os.path.join(HERE, "wrk", "api_fixed.lua"),
             f"http://{addr[0]}:{addr[1]}/v1/api?csrf={csrf}"],
            stdout=out, stderr=subprocess.STDOUT, env=env), out.name))
    results = []
    for w, name in wrks:
        w.wait()
        text = open(name).read()
        m = re.search(r"^RESULT (\{.*\})$", text, re.M)
        if not m:
            raise RuntimeError(f"no RESULT line from wrk: {text[-500:]}")
        results.append(json.loads(m.group(1)))
    rss = []
    for p, _ in nodes:
        status = open(f"/proc/{p.pid}/status").read()
        rss.append(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024)
    errors = sum(r[k] for r in results for k in
                 ("err_connect", "err_read", "err_write", "err_timeout", "err_status"))
    return {"rps": sum(r["rps"] for r in results), "requests": sum(r["requests"] for r in results),
            "p50_ms": max(r["p50_us"] for r in results) / 1000,
            "p99_ms": max(r["p99_us"] for r in results) / 1000, "errors": errors,
            "peak_rss_mb": rss}


def revocations(opts, nodes) -> dict:
    lat = []
    conns = [http.client.HTTPConnection(*addr, timeout=30) for _, addr in nodes]
    for i in range(opts.revocations):
        a, b = i % 3, (i + 1) % 3
        jwt, csrf = login(nodes[a][1])
        h = {"Authorization": f"Bearer {jwt}"}
        s, body = request(conns[b], "GET", f"/v1/session?csrf={csrf}", headers=h)
        if s != 200:
            raise RuntimeError(f"session on node {b}: {s} {body}")
        s, body = request(conns[a], "POST", f"/v1/logout?csrf={csrf}", headers=h)
        if s != 200:
            raise RuntimeError(f"logout on node {a}: {s} {body}")
        t0 = time.perf_counter()
        while True:
            s, _ = request(conns[b], "GET", f"/v1/session?csrf={csrf}", headers=h)
            if s == 401:
                lat.append((time.perf_counter() - t0) * 1000)
                break
            if time.perf_counter() - t0 > 10:
                raise RuntimeError("a logout was not seen by another node within 10 s")
            time.sleep(0.001)
    for c in conns:
        c.close()
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    return {"n": len(lat), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": lat[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--postgres", default=os.environ.get(
        "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
    ap.add_argument("--rows", type=int, default=api.ROWS)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--revocations", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    opts = ap.parse_args()
    load1 = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="cloudio-cluster-")
    name = f"cloudio_bench_cluster_{os.getpid()}"
    psql(opts.postgres, f"CREATE DATABASE {name}")
    url = db_url(opts.postgres, name)
    nodes = []
    try:
        app_dir = os.path.join(tmp, "app")
        api.write_app(app_dir, opts.rows)
        log(f"three nodes with Redis on a fresh database ({opts.rows} rows)")
        nodes = start_nodes(opts, url, app_dir, tmp, "redis", opts.redis)
        subprocess.run([opts.bin, "role", "grant", "--database-url", url, "--user", "admin",
                        "--app", api.APP, "--role", api.ROLE], check=True,
                       stdout=subprocess.DEVNULL)
        with_redis = load(opts, nodes, tmp)
        rev_redis = revocations(opts, nodes)
        stop_nodes(nodes)
        log("three nodes without Redis on the same database")
        nodes = start_nodes(opts, url, app_dir, tmp, "plain", None)
        rev_plain = revocations(opts, nodes)
        stop_nodes(nodes)
        nodes = []
    finally:
        stop_nodes(nodes)
        psql(opts.postgres, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    rss = ", ".join(f"{x:.1f}" for x in with_redis["peak_rss_mb"])
    report = f"""# Cluster: three nodes on one PostgreSQL ({datetime.datetime.now():%Y-%m-%d %H:%M})

commit {commit}, {os.cpu_count()} CPUs, load average {load1:.2f} before the run
{"**WARNING: the machine was not quiet (load > 1): these figures understate the server.**" if load1 > 1 else ""}

| figure | value |
|---|---|
| W1 on `/v1/api`, wrk -c{opts.conns} over three nodes, {opts.duration} s, with Redis: req/s | {with_redis["rps"]:.0f} |
| of which errors (connect, read, write, timeout, non-2xx) | {with_redis["errors"]} of {with_redis["requests"]} |
| latency p50 / p99 (highest of the three nodes) | {with_redis["p50_ms"]:.1f} / {with_redis["p99_ms"]:.1f} ms |
| peak RSS per node (VmHWM) | {rss} MB |
| revocation, logout on A to 401 on B, with Redis: p50 / p99 / max ({rev_redis["n"]}) | {rev_redis["p50_ms"]:.1f} / {rev_redis["p99_ms"]:.1f} / {rev_redis["max_ms"]:.1f} ms |
| revocation without Redis (PostgreSQL `NOTIFY`): p50 / p99 / max ({rev_plain["n"]}) | {rev_plain["p50_ms"]:.1f} / {rev_plain["p99_ms"]:.1f} / {rev_plain["max_ms"]:.1f} ms |
"""
    print(report)
    os.makedirs(opts.out, exist_ok=True)
    path = os.path.join(opts.out, f"cluster-{datetime.datetime.now():%Y%m%d-%H%M%S}.md")
    with open(path, "w") as f:
        f.write(report)
    log(f"written to {path}")
    return 0


def _interrupt(signum, frame) -> None:
    for p in LIVE:
        p.kill()
    sys.exit(130)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
