#!/usr/bin/env python3
"""Loader and attach figures: getppid latency under filters, path lengths, load times.

Run inside the VM on the patched kernel (as root):

    vm/run -- .venv/bin/python bench/bench_loader.py [--calls N] [--update-docs]

1. getppid latency in one run, as ratios to no filter: a libseccomp cBPF
   filter for a 300-syscall allowlist (libseccomp's default output and its
   binary-tree optimisation, SCMP_FLTATR_CTL_OPTIMIZE=2), and the same policy
   as an eBPF switch filter and as an eBPF hash-map filter.  A small C
   program makes the calls with the raw syscall instruction, so Python's
   overhead is not measured; the configurations are interleaved over rounds
   and the median taken.
2. Deterministic path length: instructions executed per syscall over a
   realistic syscall mix, from the emulator (eBPF) and from this script's
   classic BPF interpreter run on libseccomp's exported program.
3. Load time (open to fd) of every example object, median of 5.

Outside the VM (no patch) only the path lengths are measured.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ebpfseccomp import loader  # noqa: E402
from ebpfseccomp.analysis import emulator as emulate  # noqa: E402
from ebpfseccomp.attach import extended_flag_supported  # noqa: E402
from ebpfseccomp.build import build  # noqa: E402
from ebpfseccomp.elf import load_object  # noqa: E402
from ebpfseccomp.syscalls import table  # noqa: E402

ARCH = "x86_64"
AUDIT_ARCH_X86_64 = 0xC000003E
ALLOW = 0x7FFF0000
DENY = 0x00050001  # ERRNO(EPERM)
O_CREAT = 0o100
N_ALLOWED = 300

#: A syscall mix of a typical server process (weights), for the path lengths.
MIX = {
    "read": 20, "write": 15, "futex": 12, "epoll_wait": 8, "recvfrom": 6, "sendto": 6,
    "openat": 5, "close": 5, "fstat": 4, "mmap": 3, "munmap": 2, "brk": 2, "lseek": 2,
    "getpid": 2, "getppid": 1, "clock_nanosleep": 2, "poll": 2, "rt_sigaction": 1,
    "rt_sigprocmask": 1, "newfstatat": 2, "madvise": 1, "accept4": 1,
}  # fmt: skip

GETPPID_C = r"""
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

static long raw0(long n)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n) : "rcx", "r11", "memory");
    return ret;
}

int main(int argc, char **argv)
{
    /* getppid_bench MODE ARG N: MODE none | cbpf FILE | ebpf FD */
    if (argc != 4) return 2;
    long n = atol(argv[3]);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return 3;
    if (argv[1][0] == 'c') {
        FILE *f = fopen(argv[2], "rb");
        static struct sock_filter prog[4096];
        size_t len = fread(prog, sizeof(prog[0]), 4096, f);
        fclose(f);
        struct sock_fprog fp = { .len = (unsigned short)len, .filter = prog };
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp)) { perror("cbpf"); return 4; }
    } else if (argv[1][0] == 'e') {
        int fd = atoi(argv[2]);
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 1 << 6, &fd)) {
            perror("ebpf");
            return 5;
        }
    }
    for (long i = 0; i < n / 10; i++) raw0(SYS_getppid);  /* warm up */
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) raw0(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.3f\n", ns / n);
    return 0;
}
"""


# --- the policy ------------------------------------------------------------------------------


def allowed_numbers() -> list[int]:
    """300 syscalls: getppid and what the bench program needs, the rest a fixed sample."""
    t = table(ARCH)
    needed = {t[n] for n in ("getppid", "write", "exit_group", "exit", "clock_gettime",
                             "read", "fstat", "newfstatat", "brk", "mmap", "munmap",
                             "close", "openat", "execve", "prctl", "seccomp")}
    rest = sorted(set(t.values()) - needed)
    # a fixed pseudo-random choice: not one contiguous range, which compilers fold
    chosen = random.Random(N_ALLOWED).sample(rest, N_ALLOWED - len(needed))
    return sorted(needed | set(chosen))


def switch_source(nrs: list[int]) -> str:
    cases = "\n".join(f"    case {n}:" for n in nrs)
    return f"""#include <ebpfseccomp/filter.h>
