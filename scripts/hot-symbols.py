#!/usr/bin/env python3
"""Writes crates/cli/hot-symbols.txt: the functions a serving `cloudio` runs, hottest first,
for the linker to lay out together (`--symbol-ordering-file`, crates/cli/build.rs).

Why: the kernel maps a program's code 64 KiB at a time around each page it first runs
("fault-around"), and the code a server runs is spread all over a 24 MB `.text`; so nearly the
whole of it ends up in the process's RSS. With the functions that run placed together, the
pages mapped are the pages used (bench/RESULTS.md, "Hot code together").

How: `valgrind --tool=callgrind` (instruction counts per function, with the names the linker
knows, not demangled) records a release `cloudio` that starts on the bench's app and serves
W1-W6 of bench/compare.py with wrk, plus a second one started with `serve --demo`; the
functions run in either are written out, the most instructions first. Run it again after the
toolchain, Cargo.lock or the release profile changed (symbol names carry hashes of those; a name gone stale is looked up again at link time by
scripts/cc-hot-first, less precisely):

    cargo build --release -p cli
    python3 scripts/hot-symbols.py --bin $CARGO_TARGET_DIR/release/cloudio

`--check` instead prints how many of the file's names the binary still has. Needs valgrind
and wrk (Debian packages). Standard library only; the app, data and workloads are
bench/compare.py's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import compare as c  # noqa: E402

OUT = os.path.join(ROOT, "crates", "cli", "hot-symbols.txt")
HEADER = ("# Functions a serving `cloudio` runs, hottest first: the linker lays them out together\n"
          "# (crates/cli/build.rs). Made by scripts/hot-symbols.py; not edited by hand.\n")


def wrapper(tmp: str, binary: str, out: str) -> str:
    """An executable that runs `binary` under callgrind, its profile written to `out`."""
    path = os.path.join(tmp, "callgrind-cloudio")
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexec valgrind --tool=callgrind --demangle=no --compress-strings=no "
                f"--compress-pos=no --dump-instr=no --callgrind-out-file={out} "
                f"{binary} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def costs(profile: str) -> dict[str, int]:
    """Self instructions per function name in a callgrind profile."""
    out: dict[str, int] = {}
    fn = None
    sub = False  # after `calls=`, the next cost line is the call's, not the function's own
    with open(profile, errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                fn = line[3:].strip()
                out.setdefault(fn, 0)
                sub = False
            elif line.startswith("calls="):
                sub = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if sub:
                    sub = False
                    continue
                parts = line.split()
                if fn is not None and len(parts) >= 2 and parts[1].isdigit():
                    out[fn] += int(parts[1])
    return out


def serve_bench(opts, tmp: str, logdir: str, profile: str) -> None:
    setup = c.setup_ours(opts, tmp, logdir, scripts=True)
    # Under valgrind everything runs ~50 times slower: scripts get the time they need.
    cfg = c.write_file(os.path.join(tmp, "slow.toml"),
                       "[scripts]\nhook_timeout_ms = 120000\nfunction_timeout_ms = 120000\n")
    s = c.Server("ours", wrapper(tmp, opts.bin, profile), setup["data_dir"],
                 setup["logfile"], extra_args=["--config", cfg]).start(timeout=600)
    try:
        tok = c.ours_login(s.addr)
        wl = c.Workloads(tmp, tok, "unused", opts.rows)
        js = c.script_workloads(tmp, tok, "unused")
        runs = [wl.spec[(w, "ours")] for w in ("W1", "W2", "W3", "W4")]
        runs += [js[(w, "ours")] for w in ("W5", "W6", "W5db")]
        for i, (script, env) in enumerate(runs):
            conns = 1000 if i == 0 else 8
            r = c.run_wrk(s, script, env, 2, conns, opts.secs, f"hot-{i}", logdir)
            c.log(f"workload {i + 1}/{len(runs)}: {r.get('requests', '?')} requests, "
                  f"{r['non2xx']} non-2xx")
            if r["non2xx"] or r["sock_errors"]:
                raise RuntimeError(f"workload {i + 1} failed under valgrind: see {logdir}")
        for path in ("/v1/status", "/metrics"):
            c.http_once(s.addr, "GET", path)
    finally:
        s.stop(timeout=120)


def serve_demo(opts, tmp: str, logdir: str, profile: str) -> None:
    data = os.path.join(tmp, "demo-data")
    s = c.Server("ours", wrapper(tmp, opts.bin, profile), data,
                 os.path.join(logdir, "demo.log"), extra_args=["--demo"]).start(timeout=600)
    try:
        c.ours_login(s.addr)
        c.http_once(s.addr, "GET", "/v1/status")
        c.http_once(s.addr, "GET", "/playground")
    finally:
        s.stop(timeout=120)


LLVM_SUFFIX = re.compile(r"\.llvm\.[0-9]+$")
GENERIC_HASH = re.compile(r"17h[0-9a-f]+E$")


def base(name: str) -> str:
    """A name without the `.llvm.<hash>` ThinLTO gives the local functions it shares between
    modules (the hash changes with the module's code)."""
    return LLVM_SUFFIX.sub("", name)


def symbols(binary: str) -> set[str]:
    p = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True,
                       check=True)
    return {line.split()[-1] for line in p.stdout.splitlines() if line.split()}


def check(opts) -> int:
    with open(OUT) as f:
        names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    have = symbols(opts.bin)
    found = sum(1 for n in names if n in have)
    renamed = {base(n) for n in have}
    generic = {GENERIC_HASH.sub("E", n) for n in renamed}
    moved = [n for n in names if n not in have and base(n) in renamed]
    instances = [n for n in names if n not in have and base(n) not in renamed
                 and GENERIC_HASH.sub("E", base(n)) in generic]
    print(f"{found} of {len(names)} names in {OUT} are symbols of {opts.bin} "
          f"({100.0 * found / max(1, len(names)):.1f}%); of the rest, {len(moved)} were found "
          f"under another .llvm.<hash> and {len(instances)} as generic functions whose "
          "instances' hashes changed (scripts/cc-hot-first places all their copies instead)")
    return 0 if found * 10 >= len(names) * 9 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "/work/target"), "release", "cloudio"))
    ap.add_argument("--secs", type=int, default=4, help="seconds of each workload")
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--check", action="store_true")
    opts = ap.parse_args()
    if opts.check:
        return check(opts)
    have = symbols(opts.bin)
    total: dict[str, int] = {}
    tmp = tempfile.mkdtemp(prefix="hot-symbols-")
    logdir = os.path.join(tmp, "logs")
    os.makedirs(logdir)
    for i, run in enumerate((serve_bench, serve_demo)):
        profile = os.path.join(tmp, f"callgrind-{i}.out")
        t0 = time.monotonic()
        run(opts, tmp, logdir, profile)
        found = costs(profile)
        c.log(f"{run.__name__}: {len(found)} functions ran ({time.monotonic() - t0:.0f} s)")
        for k, v in found.items():
            total[k] = total.get(k, 0) + v
    shutil.rmtree(tmp)  # kept (with its logs) when a run failed
    # Only names the linker knows: not valgrind's own, nor the shared libraries'.
    names = [k for k in total if k in have]
    names.sort(key=lambda k: (-total[k], k))
    with open(OUT, "w") as f:
        f.write(HEADER)
        for n in names:
            f.write(n + "\n")
    c.log(f"{len(names)} functions written to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
