#!/usr/bin/env python3
"""The memory figures of bench/compare.py alone, without PocketBase (~2-3 minutes).

Driven by bench/memory.sh; runnable on its own:

    python3 bench/memory.py --bin $CARGO_TARGET_DIR/release/cloudio

1. One long-lived process serves W1, W2, W3 (logins) and W4 exactly as compare.py's
   throughput phase does, then W1 at `--peak-conns` (1,000) connections, its VmRSS sampled
   every 50 ms: the peak (target < 60 MB), then the RSS once idle again (`--settle-after`
   seconds later, target < 20 MB), with its split into anonymous and file-backed pages.
2. A fresh process with `[scripts] workers = 64` (and `user_max_inflight = 64`) serves W5's
   variant that awaits a `db` call at -c64, so that each execution waits on a pool thread: the
   peak with up to 64 QuickJS executions at once (target < 100 MB; the highest
   `cloudio_script_running` seen is printed with it). Plain W5 would run whole on the
   request's threads, a couple of executions at once.

Each figure is printed with PASS/FAIL and the load average when it was taken; the report also
goes to bench/out/memory-<date>-<time>.md (and .json). Standard library only; the machinery
(servers, wrk, workloads) is compare.py's own.
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
import sys
import tempfile
import time

import compare as c


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss, Anonymous and the file-backed rest (kB) from /proc/PID/smaps_rollup."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Rss", "Anonymous", "Shared_Clean", "Private_Clean"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def snapshot(pid: int) -> dict:
    s = c.proc_status(pid)
    s["smaps"] = smaps_rollup(pid)
    return s


def long_lived(opts, tmp: str, logdir: str, res: dict) -> None:
    setup = c.setup_ours(opts, tmp, logdir)

    def server() -> c.Server:
        return c.Server("ours", opts.bin, setup["data_dir"], setup["logfile"])

    s = server().start()
    try:
        tok = c.ours_login(s.addr)
    finally:
        s.stop()
    if not opts.no_wait:
        res["loadavg"]["before"], res["waited_secs"] = c.wait_for_quiet(opts.max_wait,
                                                                         opts.load_threshold)
    s = server().start()
    try:
        time.sleep(opts.settle)
        res["start"] = snapshot(s.pid)
        wl = c.Workloads(tmp, tok, "unused", opts.rows)
        conns = {"W1": opts.read_conns, "W2": opts.read_conns, "W3": opts.write_conns,
                 "W4": opts.write_conns}
        errors = {"ours": 0, "pb": 0}
        phases: dict = {}
        for w in ("W1", "W2", "W3", "W4"):
            res["loadavg"][w] = c.loadavg()
            script, env = wl.spec[(w, "ours")]
            for rnd in range(opts.rounds):
                if opts.warmup > 0:
                    wu = c.run_wrk(s, script, env, opts.threads, conns[w], opts.warmup,
                                   f"{w}-r{rnd + 1}-warmup", logdir, seed=1000 + rnd)
                    errors["ours"] += wu["non2xx"] + wu["sock_errors"]
                r = c.run_wrk(s, script, env, opts.threads, conns[w], opts.duration,
                              f"{w}-r{rnd + 1}", logdir, seed=rnd + 1)
                errors["ours"] += r["non2xx"] + r["sock_errors"]
                r["loadavg"] = c.loadavg()
                phases.setdefault(w, []).append(r)
                c.log(f"{w} r{rnd + 1}: {r['rps']:.0f} req/s at -c{conns[w]} (load "
                      f"{r['loadavg']}), VmRSS {c.proc_status(s.pid)['VmRSS']} kB")
        res["phases"] = phases
        res["after_w1_w4"] = snapshot(s.pid)
        res["loadavg"]["peak"] = c.loadavg()
        script, env = wl.spec[("W1", "ours")]
        with c.RssSampler(s.pid) as sampler:
            r = c.run_wrk(s, script, env, opts.threads, opts.peak_conns, opts.duration,
                          "peak", logdir)
        errors["ours"] += r["non2xx"] + r["sock_errors"]
        res["peak"] = {"rps": r["rps"], "p99_us": r["p99_us"], "sampled_kb": sampler.peak_kb,
                       "end": snapshot(s.pid), "loadavg": c.loadavg()}
        idle = []
        for t in range(int(opts.settle_after)):
            time.sleep(1)
            idle.append(c.proc_status(s.pid)["VmRSS"])
        res["idle_after"] = snapshot(s.pid)
        res["idle_trace_kb"] = idle
        res["errors"] = errors["ours"]
        c.log(f"peak at -c{opts.peak_conns}: {sampler.peak_kb} kB ({r['rps']:.0f} req/s); idle "
              f"each second after: {idle} kB")
        if opts.hold:
            c.log(f"holding process {s.pid} for {opts.hold:g} s (to inspect /proc/{s.pid})")
            time.sleep(opts.hold)
    finally:
        s.stop()


def script_workers(opts, tmp: str, logdir: str, res: dict) -> None:
    setup = c.setup_ours(opts, tmp, logdir, scripts=True)
    n = opts.script_workers_peak
    s = c.Server("ours", opts.bin, setup["data_dir"], setup["logfile"]).start()
    try:
        tok = c.ours_login(s.addr)
    finally:
        s.stop()
    spec = c.script_workloads(tmp, tok, "unused")
    cfg = c.write_file(os.path.join(tmp, f"ours-{n}-workers.toml"),
                       f"user_max_inflight = {n}\n[scripts]\nworkers = {n}\n")
    res["loadavg"]["scripts"] = c.loadavg()
    s = c.Server("ours", opts.bin, setup["data_dir"], setup["logfile"],
                 extra_args=["--config", cfg]).start()
    try:
        before = snapshot(s.pid)
        script, env = spec[("W5db", "ours")]
        with c.RssSampler(s.pid) as sampler, c.RunningSampler(s.addr) as running:
            r = c.run_wrk(s, script, env, opts.threads, opts.script_conns, opts.duration,
                          f"W5db-{n}-workers", logdir)
        end = snapshot(s.pid)
        time.sleep(opts.settle_after)
        res["scripts"] = {"workers": n, "threads": c.script_workers(s.pid), "rps": r["rps"],
                          "errors": r["non2xx"] + r["sock_errors"], "before": before,
                          "end": end, "idle_after": snapshot(s.pid),
                          "sampled_kb": sampler.peak_kb, "peak_running": running.peak,
                          "loadavg": c.loadavg()}
        c.log(f"{n} script workers: peak {max(sampler.peak_kb, end['VmHWM'])} kB, "
              f"{r['rps']:.0f} req/s, up to {running.peak} executions at once")
        if opts.hold:
            c.log(f"holding process {s.pid} for {opts.hold:g} s (to inspect /proc/{s.pid})")
            time.sleep(opts.hold)
    finally:
        s.stop()


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def report(doc: dict) -> str:
    r = doc["results"]
    o = doc["opts"]
    lines = [f"# cloudio memory, {doc['started']}", "",
             f"{doc['machine']}; cloudio {doc['version']}", "",
             "| figure | value | target | result |", "|---|---|---|---|"]

    def row(name, kb, target_mb=None, note=""):
        res = "" if target_mb is None else ("PASS" if kb / 1024 < target_mb else "FAIL")
        tgt = "" if target_mb is None else f"< {target_mb:g} MB"
        lines.append(f"| {name} | {mb(kb)}{note} | {tgt} | {res} |")

    if "peak" in r:
        row("VmRSS at start (idle)", r["start"]["VmRSS"])
        rates = ", ".join(f"{w} {statistics_mean([p['rps'] for p in ps]):.0f}"
                          for w, ps in r["phases"].items())
        row(f"VmRSS after W1-W4 (req/s: {rates})", r["after_w1_w4"]["VmRSS"])
        peak = max(r["peak"]["sampled_kb"], r["peak"]["end"]["VmRSS"])
        row(f"peak VmRSS, W1 at -c{o['peak_conns']} in that process "
            f"({r['peak']['rps']:.0f} req/s)", peak, c.PEAK_RSS_TARGET_MB)
        ia = r["idle_after"]
        sm = ia["smaps"]
        row(f"VmRSS {o['settle_after']:g} s after that peak", ia["VmRSS"], c.IDLE_RSS_TARGET_MB,
            f" (anonymous {mb(ia['RssAnon'])}, file-backed {mb(ia['RssFile'])}; "
            f"{ia['Threads']} threads)" if sm else "")
        lines.append(f"| errors (W1-W4 and the peak) | {r['errors']} | 0 | "
                     f"{'PASS' if r['errors'] == 0 else 'FAIL'} |")
    if "scripts" in r:
        s = r["scripts"]
        row(f"peak VmRSS, W5 with a db call at -c{o['script_conns']} with {s['workers']} "
            f"script workers: up to {s.get('peak_running', '?')} executions at once "
            f"({s['rps']:.0f} req/s)", max(s["sampled_kb"], s["end"]["VmHWM"]),
            c.SCRIPT_RSS_TARGET_MB)
        row(f"VmRSS {o['settle_after']:g} s after it", s["idle_after"]["VmRSS"])
        lines.append(f"| errors (W5) | {s['errors']} | 0 | "
                     f"{'PASS' if s['errors'] == 0 else 'FAIL'} |")
    lines += ["", "Load average (1, 5, 15 min) when each phase began: "
              + "; ".join(f"{k} {v}" for k, v in r["loadavg"].items()), ""]
    return "\n".join(lines)


def statistics_mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="/work/target/release/cloudio")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured phase")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="runs of each of W1-W4")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--read-conns", type=int, default=64)
    ap.add_argument("--write-conns", type=int, default=16)
    ap.add_argument("--peak-conns", type=int, default=1000)
    ap.add_argument("--script-conns", type=int, default=64)
    ap.add_argument("--script-workers-peak", type=int, default=64, metavar="N")
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--settle-after", type=float, default=5.0)
    ap.add_argument("--no-scripts", dest="scripts", action="store_false")
    ap.add_argument("--no-long-lived", dest="long_lived", action="store_false")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    ap.add_argument("--load-threshold", type=float, default=1.0)
    ap.add_argument("--max-wait", type=float, default=300)
    ap.add_argument("--out", default=os.path.join(c.HERE, "out"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--hold", type=float, default=0, metavar="S",
                    help="keep the long-lived process running S seconds after its figures")
    opts = ap.parse_args()
    if not os.access(opts.bin, os.X_OK):
        c.log(f"no executable cloudio at {opts.bin}")
        return 2
    if not shutil.which("wrk"):
        c.log("wrk is not installed (apt-get install -y wrk)")
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    signal.signal(signal.SIGTERM, c._interrupt)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    tmp = tempfile.mkdtemp(prefix="cloudio-memory.")
    private_bin = os.path.join(tmp, "cloudio")
    shutil.copy2(opts.bin, private_bin)
    with open(opts.bin, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:12]
    version = (f"sha256 {digest}, {os.path.getsize(opts.bin) / 1048576:.1f} MiB"
               + c.git_info())
    opts.bin = private_bin
    logdir = os.path.join(tmp, "logs")
    os.makedirs(logdir)
    res: dict = {"loadavg": {"start": c.loadavg()}}
    try:
        if opts.long_lived:
            long_lived(opts, tmp, logdir, res)
        if opts.scripts:
            script_workers(opts, tmp, logdir, res)
    finally:
        for s in list(c.LIVE):
            s.kill()
        if opts.keep:
            c.log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["loadavg"]["end"] = c.loadavg()
    m = c.machine_facts()
    machine = f"{m['cpu']}, {m['nproc']} CPUs, {m['mem_gib']} GiB, Linux {m['kernel']}"
    doc = {"started": started, "machine": machine, "version": version,
           "opts": {k: getattr(opts, k) for k in ("rows", "duration", "peak_conns",
                                                   "settle_after", "script_conns", "rounds")},
           "results": res}
    text = report(doc)
    print(text)
    os.makedirs(opts.out, exist_ok=True)
    base = os.path.join(opts.out, "memory-" + datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S"))
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    c.log(f"wrote {base}.md and .json")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
