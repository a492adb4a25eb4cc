#!/usr/bin/env python3
"""The action cache for eBPF filters, side by side (issue 9; docs/benchmarks.md).

Per-call cost of getppid in the VM under chains of filters, interleaved
rounds, medians, all in one guest run:

  none            no filter
  cbpf-allow      classic `RET ALLOW` (served from the action cache)
  ebpf-allow      eBPF `r0 = ALLOW; exit` (cached with kernel-patches/0006 v2)
  cbpf-args       classic filter reading args[0], then ALLOW (never cached)
  ebpf-args       eBPF filter branching on args[0], then ALLOW (never cached)
  ebpf-switch     eBPF allowlist (jump chain on nr, 40 syscalls, getppid last)
  chain-cbpf      cbpf-args below, classic allow-all on top
  chain-ebpf      cbpf-args below, eBPF allow-all on top
  chain-cached    classic allowlist (getppid allowed, cached) below, eBPF allow-all on top

With the analysis, the eBPF allow-all and the switch allowlist cost what the
cached classic filter costs, and an eBPF filter stacked on a cacheable
classic one keeps the chain cached.  The loop is C, compiled here and run in
the guest; TCG times mean little, the ratios are what to compare.

Usage: .venv/bin/python bench/bench_cache.py [--iterations N] [--rounds R] [--kernel DIR]
       [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "vm"))

import vmlib  # noqa: E402

MODES = ["none", "cbpf-allow", "ebpf-allow", "cbpf-args", "ebpf-args", "ebpf-switch",
         "chain-cbpf", "chain-ebpf", "chain-cached"]  # fmt: skip

BENCH_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
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
#define I(c, d, s, o, i) \
	((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) })
#define RET(v) I(BPF_ALU | BPF_MOV | BPF_K, 0, 0, 0, (int)(v)), I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)

static double per_call_ns(long n)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++)
		syscall(SYS_getppid);
	clock_gettime(CLOCK_MONOTONIC, &b);
	return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
}

static int cbpf(struct sock_filter *f, unsigned short len)
{
	struct sock_fprog prog = { .len = len, .filter = f };
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) ? -errno : 0;
}

static int ebpf(struct bpf_insn *insns, int n)
{
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.prog_type = PROG_TYPE_SECCOMP;
	attr.insn_cnt = n;
	attr.insns = (uint64_t)(uintptr_t)insns;
	attr.license = (uint64_t)(uintptr_t)"GPL";
	int fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
	if (fd < 0)
		return -errno;
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, FLAG_EXTENDED, &fd) ? -errno : 0;
}

static struct sock_filter c_allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
static struct sock_filter c_args[] = {
	BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x5eccu, 0, 1),
	BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 1),
	BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};
static struct sock_filter c_list[] = {
	BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
	BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};
static struct bpf_insn e_allow[] = { RET(SECCOMP_RET_ALLOW) };
static struct bpf_insn e_args[] = {
	I(BPF_LDX | BPF_MEM | BPF_DW, 2, 1, offsetof(struct seccomp_data, args[0]), 0),
	I(BPF_JMP | BPF_JNE | BPF_K, 2, 0, 2, 0x5ecc),
	RET(SECCOMP_RET_ERRNO | 1),
	RET(SECCOMP_RET_ALLOW),
};

static int install(const char *mode)
{
	if (!strcmp(mode, "none"))
		return 0;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -errno;
	if (!strcmp(mode, "cbpf-allow"))
		return cbpf(c_allow, 1);
	if (!strcmp(mode, "ebpf-allow"))
		return ebpf(e_allow, 2);
	if (!strcmp(mode, "cbpf-args"))
		return cbpf(c_args, 4);
	if (!strcmp(mode, "ebpf-args"))
		return ebpf(e_args, 6);
	if (!strcmp(mode, "ebpf-switch")) {
		/* 40 compares on nr (getppid last), then ALLOW or ERRNO */
		static struct bpf_insn p[64];
		int n = 0, k, nrs = 40;
		p[n++] = I(BPF_LDX | BPF_MEM | BPF_W, 2, 1, 0, 0);
		for (k = 0; k < nrs; k++)
			p[n++] = I(BPF_JMP | BPF_JEQ | BPF_K, 2, 0, nrs - k - 1 + 2,
				k == nrs - 1 ? SYS_getppid : k);
		p[n++] = I(BPF_ALU | BPF_MOV | BPF_K, 0, 0, 0, SECCOMP_RET_ERRNO | 1);
		p[n++] = I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
		p[n++] = I(BPF_ALU | BPF_MOV | BPF_K, 0, 0, 0, SECCOMP_RET_ALLOW);
		p[n++] = I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
		return ebpf(p, n);
	}
	if (!strcmp(mode, "chain-cbpf"))
		return cbpf(c_args, 4) ?: cbpf(c_allow, 1);
	if (!strcmp(mode, "chain-ebpf"))
		return cbpf(c_args, 4) ?: ebpf(e_allow, 2);
	if (!strcmp(mode, "chain-cached"))
		return cbpf(c_list, 4) ?: ebpf(e_allow, 2);
	return -EINVAL;
}

int main(int argc, char **argv)
{
	long n = atol(argv[1]);
	int rounds = atoi(argv[2]);
	char cs[64] = "unknown";
	FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");

	if (f) {
		if (fscanf(f, "%63s", cs) != 1)
			strcpy(cs, "unknown");
		fclose(f);
	}
	printf("clocksource %s\n", cs);

	for (int r = 0; r < rounds; r++) {
		for (int m = 3; m < argc; m++) {
			pid_t pid = fork();
			if (pid == 0) {
				int err = install(argv[m]);
				if (err) {
					printf("%s error %d\n", argv[m], -err);
					return 0;
				}
				per_call_ns(n / 10);
				printf("%s %.1f\n", argv[m], per_call_ns(n));
				return 0;
			}
			waitpid(pid, NULL, 0);
			fflush(stdout);
		}
	}
	return 0;
}
"""


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench/bench_cache.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=400000, help="getppid calls per sample")
    ap.add_argument("--rounds", type=int, default=11, help="interleaved rounds")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--kernel", type=Path, help="a build-kernel output dir (default: this tree's)")
    args = ap.parse_args(argv)

    kdir = args.kernel or vmlib.kernel_dir()
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        d = Path(tmp)
        (d / "bench.c").write_text(BENCH_C)
        exe = d / "bench"
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(d / "bench.c")], check=True)
        out = d / "out.txt"
        with out.open("wb") as f:
            res = vmlib.run_in_vm([str(exe), str(args.iterations), str(args.rounds), *MODES],
                                  kdir=kdir, timeout=900, stdout=f, share=[d])
        if res.status != 0:
            raise SystemExit(f"the benchmark failed in the VM (status {res.status})")
        lines = out.read_text().splitlines()
    samples: dict[str, list[float]] = {}
    clocksource = "unknown"
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "clocksource":
            clocksource = parts[1]
        elif len(parts) == 2:
            samples.setdefault(parts[0], []).append(float(parts[1]))
        elif "error" in parts:
            print(f"{parts[0]}: unavailable ({line})")
    if clocksource in ("jiffies", "refined-jiffies", "unknown"):
        raise SystemExit(f"the guest's clocksource is {clocksource}: no timings reported")
    med = {m: statistics.median(v) for m, v in samples.items()}
    base = med.get("none", 0.0)
    print(f"getppid, {args.iterations} calls x {args.rounds} interleaved rounds, medians "
          f"({'KVM' if vmlib.kvm_usable(kdir / 'bzImage') else 'TCG'}, clocksource "
          f"{clocksource}):")
    print("| filters | ns per call | overhead over none |")
    print("|---|---:|---:|")
    for m in MODES:
        if m in med:
            print(f"| {m} | {med[m]:.0f} | {med[m] - base:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"median_ns": med, "samples": samples}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
