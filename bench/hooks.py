#!/usr/bin/env python3
"""The cost of a datasource hook: W1 of bench/compare.py (the filtered, sorted list of 10
employees) against the same query through a datasource with a trivial `postQuery` hook
(`for (const r of rows) r.x = 1;`), on one server, in the same run, alternating.

Driven by bench/hooks.sh (which builds the binary and installs wrk); runnable on its own:

    python3 bench/hooks.py --bin $CARGO_TARGET_DIR/release/cloudio

Standard library only. The app, the data, the server process, the wrk runner and the checks
come from bench/compare.py (its `bench` app with the scripts of W5/W6: `Employees` and
`EmployeesHooked`, the same datasource over the same table but for the hook). See
bench/README.md, section `hooks.sh`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import compare as cp  # noqa: E402  (bench/compare.py: app, Server, run_wrk, checks, ...)
from api import proc_cpu  # noqa: E402  (bench/api.py: a process's CPU seconds)

# Targets (the issue): the hooked list keeps >= 70% of the plain list's rate, and the hook adds
# at most 0.5 ms to the median latency of one request (measured without queueing, at -c1).
RATE_TARGET = 0.7
ADDED_P50_TARGET_MS = 0.5
KINDS = ("plain", "hooked")


def log(msg: str) -> None:
    print(f"[hooks] {msg}", file=sys.stderr, flush=True)


def check(addr, tok) -> dict:
    """Both datasources give W1's 10 rows in the same order; the hooked one with `x` = 1 on
    each, the plain one without `x`."""
    q = cp.W1_OURS_BODY["E"]["query"]
    plain = cp.ours_query(addr, tok, q)["data"]
    hooked = cp.ours_query(addr, tok, q, cp.HOOKED_DS)["data"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "x"} for r in rows]  # noqa: E731
    ok = (len(plain) == 10 and strip(hooked) == plain and all(r.get("x") == 1 for r in hooked)
          and not any("x" in r for r in plain))
    return {"ok": ok, "names": [r["name"] for r in plain],
            "hooked_sample": hooked[:1], "plain_sample": plain[:1]}


def script_counters(addr) -> dict:
    """The script pool's counters from GET /metrics (lines mentioning `script`), if any."""
    st, body = cp.http_once(addr, "GET", "/metrics")
    out = {}
    if st == 200:
        for line in body.decode(errors="replace").splitlines():
            if "script" in line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
    return out


def measure(opts, tmp: str) -> dict:
    logdir = os.path.join(tmp, "logs")
    os.makedirs(logdir)
    res: dict = {"loadavg": {}}
    setup = cp.setup_ours(opts, tmp, logdir, scripts=True)
    res["load_secs"] = setup["load_secs"]

    def server() -> cp.Server:
        return cp.Server("ours", opts.bin, setup["data_dir"], setup["logfile"])

    s = server().start()
    try:
        tok = cp.ours_login(s.addr)
        res["check"] = check(s.addr, tok)
    finally:
        s.stop()
    log(f"check: W1 plain and hooked the same 10 rows, x = 1 on the hooked: "
        f"{res['check']['ok']}")
    if not res["check"]["ok"]:
        log(f"MISMATCH: {json.dumps(res['check'])[:2000]}")

    if opts.no_wait:
        res["loadavg"]["before_measuring"] = cp.loadavg()
    else:
        res["loadavg"]["before_measuring"], res["waited_secs"] = cp.wait_for_quiet(
            opts.max_wait, opts.load_threshold)

    jwt, csrf = tok
    d = os.path.join(tmp, "wrk-inputs")
    path = f"/v1/api?csrf={csrf}"
    spec = {"plain": cp.fixed_request(d, "w1-plain", "POST", path, cp.ours_headers(jwt),
                                      cp.W1_OURS_BODY),
            "hooked": cp.fixed_request(d, "w1-hooked", "POST", path, cp.ours_headers(jwt),
                                       cp.W6_OURS_BODY)}
    s = server().start()
    phases: dict = {}
    errors = 0
    try:
        res["workers"] = cp.script_workers(s.pid)
        res["rss_start"] = cp.proc_status(s.pid)
        metrics0 = script_counters(s.addr)
        for conns in (opts.conns, opts.lat_conns):
            res["loadavg"][f"c{conns}"] = cp.loadavg()
            for rnd in range(opts.rounds):
                # ABBA: plain first in odd rounds, hooked first in even ones (drift cancels).
                order = KINDS if rnd % 2 == 0 else KINDS[::-1]
                for kind in order:
                    script, env = spec[kind]
                    label = f"c{conns}-{kind}-r{rnd + 1}"
                    threads = min(opts.threads, conns)  # wrk: at least one connection each
                    if opts.warmup > 0:
                        wu = cp.run_wrk(s, script, env, threads, conns, opts.warmup,
                                        label + "-warmup", logdir)
                        errors += wu["non2xx"] + wu["sock_errors"]
                    cpu0 = proc_cpu(s.pid)
                    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    r = cp.run_wrk(s, script, env, threads, conns, opts.duration, label, logdir)
                    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    n = max(r["requests"], 1)
                    r["server_cpu_us"] = (proc_cpu(s.pid) - cpu0) * 1e6 / n
                    r["wrk_cpu_us"] = ((ch1.ru_utime + ch1.ru_stime)
                                       - (ch0.ru_utime + ch0.ru_stime)) * 1e6 / n
                    r["loadavg"] = cp.loadavg()
                    errors += r["non2xx"] + r["sock_errors"]
                    phases.setdefault(f"c{conns}/{kind}", []).append(r)
                    log(f"{label}: {r['rps']:.0f} req/s, p50 {r['p50_us']} us, p99 "
                        f"{r['p99_us']} us, server CPU {r['server_cpu_us']:.0f} us/req, errors "
                        f"{r['non2xx']}+{r['sock_errors']} (load {r['loadavg']})")
        res["rss_end"] = cp.proc_status(s.pid)
        res["metrics"] = {"before": metrics0, "after": script_counters(s.addr)}
        res["check_after"] = check(s.addr, tok)
    finally:
        s.stop()
    res["phases"] = phases
    res["errors"] = errors
    res["loadavg"]["end"] = cp.loadavg()
    return res


