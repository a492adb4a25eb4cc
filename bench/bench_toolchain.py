#!/usr/bin/env python3
"""Toolchain benchmark: build times, emulator speed, 300-syscall allowlists.

    .venv/bin/python bench/bench_toolchain.py [--json] [--quick]

Prints, from one run on this machine:
  * the build time of every example in bpf/examples/ (median of 3 builds);
  * emulator instructions per second on a tight ALU/stack loop and over the
    example filters;
  * evaluations per second of a 300-syscall allowlist written as a switch and
    as a hash map (300 entries put in through Emulator.maps), each over the
    same 10,000-syscall trace (mostly allowed syscalls, some denied), with the
    ratio between them.
The figures are a benchmark, not a test: nothing here asserts a speed.
docs/benchmarks.md records a run and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ebpfseccomp import insn as I  # noqa: E402
from ebpfseccomp.analysis.emulator import Emulator, Environment, SyscallInput  # noqa: E402
from ebpfseccomp.contract import Action  # noqa: E402
from ebpfseccomp.elf import BpfObject, Program, load_object  # noqa: E402
from ebpfseccomp.syscalls import table  # noqa: E402

ARCH = "x86_64"
ALLOWED_COUNT = 300
TRACE_LEN = 10_000
DENIED_SHARE = 0.1
ROUNDS = 3  # timed passes; the best one counts

HEADER = "#include <ebpfseccomp/filter.h>\n\n"

SWITCH_TEMPLATE = HEADER + """\
SEC("seccomp")
int allow300_switch(struct seccomp_data *ctx)
{{
	if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
		return SECCOMP_KILL_PROCESS;
	switch (ctx->nr) {{
{cases}
		return SECCOMP_ALLOW;
	default:
		return SECCOMP_ERRNO(1);
	}}
}}

SECCOMP_LICENSE("GPL");
"""

HASH_SOURCE = HEADER + """\
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, __u32);
	__type(value, __u32);
} allowed SEC(".maps");

SEC("seccomp")
int allow300_hash(struct seccomp_data *ctx)
{
	__u32 nr, *action;

	if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
		return SECCOMP_KILL_PROCESS;
	nr = ctx->nr;
	action = bpf_map_lookup_elem(&allowed, &nr);
	if (!action)
		return SECCOMP_ERRNO(1);
	return *action;
}

