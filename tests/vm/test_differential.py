"""Emulator against kernel: every example filter, real syscalls, zero mismatches.

For each example in bpf/examples/ the test loads the filter into the patched
kernel, and a small C program (built here with cc) attaches it and makes
generated system calls (numbers, argument values, paths in its memory) with
the raw `syscall` instruction.  The observed outcome of each call is compared
with what the emulator answers for the same input, in order, with state
carried over in both (one loaded program, whose maps outlive the children).

How outcomes are observed without running the syscalls for real: before the
eBPF filter the child installs a classic "sentinel" filter that answers
ERRNO(4000) to every call whose args[5] is MAGIC (all generated calls, none of
the child's own).  Over a filter chain the least permissive action wins and,
among equal actions, the newest filter's (the eBPF one), so:

    eBPF ALLOW, LOG, TRACE, USER_NOTIF  ->  -4000 (the syscall never runs)  "PASS"
    eBPF ERRNO(n)                        ->  -min(n, 4095)                    "ERRNO(n)"
    eBPF TRAP(d)                         ->  SIGSYS caught, si_errno d        "TRAP(d)"
    eBPF KILL_PROCESS / KILL_THREAD      ->  the child dies of SIGSYS         "KILL"

After a KILL the parent starts a new child from the next input.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

import example_cases as cases  # noqa: E402

from ebpfseccomp import loader  # noqa: E402
from ebpfseccomp.analysis import emulator as emulate  # noqa: E402
from ebpfseccomp.build import build  # noqa: E402
from ebpfseccomp.contract import Action, Verdict  # noqa: E402
from ebpfseccomp.syscalls import nr as syscall_nr  # noqa: E402
from ebpfseccomp.syscalls import table as syscall_table  # noqa: E402

pytestmark = pytest.mark.vm

EXAMPLES_DIR = REPO / "bpf" / "examples"
MAGIC = 0x5ECC0111
SENTINEL_ERRNO = 4000
MEM_ADDR = 0x7FFF_0000_0000  # the child maps its memory blob here
MEM_SIZE = 0x4000
STR_SLOTS = 16  # strings at MEM_ADDR + i * 256
HOW_BASE = MEM_ADDR + 0x2000  # struct open_how at HOW_BASE + j * 64
INPUTS_PER_EXAMPLE = int(os.environ.get("EBPFSECCOMP_DIFF_INPUTS", "400"))

#: Per-example -D options so that the kernel and the emulator agree on time.
DEFINES = {"rate_limit": {"RATE_WINDOW_NS": "1000000000000000ULL"}}

SYSCALLER_C = r"""
/* syscaller: attach an eBPF seccomp program and make raw syscalls (tests). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

struct input { uint64_t nr, args[6]; };
struct result { int64_t ret; uint32_t kind; uint32_t data; };
struct header { uint32_t n, done, attach_errno, stage; };
enum { R_NONE, R_RET, R_TRAP };

static volatile struct result *results;
static volatile struct header *hdr;
static volatile uint32_t cur;

static long raw6(uint64_t n, uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e,
         uint64_t f)
{
    long ret;
    register uint64_t r10 __asm__("r10") = d;
    register uint64_t r8 __asm__("r8") = e;
    register uint64_t r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(ret)
             : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
             : "rcx", "r11", "memory");
    return ret;
}

static void on_sigsys(int sig, siginfo_t *info, void *uc)
{
    (void)sig; (void)uc;
    results[cur].kind = R_TRAP;
    results[cur].data = (uint32_t)info->si_errno;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: syscaller PROG_FD IN_FILE OUT_FD START MAGIC\n");
        return 2;
    }
    int prog_fd = atoi(argv[1]), out_fd = atoi(argv[3]);
    uint32_t start = (uint32_t)atoi(argv[4]);
    uint32_t magic = (uint32_t)strtoul(argv[5], NULL, 0);
    FILE *in = fopen(argv[2], "rb");
    if (!in) { perror("input"); return 2; }
    uint64_t mem_addr, mem_size, n;
    if (fread(&mem_addr, 8, 1, in) != 1 || fread(&mem_size, 8, 1, in) != 1 ||
        fread(&n, 8, 1, in) != 1) return 2;
    void *mem = mmap((void *)mem_addr, mem_size, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (mem == MAP_FAILED || fread(mem, 1, mem_size, in) != mem_size) { perror("mem"); return 2; }
    struct input *inputs = calloc(n, sizeof(*inputs));
    if (!inputs || fread(inputs, sizeof(*inputs), n, in) != n) { perror("inputs"); return 2; }
    fclose(in);
    size_t out_size = 16 + n * sizeof(struct result);
    void *out = mmap(NULL, out_size, PROT_READ | PROT_WRITE, MAP_SHARED, out_fd, 0);
    if (out == MAP_FAILED) { perror("out"); return 2; }
    hdr = out;
    results = (void *)((char *)out + 16);

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSYS, &sa, NULL);

    /* sentinel: args[5] == MAGIC -> ERRNO(4000), else ALLOW */
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 56),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, magic, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 60),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 4000),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog fp = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) { hdr->attach_errno = 1000; return 3; }
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp)) {
        hdr->attach_errno = 2000; return 3;
    }
    int pfd = prog_fd;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 1 << 6, &pfd)) {
        hdr->attach_errno = 3000; return 3;
    }
    hdr->done = start;
    hdr->stage = 1;
    for (uint32_t i = start; i < n; i++) {
        cur = i;
        struct input *p = &inputs[i];
        long ret = raw6(p->nr, p->args[0], p->args[1], p->args[2], p->args[3], p->args[4],
                p->args[5]);
        if (results[i].kind != R_TRAP) {
            results[i].ret = ret;
            results[i].kind = R_RET;
        }
        hdr->done = i + 1;
    }
    for (;;)
        raw6(SYS_exit_group, 0, 0, 0, 0, 0, 0);
}
"""


def syscaller(tmp: Path) -> Path:
    """Build the syscaller once per session directory."""
    exe = tmp / "syscaller"
    if not exe.exists():
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            pytest.skip("no C compiler in the VM")
        src = tmp / "syscaller.c"
        src.write_text(SYSCALLER_C)
        subprocess.run([cc, "-O1", "-o", str(exe), str(src)], check=True)
    return exe


@pytest.fixture(scope="session")
def syscaller_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.uname().machine != "x86_64":
        pytest.skip("the syscaller's raw syscall instruction is x86_64 only")
    return syscaller(tmp_path_factory.mktemp("syscaller"))


@dataclass
class Call:
    nr: int
    args: tuple[int, int, int, int, int, int]


@dataclass
class Outcome:
    kind: str  # "PASS", "ERRNO(n)", "TRAP(d)", "KILL", "RET(v)"
    pid: int


def normalise(verdict: Verdict) -> str:
    act = verdict.action
    if act in (Action.ALLOW, Action.LOG, Action.TRACE, Action.USER_NOTIF):
        return "PASS"
    if act == Action.ERRNO:
        return f"ERRNO({min(verdict.data, 4095)})"
    if act == Action.TRAP:
        return f"TRAP({verdict.data})"
    return "KILL"


def run_calls(exe: Path, prog_fd: int, calls: list[Call], memory: bytes,
              workdir: Path) -> list[Outcome]:
    """Make CALLS under the program in children of EXE; one Outcome per call."""
    n = len(calls)
    inp = workdir / "inputs.bin"
    blob = memory.ljust(MEM_SIZE, b"\0")
    with open(inp, "wb") as f:
        f.write(struct.pack("<QQQ", MEM_ADDR, MEM_SIZE, n))
        f.write(blob)
        for c in calls:
            f.write(struct.pack("<7Q", c.nr, *c.args))
    out_path = workdir / "results.bin"
    size = 16 + n * 16
    out_path.write_bytes(bytes(size))
    outcomes: list[Outcome | None] = [None] * n
    start = 0
    restarts = 0
    with open(out_path, "r+b") as out:
        while start < n:
            # A fresh header for each child: a stale `done` or `stage` from the
            # child before would make a KILL look like progress (or like an
            # attached filter) and restart from the same input forever.
            out.seek(0)
            out.write(bytes(16))
            out.flush()
            proc = subprocess.Popen(
                [str(exe), str(prog_fd), str(inp), str(out.fileno()), str(start), hex(MAGIC)],
                pass_fds=(prog_fd, out.fileno()), stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=lambda: __import__("resource").setrlimit(
                    __import__("resource").RLIMIT_CORE, (0, 0)))
            try:
                _, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"syscaller hung at input {start}") from None
            out.seek(0)
            raw = out.read()
            _, done, attach_errno, stage = struct.unpack_from("<IIII", raw, 0)
            if attach_errno or stage == 0:  # stage 1: attached, no syscall since
                raise AssertionError(f"syscaller could not attach (code {attach_errno}, "
                                     f"exit {proc.returncode}): {err.decode(errors='replace')}")
            for i in range(start, done):
                ret, kind, data = struct.unpack_from("<qII", raw, 16 + 16 * i)
                if kind == 2:
                    outcomes[i] = Outcome(f"TRAP({data})", proc.pid)
                elif ret == -SENTINEL_ERRNO:
                    outcomes[i] = Outcome("PASS", proc.pid)
                elif -4095 <= ret < 0:
                    outcomes[i] = Outcome(f"ERRNO({-ret})", proc.pid)
                elif ret == 0:
                    outcomes[i] = Outcome("ERRNO(0)", proc.pid)
                else:
                    outcomes[i] = Outcome(f"RET({ret})", proc.pid)
            if done >= n:
                break
            if proc.returncode == -signal.SIGSYS:
                if done < start:
                    raise AssertionError(f"syscaller killed before input {start} "
                                         f"(done={done}): its own syscalls were refused?")
                outcomes[done] = Outcome("KILL", proc.pid)
                start = done + 1
                restarts += 1
                continue
            raise AssertionError(f"syscaller stopped at input {done} with exit "
                                 f"{proc.returncode}: {err.decode(errors='replace')}")
    return [o for o in outcomes if o is not None]


# --- inputs ------------------------------------------------------------------------------

PATHS = [b"/tmp/protected/x", b"/tmp/protected/", b"/tmp/protected", b"/tmp/ok",
         b"/etc/passwd", b"", b"/tmp/protectedX/y", b"/tmp/protected/" + b"a" * 100,
         b"relative/path", b"/tmp/Protected/x", b"/TMP/protected/x", b"/tmp//protected/x",
         b"/tmp/protected/dir/file", b"/", b"/tmp/protecte", b"/tmp/protected/\x01"]
HOW_FLAGS = [0, 0o100, 0o101, 0o1000, 0o100 | 0o2000000, 0o1, 0o2]
O_FLAGS = [0, 0o1, 0o2, 0o100, 0o101, 0o1101, 0o100 | 0o2000000, 0o2000000, 0o200000]


def memory_blob() -> tuple[bytes, dict[int, bytes]]:
    blob = bytearray(MEM_SIZE)
    regions: dict[int, bytes] = {}
    for i, p in enumerate(PATHS[:STR_SLOTS]):
        data = p[:255] + b"\0"
        blob[i * 256:i * 256 + len(data)] = data
    for j, flags in enumerate(HOW_FLAGS):
        how = struct.pack("<QQQ", flags, 0, 0)
        off = HOW_BASE - MEM_ADDR + j * 64
        blob[off:off + len(how)] = how
    regions[MEM_ADDR] = bytes(blob)
    return bytes(blob), regions


def path_addr(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.85:
        return MEM_ADDR + rng.randrange(len(PATHS)) * 256
    if r < 0.92:
        return 0
    return 0x1000  # unmapped: the read faults


#: Syscalls the kernel never filters (6.12: the uretprobe trampoline's return),
#: so no filter's answer reaches the caller; the emulator answers for the filter.
NEVER_FILTERED = {syscall_nr(n, "x86_64") for n in ("uretprobe",)
                  if n in syscall_table("x86_64")}


def generate(example: str, count: int, seed: int) -> list[Call]:
    rng = random.Random(f"{example}-{seed}")
    arch = "x86_64"
    names = cases.ALLOWED_SAMPLE + cases.DENIED_SAMPLE + [
        "openat", "open", "creat", "openat2", "socket", "getpid", "execve", "getppid"]
    interesting = [0, 1, 2, 3, 16, 0x40, 0xFFFFFFFF, 1 << 32, (1 << 64) - 1, cases.AT_FDCWD]
    calls: list[Call] = []
    for _ in range(count):
        r = rng.random()
        if r < 0.45:
            nr = syscall_nr(rng.choice(names), arch)
        elif r < 0.85:
            nr = rng.randrange(0, 470)
            if nr in NEVER_FILTERED:
                continue  # the kernel runs it whatever the filter says
        elif r < 0.92:
            nr = rng.randrange(0, 470) | cases.X32_SYSCALL_BIT
        else:
            nr = rng.choice([500, 1000, 0xFFFF, 0x3FFFFFFF, 0x7FFFFFFF])
        args = [rng.choice(interesting) if rng.random() < 0.7 else rng.getrandbits(64)
                for _ in range(5)]
        name = None
        try:
            from ebpfseccomp.syscalls import name as syscall_name

            name = syscall_name(nr, arch)
        except Exception:
            name = None
        if name == "socket":
            args[0] = rng.choice([cases.AF_NETLINK, cases.AF_INET, cases.AF_UNIX, 0, 1 << 32 | 16])
        elif name in ("openat", "openat2"):
            args[0] = cases.AT_FDCWD
            args[1] = path_addr(rng)
            if name == "openat":
                args[2] = rng.choice(O_FLAGS)
            else:
                args[2] = HOW_BASE + rng.randrange(len(HOW_FLAGS)) * 64 if rng.random() < 0.9 \
                    else 0x1000
                args[3] = 24
        elif name in ("open", "creat"):
            args[0] = path_addr(rng)
            args[1] = rng.choice(O_FLAGS)
        calls.append(Call(nr, (*args, MAGIC)))  # type: ignore[arg-type]
    return calls


def examples() -> Iterator[str]:
    yield from sorted(p.stem for p in EXAMPLES_DIR.glob("*.c"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diff-objs")
    return {ex: build(EXAMPLES_DIR / f"{ex}.c", out=root / f"{ex}.o",
                      defines=DEFINES.get(ex, {})) for ex in examples()}


@pytest.mark.parametrize("example", list(examples()))
def test_emulator_matches_kernel(example: str, built: dict[str, Path], syscaller_exe: Path,
                                 tmp_path: Path, kernel_has_extended: bool) -> None:
    if not kernel_has_extended:
        pytest.skip("the running kernel lacks the eBPF seccomp patch")
    from ebpfseccomp import elf

    calls = generate(example, INPUTS_PER_EXAMPLE, seed=1)
    blob, regions = memory_blob()
    with loader.load(built[example]) as prog:
        outcomes = run_calls(syscaller_exe, prog.fd, calls, blob, tmp_path)
    assert len(outcomes) == len(calls)
    obj = elf.load_object(str(built[example]))
    emu = None
    mismatches = []
    last_pid = None
    for i, (c, o) in enumerate(zip(calls, outcomes, strict=True)):
        if emu is None:
            emu = emulate.Emulator(obj, program=None, env=emulate.Environment(
                memory=dict(regions), uid=os.getuid(), gid=os.getgid(), dumpable=True,
                ptrace_reads=True))
        if o.pid != last_pid:
            last_pid = o.pid
        res = emu.run(emulate.SyscallInput(nr=c.nr, arch="x86_64", args=c.args,
                                           pid=o.pid, tgid=o.pid))
        want = normalise(res.verdict)
        if want != o.kind:
            mismatches.append(f"#{i} nr={c.nr:#x} args={[hex(a) for a in c.args[:5]]}: "
                              f"kernel {o.kind}, emulator {want} ({res.verdict})")
    assert not mismatches, f"{len(mismatches)} of {len(calls)} differ:\n" + "\n".join(
        mismatches[:30])


@pytest.mark.parametrize("example", list(examples()))
def test_example_scenarios_in_the_kernel(example: str, built: dict[str, Path],
                                         syscaller_exe: Path, tmp_path: Path,
                                         kernel_has_extended: bool) -> None:
    """The hand-written expectations of tests/example_cases.py, in the real kernel."""
    if not kernel_has_extended:
        pytest.skip("the running kernel lacks the eBPF seccomp patch")
    ran = 0
    for sc in cases.scenarios_for(example, "x86_64"):
        if sc.defines or sc.env or any(s.time_ns is not None for s in sc.steps) or any(
                (s.arch or "x86_64") != "x86_64" for s in sc.steps):
            continue  # needs a clock, another build, a foreign arch or a special task
        # Each step's memory in slots of its own (path i at MEM_ADDR + i * 256,
        # open_how i at HOW_BASE + i * 64): the steps of one scenario run in one
        # child, so one shared address would show every step the last step's data.
        blob = bytearray(MEM_SIZE)
        calls = []
        mem_ok = len(sc.steps) <= STR_SLOTS
        for i, s in enumerate(sc.steps):
            path_at, how_at = MEM_ADDR + i * 256, HOW_BASE + i * 64
            args = list(s.args) + [0] * (6 - len(s.args))
            for addr, data in (s.memory or {}).items():
                at = {cases.PATH_ADDR: path_at, cases.HOW_ADDR: how_at}.get(addr)
                limit = 256 if addr == cases.PATH_ADDR else 64
                if at is None or len(data) > limit:
                    mem_ok = False
                    break
                blob[at - MEM_ADDR:at - MEM_ADDR + len(data)] = data
            args = [path_at if a == cases.PATH_ADDR else how_at if a == cases.HOW_ADDR else a
                    for a in args]
            args[5] = MAGIC
            calls.append(Call(s.number("x86_64"), tuple(args)))  # type: ignore[arg-type]
        if not mem_ok:
            continue
        with loader.load(built[example]) as prog:
            outcomes = run_calls(syscaller_exe, prog.fd, calls, bytes(blob), tmp_path)
        for s, o in zip(sc.steps, outcomes, strict=True):
            assert o.kind == normalise(Verdict(_verdict_value(s.expect))), (
                f"{example}/{sc.name}: {s.syscall}{s.args}: kernel {o.kind}, "
                f"expected {s.expect} {s.note}")
        ran += 1
    if not ran:
        pytest.skip(f"no scenario of {example} can run in the kernel here (all need a clock, "
                    "a foreign arch, another build or a special task)")


def _verdict_value(text: str) -> int:
    name, _, rest = text.partition("(")
    data = int(rest.rstrip(")")) if rest else 0
    return int(Action[name]) | data
