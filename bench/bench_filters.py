#!/usr/bin/env python3
"""eBPF filters against the classic filters they replace, side by side (issue 9).

Run inside the VM on the patched kernel, as root (docs/benchmarks.md):

    vm/run -- .venv/bin/python bench/bench_filters.py [--iterations N] [--rounds R] [--json]

One policy, a 300-syscall allowlist (bench_loader.allowed_numbers: what the
loop needs plus a fixed sample), in every form, all in one guest run:

  libseccomp default       libseccomp's classic filter (Debian's libseccomp, built
  libseccomp tree          in-process), default layout and binary tree
                           (SCMP_FLTATR_CTL_OPTIMIZE=2)
  eBPF switch              the bpf/examples style: one `switch (nr)`
  eBPF hash map            the numbers in a BPF hash map, looked up per call
  eBPF .rodata table       the numbers in a const table (allowlist_table.c style):
                           a map the kernel's action cache may read at attach
  ... + openat rule        the same with "openat only without O_CREAT"

and the chains and single filters of issue 9 (libseccomp default with a
classic or an eBPF allow-all on top; each allow-all alone), then a stateful
filter (counts getppid in a map) against a user-notification supervisor doing
the same count (a thread of the process; another process), then the time
from policy to attached filter.

The timed loop is C (bench/filterbench.c, compiled here): one iteration of
the mix is read, write, fstat, getpid, openat and close; the argument-rule
goal is measured on openat + close alone, as the issue measured it (in the
mix five cached calls dilute the one call that runs a filter).  Figures are
medians over interleaved rounds of one run; the run refuses to time anything
when the guest's clocksource is jiffies.  Before timing, every form is
checked to decide every syscall number as the others do (the emulator for
eBPF, bench_loader's classic interpreter for libseccomp's output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_loader as bl  # noqa: E402

from ebpfseccomp import loader  # noqa: E402
from ebpfseccomp import sys as _sys  # noqa: E402
from ebpfseccomp.attach import extended_flag_supported  # noqa: E402
from ebpfseccomp.build import build  # noqa: E402
from ebpfseccomp.policy import libseccomp  # noqa: E402
from ebpfseccomp.syscalls import table  # noqa: E402

O_CREAT = bl.O_CREAT
OPENAT = table("x86_64")["openat"]
GETPPID = table("x86_64")["getppid"]
PAIR = "openat+close, "
CLOCKSOURCE = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")


# --- the forms of the policy ----------------------------------------------------------------


def _openat_rule(rule: bool) -> str:
    if not rule:
        return ""
    return (f"    if (ctx->nr == {OPENAT})\n"
            f"        return ctx->args[2] & {O_CREAT:#x} ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW;\n")


def switch_source(nrs: list[int], rule: bool = False) -> str:
    cases = "\n".join(f"    case {n}:" for n in nrs)
    return f"""#include <ebpfseccomp/filter.h>
