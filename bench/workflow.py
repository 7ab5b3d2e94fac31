#!/usr/bin/env python3
"""Workflow engine figures (issue 11): per-step overhead and throughput, on SQLite and on
PostgreSQL, against the release binary.

- Per step: instances of a chain of 20 no-op script nodes run one at a time; the time between
  consecutive executions' `finishedAt` is one step (claim, run, record). p50 and p90 reported.
- Throughput: 64 instances of a 10-step no-op chain started at once; steps/s = script-node
  executions / (last finish - first start), from the engine's own timestamps.
- Side by side: graphile-worker (bench/graphile, from the npm registry) on the same PostgreSQL
  running the same shape of work (64 chains of 10 no-op jobs, each queueing the next, 64 at
  once): its jobs/s against our steps/s.
- Callbacks: `incrementAndGet` from wrk at 64 connections against one held task's token; zero
  errors, and the counter afterwards equals the answers given plus one.

Driven by bench/workflow.sh (which builds the binary); runnable on its own:

    python3 bench/workflow.py --bin $CARGO_TARGET_DIR/release/cloudio [--pg URL] [--smoke]

Standard library only; the server process and HTTP helpers come from bench/compare.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.server
import json
import os
import queue
import threading
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import compare as cp  # noqa: E402

APP = "wfbench"
TARGETS = {  # issue 11: p50 per step (ms) at most, steps/s at least, callbacks/s at least
    "sqlite": {"p50_ms": 5.0, "steps_per_s": 2000, "callbacks_per_s": 5000},
    "postgres": {"p50_ms": 10.0, "steps_per_s": 1000, "callbacks_per_s": None},
}


def log(msg: str) -> None:
    print(f"[workflow] {msg}", file=sys.stderr, flush=True)


def chain(wf_uid: str, n: int) -> dict:
    nodes = [{"nodeUid": f"s{i}", "type": "script", "code": "return 1;"} for i in range(n)]
    nodes.append({"nodeUid": "end", "type": "end"})
    edges = [{"from": f"s{i}", "to": f"s{i + 1}"} for i in range(n - 1)]
    edges.append({"from": f"s{n - 1}", "to": "end"})
    return {"wfUid": wf_uid, "version": "1", "start": "s0", "nodes": nodes, "edges": edges}


class HeldTask:
    """A task server on loopback that keeps every call open until released: its token stays
    valid for the callbacks meanwhile."""

    def __init__(self):
        self.calls: queue.Queue = queue.Queue()
        self.release = threading.Event()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                outer.calls.put(json.loads(self.rfile.read(n)))
                outer.release.wait(300)
                body = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/hold"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self):
        self.release.set()
        self.srv.shutdown()


def write_app(root: str, task_url: str) -> str:
    d = os.path.join(root, APP)
    os.makedirs(os.path.join(d, "workflows"), exist_ok=True)
    with open(os.path.join(d, "app.json"), "w") as f:
        json.dump({"appUid": APP, "name": "Workflow bench"}, f)
    with open(os.path.join(d, "roles.json"), "w") as f:
        json.dump({"roles": [{"roleUid": "runner", "workflows": {
            "chain10": ["start", "view"], "chain20": ["start", "view"],
            "held": ["start", "view"]}}]}, f)
    for uid, n in (("chain10", 10), ("chain20", 20)):
        with open(os.path.join(d, "workflows", f"{uid}.json"), "w") as f:
            json.dump(chain(uid, n), f)
    with open(os.path.join(d, "workflows", "held.json"), "w") as f:
        json.dump({"wfUid": "held", "version": "1", "start": "t",
                   "nodes": [{"nodeUid": "t", "type": "task", "url": task_url,
                              "timeoutMs": 600000},
                             {"nodeUid": "end", "type": "end"}],
                   "edges": [{"from": "t", "to": "end"}]}, f)
    return d


def ts(s: str) -> float:
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


class Client:
    def __init__(self, addr):
        self.addr = addr
        self.jwt, self.csrf = cp.ours_login(addr)

    def post(self, path: str, body: dict) -> dict:
        return cp.must(cp.json_req(self.addr, "POST", f"{path}?csrf={self.csrf}", body,
                                   {"Authorization": f"Bearer {self.jwt}"}), path)

    def start(self, wf: str) -> str:
        return self.post("/v1/wf/start", {"appUid": APP, "wfUid": wf, "input": {}})["wfInstUid"]

    def instance(self, inst: str) -> dict:
        return self.post("/v1/wf/instance", {"wfInstUid": inst})["instance"]

    def finished(self, inst: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            i = self.instance(inst)
            if i["state"] != "running":
                if i["state"] != "completed":
                    raise RuntimeError(f"instance {inst} ended {i['state']}: {i.get('error')}")
                return i
            if time.monotonic() > deadline:
                raise RuntimeError(f"instance {inst} still running after {timeout}s")
            time.sleep(0.02)


def per_step(c: Client, runs: int) -> dict:
    gaps = []
    for _ in range(runs):
        i = c.finished(c.start("chain20"))
        ends = sorted(ts(e["finishedAt"]) for e in i["executions"]
                      if e["nodeUid"].startswith("s"))
        gaps += [(b - a) * 1000 for a, b in zip(ends, ends[1:])]
    gaps.sort()
    return {"steps": len(gaps), "p50_ms": round(statistics.median(gaps), 3),
            "p90_ms": round(gaps[int(len(gaps) * 0.9)], 3)}


def throughput(c: Client, instances: int) -> dict:
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as ex:
        insts = list(ex.map(lambda _: c.start("chain10"), range(instances)))
    done = [c.finished(i) for i in insts]
    starts = [ts(i["creationDate"]) for i in done]
    execs = [e for i in done for e in i["executions"] if e["nodeUid"].startswith("s")]
    last = max(ts(e["finishedAt"]) for e in execs)
    secs = last - min(starts)
    return {"instances": instances, "steps": len(execs), "seconds": round(secs, 3),
            "steps_per_s": round(len(execs) / secs, 1)}


def callbacks(opts, s, c: Client, task: HeldTask, tmp: str) -> dict:
    inst = c.start("held")
    call = task.calls.get(timeout=30)
    body = {k: call[k] for k in ("wfUid", "wfInstUid", "version", "token", "nodeUid",
                                 "executionId")}
    body["key"] = f"bench-{inst}"
    body_file = os.path.join(tmp, "callback.json")
    headers_file = os.path.join(tmp, "callback.headers")
    with open(body_file, "w") as f:
        json.dump(body, f)
    with open(headers_file, "w") as f:
        f.write("Content-Type: application/json\n")
    secs = 3 if opts.smoke else 10
    r = cp.run_wrk(s, "compare_fixed.lua", {"BENCH_METHOD": "POST",
                                            "BENCH_PATH": "/v1/wf/incrementAndGet",
                                            "BENCH_BODY": body_file,
                                            "BENCH_HEADERS": headers_file},
                   2, 64, secs, "wf-increment", opts.out)
    after = cp.must(cp.json_req(s.addr, "POST", "/v1/wf/incrementAndGet", body), "increment")
    # wrk counts requests it sent; those in flight when its clock ran out were answered by the
    # server but not counted, so the counter may run ahead of wrk's count by up to 64.
    exact = r["requests"] + 1 <= after["value"] <= r["requests"] + 1 + 64
    task.release.set()
    c.finished(inst)
    return {"rps": r["rps"], "p50_us": r["p50_us"], "p99_us": r["p99_us"],
            "requests": r["requests"], "non2xx": r["non2xx"], "sock_errors": r["sock_errors"],
            "counter_after": after["value"], "counter_consistent": exact}


def run_one(opts, kind: str, tmp: str) -> dict:
    task = HeldTask()
    app = write_app(os.path.join(tmp, f"apps-{kind}"), task.url)
    data = os.path.join(tmp, f"data-{kind}")
    extra = []
    db_url = None
    if kind == "postgres":
        name = f"cloudio_wfbench_{os.getpid()}"
        admin = opts.pg.rsplit("/", 1)[0]
        subprocess.run(["psql", opts.pg, "-qc", f"CREATE DATABASE {name}"], check=True)
        db_url = f"{admin}/{name}"
        extra = ["--database-url", db_url]
    logfile = os.path.join(opts.out, f"workflow-{kind}.log")
    s = cp.Server("ours", opts.bin, data, logfile, app_dir=app, extra_args=extra).start()
    try:
        target = ["--database-url", db_url] if db_url else ["--data-dir", data]
        p = subprocess.run([opts.bin, "role", "grant", "--user", "admin", "--app", APP,
                            "--role", "runner"] + target, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"role grant: {p.stdout}{p.stderr}")
        c = Client(s.addr)
        c.finished(c.start("chain10"))  # warm: definitions stored, workers made
        runs = 2 if opts.smoke else 10
        step = per_step(c, runs)
        log(f"{kind}: per step p50 {step['p50_ms']} ms, p90 {step['p90_ms']} ms "
            f"({step['steps']} steps)")
        tput = [throughput(c, 16 if opts.smoke else 64) for _ in range(1 if opts.smoke else 3)]
        best = max(t["steps_per_s"] for t in tput)
        log(f"{kind}: throughput {[t['steps_per_s'] for t in tput]} steps/s (best {best})")
        cb = callbacks(opts, s, c, task, tmp)
        log(f"{kind}: incrementAndGet at -c64: {cb['rps']} req/s, p99 {cb['p99_us']} us, "
            f"{cb['non2xx']} non-2xx, {cb['sock_errors']} socket errors, "
            f"counter consistent: {cb['counter_consistent']}")
    finally:
        task.stop()
        s.stop()
        if db_url:
            subprocess.run(["psql", opts.pg, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])
    t = TARGETS[kind]
    return {"per_step": step, "throughput": tput, "best_steps_per_s": best, "callbacks": cb,
            "p50_pass": step["p50_ms"] <= t["p50_ms"], "throughput_pass": best >= t["steps_per_s"],
            "callbacks_pass": (t["callbacks_per_s"] is None or cb["rps"] >= t["callbacks_per_s"])
            and cb["non2xx"] == 0 and cb["sock_errors"] == 0 and cb["counter_consistent"],
            "targets": t}


def graphile(opts) -> dict:
    d = os.path.join(HERE, "graphile")
    if not os.path.isdir(os.path.join(d, "node_modules")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=d, check=True,
                       stdout=subprocess.DEVNULL)
    name = f"cloudio_wfbench_gw_{os.getpid()}"
    subprocess.run(["psql", opts.pg, "-qc", f"CREATE DATABASE {name}"], check=True)
    url = f"{opts.pg.rsplit('/', 1)[0]}/{name}"
    runs = []
    try:
        for _ in range(1 if opts.smoke else 3):
            p = subprocess.run(["node", "run.mjs", url, "64", "10", "64"], cwd=d,
                               capture_output=True, text=True, timeout=300, check=True)
            runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    finally:
        subprocess.run(["psql", opts.pg, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])
    best = max(r["jobs_per_s"] for r in runs)
    log(f"graphile-worker: {[r['jobs_per_s'] for r in runs]} jobs/s (best {best})")
    return {"runs": runs, "best_jobs_per_s": best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--pg", default=os.environ.get("CLOUDIO_TEST_DATABASE_URL",
                                                   "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--only", choices=["sqlite", "postgres"])
    ap.add_argument("--smoke", action="store_true", help="a quick check, figures not for quoting")
    opts = ap.parse_args()
    os.makedirs(opts.out, exist_ok=True)
    report = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "load_before": cp.loadavg(), "git": cp.git_info(), "smoke": opts.smoke}
    with tempfile.TemporaryDirectory(prefix="cloudio-wfbench-") as tmp:
        for kind in ("sqlite", "postgres"):
            if opts.only in (None, kind):
                report[kind] = run_one(opts, kind, tmp)
        if opts.only in (None, "postgres"):
            gw = graphile(opts)
            report["graphile_worker"] = gw
            report["postgres"]["vs_graphile_pass"] = (
                report["postgres"]["best_steps_per_s"] >= gw["best_jobs_per_s"])
    report["load_after"] = cp.loadavg()
    path = os.path.join(opts.out, "workflow.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    log(f"report: {path}")


if __name__ == "__main__":
    main()
