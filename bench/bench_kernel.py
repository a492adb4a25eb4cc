#!/usr/bin/env python3
"""Kernel and VM figures (docs/benchmarks.md, "Kernel and VM").

1. cold kernel build time: recorded by vm/build-kernel in the cache
   (build-history.jsonl), the latest build with an empty O= dir;
2. incremental rebuild after touching kernel/seccomp.c: measured now
   (touch, vm/build-kernel --force, the make step's time);
3. VM boot-to-first-command time under TCG (or KVM when usable): measured now;
4. getppid latency inside the VM with no filter, a 1-instruction "allow"
   cBPF filter and (on the patched kernel) an "allow" eBPF filter loaded with
   raw bpf(2), as ratios measured in one run.  The loop is C (compiled here,
   run in the guest) so that an interpreter's overhead does not dilute the
   ratios.

Usage: .venv/bin/python bench/bench_kernel.py [--no-rebuild] [--no-boot] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "vm"))

import vmlib  # noqa: E402

GETPPID_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROG_TYPE_SECCOMP 33
#define FLAG_EXTENDED (1UL << 6)

static double per_call_ns(long n)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++)
		syscall(SYS_getppid);
	clock_gettime(CLOCK_MONOTONIC, &b);
	return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
}

static int install(const char *mode)
{
	if (!strcmp(mode, "none"))
		return 0;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -errno;
	if (!strcmp(mode, "cbpf")) {
		struct sock_filter insns[] = {
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog prog = { .len = 1, .filter = insns };
		if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
			return -errno;
		return 0;
	}
	/* ebpf: r0 = SECCOMP_RET_ALLOW; exit */
	struct bpf_insn insns[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .imm = SECCOMP_RET_ALLOW },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.prog_type = PROG_TYPE_SECCOMP;
	attr.insn_cnt = 2;
	attr.insns = (uint64_t)(uintptr_t)insns;
	attr.license = (uint64_t)(uintptr_t)"GPL";
	int fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
	if (fd < 0)
		return -errno;
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, FLAG_EXTENDED, &fd))
		return -errno;
	return 0;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 100000;
	int rounds = argc > 2 ? atoi(argv[2]) : 5;
	const char *modes[] = { "none", "cbpf", "ebpf" };

	for (int r = 0; r < rounds; r++) {
		for (int m = 0; m < 3; m++) {
			pid_t pid = fork();
			if (pid == 0) {
				int err = install(modes[m]);
				if (err) {
					printf("%s error %d\n", modes[m], -err);
					return 0;
				}
				per_call_ns(n / 10); /* warm up */
				printf("%s %.1f\n", modes[m], per_call_ns(n));
				return 0;
			}
			waitpid(pid, NULL, 0);
			fflush(stdout);
		}
	}
	return 0;
}
"""


def log(msg: str) -> None:
    print(f"bench_kernel: {msg}", file=sys.stderr, flush=True)


def history() -> list[dict[str, Any]]:
    path = vmlib.cache_dir() / "build-history.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def cold_build() -> dict[str, Any] | None:
    """The cold build (empty O= dir) that got the fewest objects from ccache."""
    colds = [h for h in history() if h.get("kind") == "cold"]
    if not colds:
        return None
    return min(
        reversed(colds),
        key=lambda h: (
            h.get("ccache_hits", 0) / max(1, h.get("ccache_hits", 0) + h.get("ccache_misses", 0))
        ),
    )


def incremental_rebuild(kdir: Path) -> dict[str, Any]:
    info = json.loads((kdir / "build.json").read_text())
    flavor = info["flavor"]
    src = vmlib.cache_dir() / "src" / "kernel" / "seccomp.c"
    src.touch()
    cmd = [str(vmlib.VM_DIR / "build-kernel"), "--force"]
    if flavor == "baseline":
        cmd.append("--baseline")
    log(f"touched {src}; rebuilding ({' '.join(cmd)})")
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    wall = time.monotonic() - t0
    new = json.loads((kdir / "build.json").read_text())
    return {"make_seconds": new["build_seconds"], "script_seconds": round(wall, 1)}


def boot_time(kdir: Path, runs: int = 2) -> dict[str, Any]:
    boots, totals = [], []
    for _ in range(runs):
        res = vmlib.run_in_vm(["true"], kdir=kdir, timeout=300)
        if res.status != 0 or res.boot_seconds is None:
            raise SystemExit(f"boot failed (status {res.status})")
        boots.append(res.boot_seconds)
        totals.append(res.seconds)
    return {
        "boot_to_command_seconds": round(min(boots), 2),
        "boot_and_poweroff_seconds": round(min(totals), 2),
        "runs": runs,
    }