SECCOMP_LICENSE("GPL");
"""


def _now() -> float:
    return time.perf_counter()


# --- build times ---------------------------------------------------------------------


def bench_builds(tmp: Path, repeat: int) -> dict[str, Any]:
    try:
        from ebpfseccomp.build import build, find_clang

        find_clang()
    except Exception as exc:  # noqa: BLE001 - no clang or no build module: skip
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {}
    for src in sorted((ROOT / "bpf" / "examples").glob("*.c")):
        times = []
        for _ in range(repeat):
            t = _now()
            build(src, out=tmp / f"{src.stem}.o", arch=ARCH)
            times.append(_now() - t)
        out[src.stem] = statistics.median(times)
    return out


# --- emulator speed ----------------------------------------------------------------------


def _loop_object(iterations: int) -> BpfObject:
    """r1 counts up to ITERATIONS; each round does ALU work and a stack store/load."""
    K, X = I.BPF_K, I.BPF_X
    A64, A32 = I.BPF_ALU64, I.BPF_ALU
    ins = [
        I.Insn(A64 | I.BPF_MOV | K, 1, 0, 0, 0),
        I.Insn(A64 | I.BPF_MOV | K, 0, 0, 0, 0),
        # loop:
        I.Insn(A64 | I.BPF_ADD | K, 1, 0, 0, 1),
        I.Insn(A64 | I.BPF_MOV | X, 2, 1, 0, 0),
        I.Insn(A32 | I.BPF_MUL | K, 2, 0, 0, 7),
        I.Insn(A64 | I.BPF_XOR | X, 0, 2, 0, 0),
        I.Insn(I.BPF_STX | I.BPF_MEM | I.BPF_DW, 10, 0, -8, 0),
        I.Insn(I.BPF_LDX | I.BPF_MEM | I.BPF_DW, 3, 10, -8, 0),
        I.Insn(A64 | I.BPF_RSH | K, 3, 0, 0, 3),
        I.Insn(I.BPF_JMP | I.BPF_JLT | K, 1, 0, -8, iterations),
        I.Insn(A32 | I.BPF_MOV | K, 0, 0, 0, int(Action.ALLOW)),
        I.Insn(I.BPF_JMP | I.BPF_EXIT, 0, 0, 0, 0),
    ]
    prog = Program("loop", "seccomp", ins, [], {0: "loop"}, {})
    return BpfObject("<loop>", "GPL", [prog], {})


def bench_loop(iterations: int) -> dict[str, Any]:
    env = Environment(budget=10 * iterations + 100)
    emu = Emulator(_loop_object(iterations), env=env)
    dt = float("inf")
    for _ in range(ROUNDS):
        t = _now()
        res = emu.run(SyscallInput(0))
        dt = min(dt, _now() - t)
    return {"insns": res.insns_executed, "seconds": dt, "insns_per_s": res.insns_executed / dt}


def bench_examples(tmp: Path, trace: list[int]) -> dict[str, Any]:
    objs = sorted(tmp.glob("*.o"))
    objs = [o for o in objs if not o.stem.startswith("allow300")]
    if not objs:
        return {"skipped": "no example objects were built"}
    insns = 0
    seconds = 0.0
    evals = 0
    for path in objs:
        emu = Emulator(load_object(path))
        inputs = [SyscallInput(nr, ARCH, (16, 0x1000, 0x40), memory={0x1000: b"/tmp/x\0"})
                  for nr in trace[:2000]]
        dt = float("inf")
        for _ in range(ROUNDS):
            n = 0
            t = _now()
            for inp in inputs:
                n += emu.run(inp).insns_executed
            dt = min(dt, _now() - t)
        insns += n
        seconds += dt
        evals += len(inputs)
    return {"objects": len(objs), "evaluations": evals, "insns": insns, "seconds": seconds,
            "insns_per_s": insns / seconds, "evals_per_s": evals / seconds}


# --- the 300-syscall allowlist -------------------------------------------------------------


def make_trace(allowed: list[int], denied: list[int], n: int, seed: int = 1) -> list[int]:
    """A deterministic mix: 90% allowed syscalls (a few hot ones dominate, as in
    real programs: Zipf-like weights), 10% denied ones."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(allowed))]
    hot = list(allowed)
    rng.shuffle(hot)
    out = []
    for _ in range(n):
        if rng.random() < DENIED_SHARE:
            out.append(rng.choice(denied))
        else:
            out.append(rng.choices(hot, weights)[0])
    return out


def allowlist_numbers(seed: int = 300) -> tuple[list[int], list[int]]:
    """300 syscall numbers picked at random (fixed seed) from the x86_64 table,
    so that the set has holes as real allowlists do (a contiguous 0..299 would
    compile to one range check); the rest of the table is denied."""
    numbers = sorted(set(table(ARCH).values()))
    allowed = sorted(random.Random(seed).sample(numbers, ALLOWED_COUNT))
    denied = sorted(set(numbers) - set(allowed)) + [1000, 2000, 0x3FFF_FFFF]
    return allowed, denied


