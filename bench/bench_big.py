#!/usr/bin/env python3
"""The toolchain on a million-instruction program: `check` and `emulate`.

    .venv/bin/python bench/bench_big.py [--insns N] [--json]

Writes, with the tests' assembler (tests/asm.py), a seccomp object of about
N instructions (default 1,000,003: the kernel's limit is 1,000,000, so
`check` also reports it as too big, after every pass has run): r2 = nr, a
spill of it, then one block per number k, `if (r2 != k) skip; return
ERRNO(k & 0xfff)`, and `return ALLOW` at the end.  Then runs, each in its own
process, `ebpfseccomp check`, `check --json` and `emulate --syscall K` for a
number near the start, one a third of the way and one past the end (every
block on the path), and prints wall time, CPU time (user + system) and
maximal resident memory of each.  CPU time is the figure to compare on a
shared machine; wall time includes waiting for the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from asm import exit_, jne, ldx, mov, simple_object, stx  # noqa: E402

from ebpfseccomp import insn as I  # noqa: E402


def big_object(path: Path, insns: int) -> int:
    prog = [ldx(I.BPF_W, 2, 1, 0), stx(I.BPF_DW, 10, -8, 2)]
    k = 0
    while len(prog) + 3 + 2 <= insns:
        prog += [jne(2, k, 2), mov(0, 0x50000 | (k & 0xFFF)), exit_()]
        k += 1
    prog += [mov(0, 0x7FFF0000), exit_()]
    path.write_bytes(simple_object(prog))
    return len(prog)


def measure(argv: list[str]) -> dict[str, float]:
    """Run ARGV in a child; its wall time, CPU time and max RSS (wait4)."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):  # 1: check found the program too big, as expected
        raise SystemExit(f"{' '.join(argv)} failed ({code}): {err}")
    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "max_rss_mb": usage.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--insns", type=int, default=1_000_003)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    py = [sys.executable, "-m", "ebpfseccomp"]
    with tempfile.TemporaryDirectory() as d:
        obj = Path(d) / "big.o"
        n = big_object(obj, args.insns)
        blocks = (n - 4) // 3
        runs = {
            "check": ["check", str(obj)],
            "check --json": ["check", str(obj), "--json"],
            "emulate --syscall 5": ["emulate", str(obj), "--syscall", "5"],
            f"emulate --syscall {blocks // 3}": ["emulate", str(obj), "--syscall",
                                                 str(blocks // 3)],
            f"emulate --syscall {blocks + 1}": ["emulate", str(obj), "--syscall",
                                                str(blocks + 1)],
        }
        results = {}
        for name, cmd in runs.items():
            results[name] = measure(py + cmd)
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"insns": n, "blocks": blocks, "load_average": load,
                          "runs": results}))
        return 0
    print(f"object: {n} instructions ({blocks} blocks), load average {load:.1f}")
    print(f"{'command':<28} {'wall s':>8} {'CPU s':>8} {'max RSS MB':>11}")
    for name, r in results.items():
        print(f"{name:<28} {r['wall_s']:8.2f} {r['user_s'] + r['sys_s']:8.2f} "
              f"{r['max_rss_mb']:11.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