# --------------------------------------------------------------------------------------------
# Report


def mean(xs):
    return sum(xs) / len(xs)


def agg(res: dict, conns: int, kind: str) -> dict:
    ph = res["phases"][f"c{conns}/{kind}"]
    return {k: mean([x[k] for x in ph]) for k in ("rps", "p50_us", "p99_us", "server_cpu_us")} \
        | {"rounds": [round(x["rps"]) for x in ph]}


def rows_for(res: dict, o: dict) -> list[tuple]:
    c, lc = o["conns"], o["lat_conns"]
    a, b = agg(res, c, "plain"), agg(res, c, "hooked")
    la, lb = agg(res, lc, "plain"), agg(res, lc, "hooked")
    lat = lambda x: f"{cp.fmt_lat(x['p50_us'])} / {cp.fmt_lat(x['p99_us'])}"  # noqa: E731
    rate = cp.ratio(b["rps"], a["rps"])
    added = (lb["p50_us"] - la["p50_us"]) / 1000
    rows = [
        (f"req/s at -c{c} (rounds {a['rounds']} / {b['rounds']})", f"{a['rps']:.0f}",
         f"{b['rps']:.0f}", f"{rate:.2f}x", f">= {RATE_TARGET:g}x", cp.pf(rate >= RATE_TARGET)),
        (f"  latency p50 / p99 at -c{c}", lat(a), lat(b),
         f"+{(b['p50_us'] - a['p50_us']) / 1000:.2f} ms p50", "", ""),
        (f"  server CPU per request at -c{c}", f"{a['server_cpu_us']:.0f} us",
         f"{b['server_cpu_us']:.0f} us", f"+{b['server_cpu_us'] - a['server_cpu_us']:.0f} us",
         "", ""),
        (f"req/s at -c{lc} (rounds {la['rounds']} / {lb['rounds']})", f"{la['rps']:.0f}",
         f"{lb['rps']:.0f}", f"{cp.ratio(lb['rps'], la['rps']):.2f}x", "", ""),
        (f"  latency p50 / p99 at -c{lc} (one request at a time)", lat(la), lat(lb),
         f"+{added:.2f} ms p50", f"<= +{ADDED_P50_TARGET_MS:g} ms",
         cp.pf(added <= ADDED_P50_TARGET_MS)),
        (f"  server CPU per request at -c{lc}", f"{la['server_cpu_us']:.0f} us",
         f"{lb['server_cpu_us']:.0f} us",
         f"+{lb['server_cpu_us'] - la['server_cpu_us']:.0f} us", "", ""),
        ("errors, all phases (non-2xx + socket)", str(res["errors"]), "", "", "0",
         cp.pf(res["errors"] == 0)),
        ("same 10 rows, x = 1 only through the hook (before and after)",
         "same" if res["check"]["ok"] else "differs",
         "same" if res["check_after"]["ok"] else "differs", "", "identical",
         cp.pf(res["check"]["ok"] and res["check_after"]["ok"])),
        ("server RSS at the end, now / peak (VmRSS / VmHWM; one process for both)",
         f"{cp.mb(res['rss_end']['VmRSS'])} / {cp.mb(res['rss_end']['VmHWM'])}", "", "", "",
         ""),
    ]
    return rows