SEC("seccomp") int allow300_switch(struct seccomp_data *ctx)
{{
    if (ctx->arch != {AUDIT_ARCH_X86_64:#x}) return SECCOMP_KILL_PROCESS;
    switch (ctx->nr) {{
{cases}
        return SECCOMP_ALLOW;
    }}
    return SECCOMP_ERRNO(1);
}}
SECCOMP_LICENSE("GPL");
"""


def hash_source(nrs: list[int]) -> str:
    entries = ",\n".join(f"    {{ {n}, SECCOMP_ALLOW }}" for n in nrs)
    return f"""#include <ebpfseccomp/filter.h>
struct {{ __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 512);
         __type(key, __u32); __type(value, __u32); }} allowed SEC(".maps");
struct entry {{ __u32 nr, action; }};
const struct entry allowed_init[] SECCOMP_MAP_INIT(allowed) = {{
{entries}
}};
SEC("seccomp") int allow300_hash(struct seccomp_data *ctx)
{{
    __u32 nr, *action;
    if (ctx->arch != {AUDIT_ARCH_X86_64:#x}) return SECCOMP_KILL_PROCESS;
    nr = ctx->nr;
    action = bpf_map_lookup_elem(&allowed, &nr);
    return action ? *action : SECCOMP_ERRNO(1);
}}
SECCOMP_LICENSE("GPL");
"""


# --- libseccomp through ctypes ----------------------------------------------------------------

SCMP_FLTATR_CTL_OPTIMIZE = 8


def libseccomp_program(nrs: list[int], optimize: int) -> bytes:
    """libseccomp's cBPF for the allowlist (seccomp_export_bpf), as struct sock_filter[]."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                     ctypes.c_uint]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(DENY)
    if not ctx:
        raise RuntimeError("seccomp_init failed")
    try:
        if optimize != 1:
            rc = lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, optimize)
            if rc:
                raise RuntimeError(f"seccomp_attr_set(OPTIMIZE={optimize}): {rc}")
        for n in nrs:
            rc = lib.seccomp_rule_add(ctx, ALLOW, n, 0)
            if rc:
                raise RuntimeError(f"seccomp_rule_add({n}): {rc}")
        with tempfile.TemporaryFile() as f:
            rc = lib.seccomp_export_bpf(ctx, f.fileno())
            if rc:
                raise RuntimeError(f"seccomp_export_bpf: {rc}")
            f.seek(0)
            return f.read()
    finally:
        lib.seccomp_release(ctx)


def cbpf_run(prog: bytes, data: bytes) -> tuple[int, int]:
    """A classic BPF interpreter for seccomp filters: (return value, instructions executed)."""
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    a = x = 0
    mem = [0] * 16
    pc = steps = 0
    m32 = 0xFFFFFFFF
    while True:
        code, jt, jf, k = insns[pc]
        steps += 1
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # LD
            mode = code & 0xE0
            if mode == 0x20:  # ABS W
                a = struct.unpack_from("<I", data, k)[0]
            elif mode == 0x00:
                a = k
            elif mode == 0x60:
                a = mem[k]
            elif mode == 0x80:  # LEN
                a = len(data)
            else:
                raise ValueError(f"cBPF ld mode {mode:#x}")
        elif cls == 0x01:  # LDX
            mode = code & 0xE0
            x = k if mode == 0x00 else mem[k] if mode == 0x60 else len(data)
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                a = (a + src) & m32
            elif op == 0x10:
                a = (a - src) & m32
            elif op == 0x20:
                a = (a * src) & m32
            elif op == 0x30:
                a = a // src if src else 0
            elif op == 0x40:
                a |= src
            elif op == 0x50:
                a &= src
            elif op == 0x60:
                a = (a << src) & m32
            elif op == 0x70:
                a >>= src
            elif op == 0x80:
                a = (-a) & m32
            elif op == 0xA0:
                a ^= src
            else:
                raise ValueError(f"cBPF alu op {op:#x}")
        elif cls == 0x05:  # JMP
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                pc += k
            else:
                cond = {0x10: a == src, 0x20: a > src, 0x30: a >= src,
                        0x40: bool(a & src)}[op]
                pc += jt if cond else jf
        elif cls == 0x06:  # RET
            return (a if code & 0x18 == 0x10 else k), steps
        elif cls == 0x07:  # MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x


def seccomp_data(nr: int, args: tuple[int, ...] = (0,) * 6) -> bytes:
    return struct.pack("<iIQ6Q", nr, AUDIT_ARCH_X86_64, 0x401000, *args)


# --- measurements -------------------------------------------------------------------------------


def path_lengths(objs: dict[str, Path], cbpf: dict[str, bytes]) -> dict[str, tuple[float, int]]:
    """Mean and getppid instructions executed per syscall over MIX."""
    t = table(ARCH)
    calls = [(t[n], w) for n, w in MIX.items()]
    total = sum(w for _, w in calls)
    out: dict[str, tuple[float, int]] = {}
    for name, prog in cbpf.items():
        s = sum(cbpf_run(prog, seccomp_data(nr))[1] * w for nr, w in calls)
        out[name] = (s / total, cbpf_run(prog, seccomp_data(t["getppid"]))[1])
    for name, path in objs.items():
        emu = emulate.Emulator(load_object(str(path)), program=None,
                               env=emulate.Environment())
        s = 0
        for nr, w in calls:
            s += emu.run(emulate.SyscallInput(nr=nr, arch=ARCH)).insns_executed * w
        gp = emu.run(emulate.SyscallInput(nr=t["getppid"], arch=ARCH)).insns_executed
        out[name] = (s / total, gp)
    return out


def check_same_policy(objs: dict[str, Path], cbpf: dict[str, bytes], nrs: list[int],
                      creat_rule: bool = False) -> None:
    """Every form allows exactly NRS (and, with CREAT_RULE, openat only without
    O_CREAT): the emulator runs the eBPF objects, cbpf_run libseccomp's output.
    Raises SystemExit naming the first form and call that differ."""
    allowed = set(nrs)
    openat = table(ARCH)["openat"]
    deciders = {n: (lambda nr, args, prog=prog: cbpf_run(prog, seccomp_data(nr, args))[0])
                for n, prog in cbpf.items()}
    for n, path in objs.items():
        emu = emulate.Emulator(load_object(str(path)), program=None, env=emulate.Environment())
        deciders[n] = lambda nr, args, emu=emu: emu.run(
            emulate.SyscallInput(nr=nr, arch=ARCH, args=args)).verdict.value
    for nr in range(460):
        for flags in ((0, O_CREAT) if nr == openat else (0,)):
            ok = nr in allowed and not (creat_rule and nr == openat and flags & O_CREAT)
            want = ALLOW if ok else DENY
            args = (0, 0, flags, 0, 0, 0)
            for name, decide in deciders.items():
                got = decide(nr, args)
                if got != want:
                    raise SystemExit(f"bench: {name} decides nr {nr} flags {flags:#o} as "
                                     f"{got:#x}, the policy says {want:#x}")


def build_helper(work: Path) -> Path:
    src = work / "getppid_bench.c"
    src.write_text(GETPPID_C)
    exe = work / "getppid_bench"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench_loader: needs a C compiler (gcc)")
    subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def latency(exe: Path, configs: dict[str, tuple[str, str, tuple[int, ...]]], calls: int,
            rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(rounds):
        for name, (mode, arg, fds) in configs.items():
            r = subprocess.run([str(exe), mode, arg, str(calls)], capture_output=True,
                               text=True, pass_fds=fds, check=False)
            if r.returncode != 0:
                raise SystemExit(f"bench_loader: {name}: exit {r.returncode}: {r.stderr}")
            samples[name].append(float(r.stdout))
    return {k: statistics.median(v) for k, v in samples.items()}


def load_times(repeat: int = 5) -> dict[str, float]:
    out: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    for src in sorted((REPO / "bpf" / "examples").glob("*.c")):
        obj = build(src, out=work / f"{src.stem}.o")
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            prog = loader.load(obj)
            times.append(time.perf_counter() - t0)
            prog.close()
        out[src.stem] = statistics.median(times) * 1000
    shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000, help="getppid calls per sample")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    ap.add_argument("--update-docs", action="store_true",
                    help="write the figures into docs/benchmarks.md")
    args = ap.parse_args(argv)
    if platform.machine() != "x86_64":
        raise SystemExit("bench_loader: x86_64 only (the policy and the C helper)")

    work = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    nrs = allowed_numbers()
    objs = {}
    for name, text in (("ebpf-switch", switch_source(nrs)), ("ebpf-hash", hash_source(nrs))):
        src = work / f"{name.replace('-', '_')}.c"
        src.write_text(text)
        objs[name] = build(src, out=work / f"{name.replace('-', '_')}.o")
    cbpf = {"libseccomp-default": libseccomp_program(nrs, 1),
            "libseccomp-tree": libseccomp_program(nrs, 2)}
    for name, prog in cbpf.items():
        (work / f"{name}.bpf").write_bytes(prog)
    check_same_policy(objs, cbpf, nrs)

    lines = [f"Command: `vm/run -- .venv/bin/python bench/bench_loader.py` "
             f"(kernel {os.uname().release}, {os.cpu_count()} CPUs; "
             f"{'patched' if extended_flag_supported() else 'unpatched: no latency'}).", ""]
    sizes = {n: len(p) // 8 for n, p in cbpf.items()}
    for n, p in objs.items():
        obj = load_object(str(p))
        sizes[n] = len(obj.program().insns)
    pl = path_lengths(objs, cbpf)
    lines += ["Deterministic path length, same 300-syscall allowlist (getppid allowed; "
              "mix: " + ", ".join(f"{k} {v}" for k, v in MIX.items()) + "):", "",
              "| filter | program insns | insns executed, mean over mix | for getppid |",
              "|---|---|---|---|"]
    for n in ("libseccomp-default", "libseccomp-tree", "ebpf-switch", "ebpf-hash"):
        mean, gp = pl[n]
        extra = " (+ the hash lookup in the kernel)" if n == "ebpf-hash" else ""
        lines.append(f"| {n} | {sizes[n]} | {mean:.1f}{extra} | {gp} |")
    lines.append("")

    if extended_flag_supported() and os.geteuid() == 0:
        exe = build_helper(work)
        with loader.load(objs["ebpf-switch"]) as sw, loader.load(objs["ebpf-hash"]) as hm:
            configs = {
                "no filter": ("none", "-", ()),
                "libseccomp-default": ("cbpf", str(work / "libseccomp-default.bpf"), ()),
                "libseccomp-tree": ("cbpf", str(work / "libseccomp-tree.bpf"), ()),
                "ebpf-switch": ("ebpf", str(sw.fd), (sw.fd,)),
                "ebpf-hash": ("ebpf", str(hm.fd), (hm.fd,)),
            }
            lat = latency(exe, configs, args.calls, args.rounds)
        base = lat["no filter"]
        lines += [f"getppid latency under TCG, {args.calls} calls x {args.rounds} interleaved "
                  "rounds, median (absolute TCG times mean little; compare the ratios):", "",
                  "| filter | ns/call | ratio to no filter | overhead over no filter, ns |",
                  "|---|---|---|---|"]
        for n, v in lat.items():
            lines.append(f"| {n} | {v:.0f} | {v / base:.2f} | {v - base:.0f} |")
        lines.append("")
        lt = load_times()
        lines += ["Load time, open to fd (loader.load: ELF read, check, prediction, libbpf "
                  "open/load, map init), median of 5:", "",
                  "| example | ms |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in lt.items()]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    shutil.rmtree(work, ignore_errors=True)
    if args.update_docs:
        update_docs(text)
    return 0


def update_docs(text: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    head = "## Loader and attach"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{head}\n\n{text}\n"
    if head in doc:
        doc = re.sub(rf"{re.escape(head)}\n.*?(?=\n## |\Z)", section.rstrip("\n") + "\n", doc,
                     flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n" + section
    path.write_text(doc)


if __name__ == "__main__":
    sys.exit(main())