def getppid(kdir: Path, n: int, rounds: int) -> dict[str, Any]:
    bdir = vmlib.cache_dir() / "bench"
    bdir.mkdir(exist_ok=True)
    (bdir / "getppid.c").write_text(GETPPID_C)
    exe = bdir / "getppid"
    flavor = json.loads((kdir / "build.json").read_text())["flavor"]
    uapi = vmlib.cache_dir() / "obj" / flavor / "usr" / "include"
    inc = ["-isystem", str(uapi)] if uapi.exists() else []
    subprocess.run(["gcc", "-O2", *inc, "-o", str(exe), str(bdir / "getppid.c")], check=True)
    out_file = bdir / "getppid.out"
    with out_file.open("wb") as f:
        res = vmlib.run_in_vm(
            [str(exe), str(n), str(rounds)], kdir=kdir, timeout=900, stdout=f, share=[bdir]
        )
    if res.status != 0:
        raise SystemExit(f"getppid benchmark failed in the VM (status {res.status})")
    samples: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    for line in out_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            samples.setdefault(parts[0], []).append(float(parts[1]))
        elif len(parts) == 3 and parts[1] == "error":
            errors[parts[0]] = f"errno {parts[2]}"
    med = {k: statistics.median(v) for k, v in samples.items()}
    result: dict[str, Any] = {
        "iterations": n,
        "rounds": rounds,
        "median_ns": {k: round(v, 1) for k, v in med.items()},
    }
    if "none" in med:
        result["ratio_vs_none"] = {k: round(v / med["none"], 3) for k, v in med.items()}
    if "cbpf" in med and "ebpf" in med:
        result["ebpf_over_cbpf"] = round(med["ebpf"] / med["cbpf"], 3)
    if errors:
        result["unavailable"] = errors
    return result


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="bench/bench_kernel.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--baseline", action="store_true", help="use the unpatched kernel")
    ap.add_argument("--no-rebuild", action="store_true", help="skip the incremental rebuild")
    ap.add_argument("--no-boot", action="store_true", help="skip the VM measurements")
    ap.add_argument("--iterations", type=int, default=200000, help="getppid calls per sample")
    ap.add_argument("--rounds", type=int, default=5, help="samples per filter kind")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    kdir = vmlib.kernel_dir(args.baseline)
    info = json.loads((kdir / "build.json").read_text())
    figures: dict[str, Any] = {
        "kernel": info.get("kernelrelease"),
        "flavor": info.get("flavor"),
        "patches": info.get("patches"),
        "kvm": vmlib.kvm_usable(kdir / "bzImage"),
    }
    figures["cold_build"] = cold_build()
    if not args.no_rebuild:
        figures["incremental_rebuild"] = incremental_rebuild(kdir)
    if not args.no_boot:
        figures["boot"] = boot_time(kdir)
        figures["getppid"] = getppid(kdir, args.iterations, args.rounds)

    cb = figures["cold_build"]
    print(
        f"kernel {figures['kernel']} ({figures['flavor']}, {figures['patches']} patches), "
        f"{'KVM' if figures['kvm'] else 'TCG'}"
    )
    if cb:
        print(
            f"cold build:          {cb['build_seconds']} s (make -j{cb['jobs']}, "
            f"ccache hits {cb['ccache_hits']}, misses {cb['ccache_misses']}, {cb['date']})"
        )
    else:
        print("cold build:          not recorded (no build with an empty O= dir in the history)")
    if "incremental_rebuild" in figures:
        ir = figures["incremental_rebuild"]
        print(
            f"touch seccomp.c:     {ir['make_seconds']} s make "
            f"({ir['script_seconds']} s with config check and selftests)"
        )
    if "boot" in figures:
        b = figures["boot"]
        print(
            f"boot to command:     {b['boot_to_command_seconds']} s "
            f"(boot + command + poweroff {b['boot_and_poweroff_seconds']} s)"
        )
        g = figures["getppid"]
        for k, v in g["median_ns"].items():
            ratio = g.get("ratio_vs_none", {}).get(k)
            print(
                f"getppid {k:5}:       {v} ns/call (median of {g['rounds']})"
                + (f", x{ratio} of no filter" if ratio else "")
            )
        if "ebpf_over_cbpf" in g:
            print(f"eBPF / cBPF:         {g['ebpf_over_cbpf']}")
        for k, v in g.get("unavailable", {}).items():
            print(f"getppid {k:5}:       unavailable ({v})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
