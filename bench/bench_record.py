#!/usr/bin/env python3
"""Overhead of `ebpfseccomp record`: a syscall-heavy loop, recorded by each
backend that runs here, as a ratio to the same loop unrecorded.

Usage: .venv/bin/python bench/bench_record.py [--calls N] [--json]

The loop is N getppid() calls from Python (os.getppid makes the syscall
every time); the program times its own loop, so the figures leave out the
recorder's start-up (building and loading the filter, fork, exec).  Each
configuration runs --rounds times, interleaved, and the fastest loop counts
(to dampen other load on the machine); the whole command's wall time of that
round is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = str(REPO / ".venv" / "bin" / "python")
TARGET_PY = "/usr/bin/python3"

LOOP = """
import os, sys, time
n = int(sys.argv[1])
t = time.perf_counter()
for _ in range(n):
    os.getppid()
print(f"LOOP {time.perf_counter() - t:.6f}")
"""


def _loop_seconds(out: str) -> float:
    for line in out.splitlines():
        if line.startswith("LOOP "):
            return float(line.split()[1])
    raise RuntimeError(f"no LOOP line in {out!r}")


def measure(prefix: list[str], calls: int, profile: Path) -> dict[str, float | str]:
    cmd = [*prefix, TARGET_PY, "-c", LOOP, str(calls)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return {"loop_s": _loop_seconds(proc.stdout), "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from ebpfseccomp.record import ebpf, tracepoint

    profile = Path("/tmp/bench-record-profile.json")
    why_not = {"ebpf": ebpf.unavailable(), "tracepoint": tracepoint.unavailable(),
               "notify": None}
    prefixes: dict[str, list[str]] = {"unrecorded": []}
    for b in [name for name, why in why_not.items() if why is None]:
        prefixes[b] = [PY, "-m", "ebpfseccomp", "record", "--backend", b, "-o",
                       str(profile), "--"]
    results: dict[str, dict[str, float | str]] = {}
    for _ in range(args.rounds):
        for name, prefix in prefixes.items():
            r = measure(prefix, args.calls, profile)
            best = results.get(name)
            if best is None or ("loop_s" in r and ("loop_s" not in best
                                                   or r["loop_s"] < best["loop_s"])):
                results[name] = r
    base = results["unrecorded"]["loop_s"]
    for r in results.values():
        if "loop_s" in r:
            r["ratio"] = round(float(r["loop_s"]) / float(base), 1)
    report = {"calls": args.calls, "rounds": args.rounds, "kernel": os.uname().release,
              "results": results, "unavailable": {k: v for k, v in why_not.items() if v}}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.calls} getppid() calls, best of {args.rounds}, kernel {report['kernel']}")
    print(f"{'':12} {'loop s':>10} {'per call us':>12} {'ratio':>7} {'command s':>10}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:12} error: {r['error']}")
            continue
        per = float(r["loop_s"]) / args.calls * 1e6
        print(f"{name:12} {float(r['loop_s']):10.3f} {per:12.2f} {r['ratio']:7} "
              f"{float(r['wall_s']):10.2f}")
    for name, why in report["unavailable"].items():
        print(f"{name}: not measured ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