SEC("seccomp") int allow300_switch(struct seccomp_data *ctx)
{{
    if (ctx->arch != {bl.AUDIT_ARCH_X86_64:#x}) return SECCOMP_KILL_PROCESS;
{_openat_rule(rule)}    switch (ctx->nr) {{
{cases}
        return SECCOMP_ALLOW;
    }}
    return SECCOMP_ERRNO(1);
}}
SECCOMP_LICENSE("GPL");
"""


def table_source(nrs: list[int], rule: bool = False) -> str:
    entries = " ".join(f"[{n}] = SECCOMP_ALLOW," for n in nrs)
    return f"""#include <ebpfseccomp/filter.h>
static const __u32 actions[512] = {{ {entries} }};
SEC("seccomp") int allow300_table(struct seccomp_data *ctx)
{{
    __u32 nr = ctx->nr, action;
    if (ctx->arch != {bl.AUDIT_ARCH_X86_64:#x}) return SECCOMP_KILL_PROCESS;
{_openat_rule(rule)}    if (nr >= 512) return SECCOMP_ERRNO(1);
    action = actions[nr];
    return action ? action : SECCOMP_ERRNO(1);
}}
SECCOMP_LICENSE("GPL");
"""


COUNTER_SOURCE = f"""#include <ebpfseccomp/filter.h>
struct {{ __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); }} calls SEC(".maps");
SEC("seccomp") int count_getppid(struct seccomp_data *ctx)
{{
    __u32 key = 0;
    __u64 *n;
    if (ctx->nr == {GETPPID}) {{
        n = bpf_map_lookup_elem(&calls, &key);
        if (n) __sync_fetch_and_add(n, 1);
    }}
    return SECCOMP_ALLOW;
}}
SECCOMP_LICENSE("GPL");
"""

ALLOW_ALL_CBPF = struct.pack("<HBBI", 0x06, 0, 0, bl.ALLOW)  # BPF_RET | BPF_K, ALLOW


# --- running the loop ---------------------------------------------------------------------------


def compile_loop(work: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench_filters: needs a C compiler (gcc)")
    exe = work / "filterbench"
    subprocess.run([cc, "-O2", "-o", str(exe), str(REPO / "bench" / "filterbench.c"),
                    "-lpthread"], check=True)
    return exe


def run_loop(exe: Path, workload: str, n: int, filters: list[str],
             fds: tuple[int, ...]) -> tuple[float, int]:
    r = subprocess.run([str(exe), workload, str(n), *filters], capture_output=True, text=True,
                       pass_fds=fds, check=False, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"bench_filters: {workload} {' '.join(filters)}: exit "
                         f"{r.returncode}: {r.stderr.strip()}")
    ns, seen = r.stdout.split()
    return float(ns), int(seen)


def medians(exe: Path, configs: dict[str, tuple[str, int, list[str], tuple[int, ...]]],
            rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(rounds):
        for name, (workload, n, filters, fds) in configs.items():
            ns, seen = run_loop(exe, workload, n, filters, fds)
            if any(f.startswith("notif") for f in filters) and seen != n + n // 10:
                raise SystemExit(f"bench_filters: {name}: the supervisor saw {seen} of "
                                 f"{n + n // 10} calls")
            samples[name].append(ns)
    return {k: statistics.median(v) for k, v in samples.items()}


def time_in_child(fn: Callable[[], None], repeat: int) -> float:
    """Median ms of FN (which attaches a filter, so it runs in a fresh child each time)."""
    out = []
    for _ in range(repeat):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            t0 = time.perf_counter()
            try:
                fn()
                ms = (time.perf_counter() - t0) * 1000
                os.write(w, f"{ms}".encode())
            finally:
                os._exit(0)
        os.close(w)
        data = os.read(r, 64)
        os.close(r)
        os.waitpid(pid, 0)
        if not data:
            raise SystemExit("bench_filters: a load-to-attach child failed")
        out.append(float(data))
    return statistics.median(out)


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=20_000,
                    help="mix iterations per sample (default 20000)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if platform.machine() != "x86_64":
        raise SystemExit("bench_filters: x86_64 only (the policy and the loop)")
    if not extended_flag_supported() or os.geteuid() != 0:
        raise SystemExit("bench_filters: needs the patched kernel and root: "
                         "vm/run -- .venv/bin/python bench/bench_filters.py")
    clocksource = CLOCKSOURCE.read_text().strip() if CLOCKSOURCE.exists() else "unknown"
    if clocksource in ("jiffies", "refined-jiffies", "unknown"):
        raise SystemExit(f"bench_filters: the clocksource is {clocksource}: no timings")

    work = Path(tempfile.mkdtemp(prefix="bench-filters-"))
    nrs = bl.allowed_numbers()
    sources = {
        "ebpf-switch": switch_source(nrs), "ebpf-hash": bl.hash_source(nrs),
        "ebpf-table": table_source(nrs),
        "ebpf-switch+rule": switch_source(nrs, True), "ebpf-table+rule": table_source(nrs, True),
        "ebpf-counter": COUNTER_SOURCE,
    }
    objs = {}
    for name, text in sources.items():
        src = work / f"{name.replace('-', '_').replace('+', '_')}.c"
        src.write_text(text)
        objs[name] = build(src, out=src.with_suffix(".o"))
    objs["ebpf-allow"] = build(REPO / "bpf" / "examples" / "allow_all.c", out=work / "allow.o")
    cbpf = {"libseccomp-default": libseccomp.build(bl.selection(nrs)).bytes(),
            "libseccomp-tree": libseccomp.build(bl.selection(nrs), optimize=True).bytes(),
            "libseccomp-tree+rule":
                libseccomp.build(bl.selection(nrs, True), optimize=True).bytes()}
    bl.check_same_policy({k: objs[k] for k in ("ebpf-switch", "ebpf-hash", "ebpf-table")},
                         {k: v for k, v in cbpf.items() if "rule" not in k}, nrs, False)
    bl.check_same_policy({k: objs[k] for k in ("ebpf-switch+rule", "ebpf-table+rule")},
                         {"libseccomp-tree+rule": cbpf["libseccomp-tree+rule"]}, nrs, True)
    files = {}
    for name, prog in {**cbpf, "cbpf-allow": ALLOW_ALL_CBPF}.items():
        files[name] = work / f"{name}.bpf"
        files[name].write_bytes(prog)
    exe = compile_loop(work)
    n, g = args.iterations, args.iterations * 4

    progs = {k: loader.load(p) for k, p in objs.items()}
    try:
        def eb(name: str) -> tuple[list[str], tuple[int, ...]]:
            return [f"ebpf:{progs[name].fd}"], (progs[name].fd,)

        def cb(name: str) -> list[str]:
            return [f"cbpf:{files[name]}"]

        mix: dict[str, tuple[str, int, list[str], tuple[int, ...]]] = {
            "no filter": ("mix", n, [], ())}
        for k in cbpf:
            mix[k] = ("mix", n, cb(k), ())
        for k in ("ebpf-switch", "ebpf-hash", "ebpf-table", "ebpf-switch+rule",
                  "ebpf-table+rule"):
            mix[k] = ("mix", n, *eb(k))
        mix["cbpf-allow"] = ("mix", n, cb("cbpf-allow"), ())
        mix["ebpf-allow"] = ("mix", n, *eb("ebpf-allow"))
        mix["chain: libseccomp-default + cbpf-allow"] = (
            "mix", n, cb("libseccomp-default") + cb("cbpf-allow"), ())
        f, fds = eb("ebpf-allow")
        mix["chain: libseccomp-default + ebpf-allow"] = (
            "mix", n, cb("libseccomp-default") + f, fds)
        # the argument-rule measurement: openat runs the filter, close is cached
        pair: dict[str, tuple[str, int, list[str], tuple[int, ...]]] = {
            f"{PAIR}no filter": ("open", 3 * n, [], ())}
        for k in ("libseccomp-tree", "libseccomp-tree+rule"):
            pair[PAIR + k] = ("open", 3 * n, cb(k), ())
        for k in ("ebpf-switch", "ebpf-switch+rule", "ebpf-table+rule"):
            pair[PAIR + k] = ("open", 3 * n, *eb(k))
        # the floor: both calls answered from the cache, no filter run at all
        pair[PAIR + "cbpf-allow"] = ("open", 3 * n, cb("cbpf-allow"), ())
        f, fds = eb("ebpf-counter")
        state = {"getppid, no filter": ("getppid", g, [], ()),
                 "getppid, eBPF counter": ("getppid", g, f, fds),
                 "getppid, supervisor thread": ("getppid", g // 10, ["notif-thread"], ()),
                 "getppid, supervisor process": ("getppid", g // 10, ["notif-process"], ())}
        counter = progs["ebpf-counter"].maps["calls"]
        before = counter.lookup_int(0) or 0
        lat = medians(exe, {**mix, **pair, **state}, args.rounds)
        counted = (counter.lookup_int(0) or 0) - before
        want = args.rounds * (g + g // 10)
        if counted != want:
            raise SystemExit(f"bench_filters: the eBPF counter saw {counted} of {want} calls")
    finally:
        for p in progs.values():
            p.close()

    # policy to attached filter, in a fresh child each time
    sel = bl.selection(nrs)

    def libseccomp_load() -> None:
        _sys.set_no_new_privs()
        if _sys.seccomp_attach_cbpf(libseccomp.build(sel).bytes()) < 0:
            raise OSError("seccomp_attach_cbpf")

    def ebpf_load(check: bool) -> Callable[[], None]:
        def run() -> None:
            with loader.load(objs["ebpf-switch"], check=check) as p:
                p.attach()
        return run

    load = {"libseccomp (build + seccomp_load)": time_in_child(libseccomp_load, 15),
            "loader.load + attach (switch)": time_in_child(ebpf_load(True), 15),
            "loader.load(check=False) + attach": time_in_child(ebpf_load(False), 15)}
    shutil.rmtree(work, ignore_errors=True)
    report(lat, load, args, clocksource)
    return 0


def report(lat: dict[str, float], load: dict[str, float], args: argparse.Namespace,
           clocksource: str) -> None:
    base = lat["no filter"]
    over = {k: v - base for k, v in lat.items() if not k.startswith(("getppid", PAIR))}
    p0 = lat[PAIR + "no filter"]
    pair_over = {k[len(PAIR):]: v - p0 for k, v in lat.items() if k.startswith(PAIR)}
    tree = over["libseccomp-tree"]
    ratios = {
        "ebpf-switch / libseccomp-tree (mix overhead; goal <= 1.0)": over["ebpf-switch"] / tree,
        "ebpf-switch+rule / libseccomp-tree+rule, openat+close overhead (goal <= 0.6)":
            pair_over["ebpf-switch+rule"] / pair_over["libseccomp-tree+rule"],
        "ebpf-table+rule / libseccomp-tree+rule, openat+close overhead":
            pair_over["ebpf-table+rule"] / pair_over["libseccomp-tree+rule"],
        "ebpf-switch+rule / libseccomp-tree+rule, openat+close, above the cached floor":
            (pair_over["ebpf-switch+rule"] - pair_over["cbpf-allow"])
            / max(pair_over["libseccomp-tree+rule"] - pair_over["cbpf-allow"], 1e-9),
        "ebpf-switch+rule / libseccomp-tree+rule, mix overhead":
            over["ebpf-switch+rule"] / over["libseccomp-tree+rule"],
        "chain ebpf-allow / chain cbpf-allow (goal <= 1.1)":
            over["chain: libseccomp-default + ebpf-allow"]
            / over["chain: libseccomp-default + cbpf-allow"],
        "ebpf-allow / cbpf-allow, alone (goal within 10 %)":
            lat["ebpf-allow"] / lat["cbpf-allow"],
        "ebpf-table / ebpf-switch, whole iteration (goal <= 1.2)":
            lat["ebpf-table"] / lat["ebpf-switch"],
        "ebpf-hash / ebpf-switch, whole iteration": lat["ebpf-hash"] / lat["ebpf-switch"],
    }
    g0 = lat["getppid, no filter"]
    per_call = {k: lat[k] - g0 for k in lat
                if k.startswith("getppid,") and k != "getppid, no filter"}
    ebpf_cost = max(per_call["getppid, eBPF counter"], 1e-9)
    ratios["supervisor thread / eBPF counter, per filtered call (goal >= 12)"] = \
        per_call["getppid, supervisor thread"] / ebpf_cost
    ratios["supervisor process / eBPF counter, per filtered call (goal >= 50)"] = \
        per_call["getppid, supervisor process"] / ebpf_cost
    ratios["loader.load + attach / libseccomp (goal <= 2)"] = \
        load["loader.load + attach (switch)"] / load["libseccomp (build + seccomp_load)"]
    if args.json:
        print(json.dumps({"kernel": os.uname().release, "cpus": os.cpu_count(),
                          "clocksource": clocksource, "iterations": args.iterations,
                          "rounds": args.rounds, "ns": lat, "overhead_ns": over,
                          "openat_close_overhead_ns": pair_over,
                          "load_ms": load, "ratios": ratios}, indent=2))
        return
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, clocksource {clocksource}; "
          f"{args.rounds} interleaved rounds, medians\n")
    print("| mix iteration (read, write, fstat, getpid, openat, close) | ns | overhead |")
    print("|---|---:|---:|")
    for k, v in lat.items():
        if k in over:
            print(f"| {k} | {v:.0f} | {over[k]:.0f} |")
    print("\n| openat + close (openat runs the filter; close is cached) | ns | overhead |")
    print("|---|---:|---:|")
    for k, v in pair_over.items():
        print(f"| {k} | {lat[PAIR + k]:.0f} | {v:.0f} |")
    print("\n| getppid | ns per call | added per call |")
    print("|---|---:|---:|")
    print(f"| no filter | {g0:.0f} | |")
    for k, v in per_call.items():
        print(f"| {k.split(', ', 1)[1]} | {lat[k]:.0f} | {v:.0f} |")
    print("\n| policy to attached filter, fresh process, median of 15 | ms |")
    print("|---|---:|")
    for k, v in load.items():
        print(f"| {k} | {v:.2f} |")
    print("\n| ratio | value |")
    print("|---|---:|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