def bench_allowlists(tmp: Path, trace: list[int], allowed: list[int]) -> dict[str, Any]:
    try:
        from ebpfseccomp.build import build
    except ImportError as exc:
        return {"skipped": str(exc)}
    sw_src = tmp / "allow300_switch.c"
    sw_src.write_text(SWITCH_TEMPLATE.format(
        cases="\n".join(f"\tcase {nr}:" for nr in allowed)))
    hm_src = tmp / "allow300_hash.c"
    hm_src.write_text(HASH_SOURCE)
    out: dict[str, Any] = {}
    emus: dict[str, Emulator] = {}
    for form, src in (("switch", sw_src), ("hash", hm_src)):
        t = _now()
        obj = load_object(build(src, out=tmp / f"{src.stem}.o", arch=ARCH))
        build_s = _now() - t
        t = _now()
        emu = Emulator(obj)
        setup_s = _now() - t
        if form == "hash":
            allowed_map = emu.maps["allowed"]
            for nr in allowed:
                allowed_map.update(nr, int(Action.ALLOW))
        emus[form] = emu
        out[form] = {"build_s": build_s, "emulator_setup_s": setup_s,
                     "program_insns": len(obj.program().insns)}
    inputs = [SyscallInput(nr, ARCH) for nr in trace]
    verdicts: dict[str, list[int]] = {}
    best: dict[str, float] = {}
    insns_total: dict[str, int] = {}
    # Best of ROUNDS passes over the trace, the forms interleaved, so that a
    # busy machine slows both alike.  Map state carries over between passes
    # (the filters only read it).
    for _round in range(ROUNDS):
        for form, emu in emus.items():
            insns = 0
            vals = []
            t = _now()
            for inp in inputs:
                r = emu.run(inp)
                insns += r.insns_executed
                vals.append(r.verdict.value)
            dt = _now() - t
            verdicts[form] = vals
            insns_total[form] = insns
            best[form] = min(best.get(form, dt), dt)
    for form in emus:
        dt = best[form]
        out[form].update({"seconds": dt, "evals_per_s": len(inputs) / dt,
                          "insns_per_eval": insns_total[form] / len(inputs),
                          "insns_per_s": insns_total[form] / dt})
    if verdicts["switch"] != verdicts["hash"]:
        raise SystemExit("the switch and hash-map allowlists disagree on the trace")
    allow = int(Action.ALLOW)
    out["trace"] = {"length": len(trace),
                    "allowed": sum(1 for v in verdicts["switch"] if v == allow)}
    out["switch_over_hash_evals"] = out["switch"]["evals_per_s"] / out["hash"]["evals_per_s"]
    return out


# --- report --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="1 build per example, shorter loop")
    args = ap.parse_args(argv)

    load = os.getloadavg()[0]
    allowed, denied = allowlist_numbers()
    trace = make_trace(allowed, denied, TRACE_LEN)
    with tempfile.TemporaryDirectory(prefix="bench-toolchain-") as d:
        tmp = Path(d)
        builds = bench_builds(tmp, 1 if args.quick else 3)
        loop = bench_loop(20_000 if args.quick else 100_000)
        examples = bench_examples(tmp, trace)
        lists = bench_allowlists(tmp, trace, allowed)
    report = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "loadavg_at_start": load},
        "build_s": builds,
        "emulator_loop": loop,
        "emulator_examples": examples,
        "allowlist_300": lists,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    m = report["machine"]
    print(f"python {m['python']} on {m['platform']}, {m['cpus']} CPUs, "
          f"load average {m['loadavg_at_start']:.2f} at start")
    print(f"(emulator figures: best of {ROUNDS} timed passes)")
    print("\nbuild time per example (median of "
          f"{1 if args.quick else 3}, clang -target bpf):")
    if "skipped" in builds:
        print(f"  skipped: {builds['skipped']}")
    else:
        for name, s in builds.items():
            print(f"  {name:24s} {s * 1000:8.1f} ms")
    print("\nemulator:")
    print(f"  ALU/stack loop           {loop['insns_per_s'] / 1e6:8.2f} M insns/s "
          f"({loop['insns']} insns)")
    if "skipped" not in examples:
        print(f"  example filters          {examples['insns_per_s'] / 1e6:8.2f} M insns/s, "
              f"{examples['evals_per_s']:,.0f} evaluations/s "
              f"({examples['objects']} filters x 2000 syscalls)")
    print(f"\n{ALLOWED_COUNT}-syscall allowlist over a {TRACE_LEN:,}-syscall trace "
          f"({int(DENIED_SHARE * 100)}% denied):")
    if "skipped" in lists:
        print(f"  skipped: {lists['skipped']}")
    else:
        for form in ("switch", "hash"):
            f = lists[form]
            print(f"  {form:7s} {f['evals_per_s']:10,.0f} evaluations/s  "
                  f"{f['insns_per_eval']:5.1f} insns/evaluation  "
                  f"{f['insns_per_s'] / 1e6:5.2f} M insns/s  "
                  f"(program {f['program_insns']} insns, build {f['build_s'] * 1000:.0f} ms, "
                  f"emulator setup {f['emulator_setup_s'] * 1000:.1f} ms)")
        print(f"  switch / hash evaluations per second: {lists['switch_over_hash_evals']:.2f}")
        print(f"  trace verdicts: {lists['trace']['allowed']} allowed of "
              f"{lists['trace']['length']}, identical for both forms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