def table(rows: list[tuple]) -> str:
    head = ("figure", "W1 (Employees)", f"W1 + postQuery ({cp.HOOKED_DS})", "hooked vs plain",
            "target", "result")
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(x).ljust(w[i]) for i, x in enumerate(r)) + " |"  # noqa
    return "\n".join([line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|"]
                     + [line(r) for r in rows])


def report(doc: dict) -> str:
    res, m, o = doc["results"], doc["machine"], doc["opts"]
    metrics = res.get("metrics", {})
    delta = {k: v - metrics.get("before", {}).get(k, 0)
             for k, v in metrics.get("after", {}).items()}
    out = [f"# cloudio: the cost of a postQuery hook, {doc['started']}", "",
           f"- machine: {m['nproc']} CPUs, {m['cpu']}, {m['mem_gib']} GiB RAM, Linux {m['kernel']}",
           f"- cloudio: {doc['binary']}",
           f"- data: {o['rows']} employees (bench/compare.py's app `{cp.APP_UID}`, loaded in "
           f"{res['load_secs']:.1f} s); {res.get('workers') or '?'} script workers (the "
           "default: one per core)",
           f"- W1 body: `{json.dumps(cp.W1_OURS_BODY, separators=(',', ':'))}`; hooked: the "
           f"same with `\"ds\":\"{cp.HOOKED_DS}\"`, whose `{cp.HOOKED_DS}.postQuery.js` is "
           f"`{cp.POSTQUERY_JS.splitlines()[-1]}`",
           f"- wrk -t{o['threads']} on the same machine; {o['duration']} s per phase after "
           f"{o['warmup']} s warm-up; {o['rounds']} rounds per concurrency, alternating plain "
           "and hooked (ABBA), one server process throughout",
           "- load average (1/5/15 min): " + "; ".join(f"{k}: {x}" for k, x in
                                                       res["loadavg"].items())
           + (f" (waited {res.get('waited_secs', 0):.0f} s for < {o['load_threshold']})"
              if "waited_secs" in res else ""),
           "", table(rows_for(res, o)), ""]
    if delta:
        out.append("script counters over the phases (GET /metrics): " + ", ".join(
            f"{k} +{v:g}" for k, v in delta.items() if v))
    out.append(f"W1 rows: {res['check']['names'][:2]} ... {res['check']['names'][-1:]}")
    return "\n".join(out) + "\n"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", "/work/target")
    ap.add_argument("--bin", default=os.path.join(target, "release", "cloudio"))
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured phase")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    ap.add_argument("--rounds", type=int, default=4,
                    help="plain+hooked pairs per concurrency (ABBA order)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--conns", type=int, default=64, help="connections of the throughput phases")
    ap.add_argument("--lat-conns", type=int, default=1,
                    help="connections of the latency phases (1: no queueing)")
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait for the load average to drop")
    ap.add_argument("--load-threshold", type=float, default=1.0)
    ap.add_argument("--max-wait", type=float, default=600)
    ap.add_argument("--smoke", action="store_true",
                    help="2 s phases, 1 s warm-up, 2 rounds, no waiting: checks the machinery")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    opts = ap.parse_args()
    if opts.smoke:
        opts.duration, opts.warmup, opts.rounds, opts.no_wait = 2, 1, 2, True
    if not os.access(opts.bin, os.X_OK):
        log(f"no executable at {opts.bin}; build it with `cargo build --release -p cli`")
        return 2
    if not shutil.which("wrk"):
        log("wrk is not installed (apt-get install -y wrk)")
        return 2

    signal.signal(signal.SIGTERM, _interrupt)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    with open(opts.bin, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:12]
    binary = (f"sha256 {digest}, {os.path.getsize(opts.bin) / 1048576:.1f} MiB"
              + cp.git_info())
    tmp = tempfile.mkdtemp(prefix="cloudio-hooks.")
    log(f"working in {tmp}")
    private_bin = os.path.join(tmp, "cloudio")
    shutil.copy2(opts.bin, private_bin)
    opts.bin = private_bin
    try:
        res = measure(opts, tmp)
    finally:
        for s in list(cp.LIVE):
            log(f"killing {s.kind} {s.pid} left running")
            s.kill()
        if opts.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    opts_d = {k: getattr(opts, k) for k in ("rows", "duration", "warmup", "rounds", "threads",
                                            "conns", "lat_conns", "load_threshold", "smoke")}
    doc = {"started": started, "machine": cp.machine_facts(), "binary": binary, "opts": opts_d,
           "results": res}
    os.makedirs(opts.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    base = os.path.join(opts.out, f"hooks-{stamp}{'-smoke' if opts.smoke else ''}")
    with open(base + ".json", "w") as f:  # the raw numbers first: a failed report keeps them
        json.dump(doc, f, indent=1, default=str)
    text = report(doc)
    print(text)
    with open(base + ".md", "w") as f:
        f.write(text)
    log(f"wrote {base}.md and .json")
    return 0 if res["errors"] == 0 and res["check"]["ok"] and res["check_after"]["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); server stopped")
        sys.exit(130)
