"""The action cache for eBPF filters, against the kernel (kernel-patches/0006).

- Every example in bpf/examples: what `ebpfseccomp check` predicts the cache
  to be (ebpfseccomp.analysis.cacheability) is exactly what the kernel shows in
  /proc/PID/seccomp_cache once the filter is attached.
- Soundness over random programs (tests/randprog.py): each is loaded through
  the real verifier (the ones it refuses are skipped and counted) and
  attached in a child; the kernel's cache of each is recorded in an artifact
  (tests/cache_soundness.py) for tests/test_cache_soundness.py, which checks
  on the host, for every syscall the kernel caches, that the emulator run
  with random arguments, instruction pointer, uid, pid and clock answers
  ALLOW, and that `check` predicts the kernel's cache; the guest checks a
  sample itself (the emulator is slow under TCG).

The kernel's cache is read by a small C helper (built here with cc) that,
per program, loads it, forks a child that attaches it and then spins without
making a syscall (the filter may deny or kill anything), reads the child's
/proc/PID/seccomp_cache, and kills it: one helper process for all programs.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

import cache_soundness as soundness  # noqa: E402

from ebpfseccomp import contract, loader  # noqa: E402
from ebpfseccomp import insn as I  # noqa: E402
from ebpfseccomp.analysis import cacheability  # noqa: E402
from ebpfseccomp.build import build  # noqa: E402
from ebpfseccomp.elf import load_object  # noqa: E402

pytestmark = pytest.mark.vm

EXAMPLES_DIR = REPO / "bpf" / "examples"
#: programs generated; the verifier takes nearly all of them
PROGRAMS = int(os.environ.get("EBPFSECCOMP_CACHE_PROGRAMS", "2100"))
#: attached programs the guest itself checks with the emulator (slow under TCG)
GUEST_SAMPLE = int(os.environ.get("EBPFSECCOMP_CACHE_GUEST_SAMPLE", "30"))
INPUTS_PER_SYSCALL = int(os.environ.get("EBPFSECCOMP_CACHE_INPUTS", "2"))
SEED = int(os.environ.get("EBPFSECCOMP_CACHE_SEED", "9"))

CACHEREAD_C = r"""
/* cacheread: load programs, attach each in a spinning child, print its cache. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROG_TYPE_SECCOMP 33
#define FLAG_EXTENDED (1 << 6)
#define MAX_INSNS 4096

static char cache[1 << 16];

static int load(const void *insns, uint32_t n)
{
    union bpf_attr a;

    memset(&a, 0, sizeof(a));
    a.prog_type = PROG_TYPE_SECCOMP;
    a.insns = (uintptr_t)insns;
    a.insn_cnt = n;
    a.license = (uintptr_t)"GPL";
    return syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof(a));
}

static void print_xlated(int fd)
{
    static unsigned char x[MAX_INSNS * 8 * 4];
    struct bpf_prog_info info;
    union bpf_attr a;
    uint32_t i;

    memset(&info, 0, sizeof(info));
    info.xlated_prog_len = sizeof(x);
    info.xlated_prog_insns = (uintptr_t)x;
    memset(&a, 0, sizeof(a));
    a.info.bpf_fd = fd;
    a.info.info_len = sizeof(info);
    a.info.info = (uintptr_t)&info;
    if (syscall(SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &a, sizeof(a)) ||
        info.xlated_prog_len > sizeof(x)) {
        printf(" -");
        return;
    }
    printf(" ");
    for (i = 0; i < info.xlated_prog_len; i++)
        printf("%02x", x[i]);
}

/* the child's cache once its filter is attached, or -1 when it died */
static int read_cache(pid_t pid)
{
    char path[64];
    int tries, fd, n = 0, r;

    snprintf(path, sizeof(path), "/proc/%d/seccomp_cache", pid);
    for (tries = 0; tries < 20000; tries++) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return -1;
        fd = open(path, O_RDONLY);
        if (fd < 0)
            return -1;
        n = 0;
        while ((r = read(fd, cache + n, sizeof(cache) - 1 - n)) > 0)
            n += r;
        close(fd);
        if (n > 0)
            break;
        usleep(200);
    }
    cache[n] = 0;
    return n;
}

static void print_cache(void)
{
    char arch[16], status[8], *p = cache;
    char last[16] = "";
    int nr, used;

    while (sscanf(p, "%15s %d %7s%n", arch, &nr, status, &used) == 3) {
        p += used;
        if (strcmp(arch, last)) {
            printf(" %s:", arch);
            strcpy(last, arch);
        }
        if (!strcmp(status, "ALLOW"))
            printf("%d,", nr);
    }
}

int main(void)
{
    static uint64_t insns[MAX_INSNS];
    uint32_t n;
    int fd;
    pid_t pid;

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        return 1;
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);
    while (fread(&n, 4, 1, stdin) == 1) {
        if (n > MAX_INSNS || fread(insns, 8, n, stdin) != n)
            return 2;
        fd = load(insns, n);
        if (fd < 0) {
            printf("load %d\n", errno);
            continue;
        }
        pid = fork();
        if (pid == 0) {
            if (syscall(SYS_seccomp, 1, FLAG_EXTENDED, &fd))
                _exit(1);
            for (;;)
                __asm__ volatile("" ::: "memory");
        }
        if (read_cache(pid) < 0) {
            printf("attach\n");
        } else {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            printf("ok");
            print_cache();
            print_xlated(fd);
            printf("\n");
        }
        close(fd);
    }
    return 0;
}
"""


#: /proc/PID/seccomp_cache arch names -> contract names
PROC_ARCH = {"x86_64": "x86_64", "ia32": "i386"}


def parse(line: str) -> soundness.KernelResult:
    parts = line.split()
    if parts[0] != "ok":
        return soundness.KernelResult(parts[0], " ".join(parts[1:]))
    cached: dict[str, list[int]] = {}
    xlated = ""
    for p in parts[1:]:
        if ":" in p:
            arch, nrs = p.split(":", 1)
            cached[PROC_ARCH.get(arch, arch)] = [int(x) for x in nrs.split(",") if x]
        elif p != "-":
            xlated = p
    return soundness.KernelResult("ok", "", cached, xlated)


@pytest.fixture(scope="module")
def cacheread(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.uname().machine != "x86_64":
        pytest.skip("the analysis tables are for x86_64")
    if os.geteuid() != 0:
        pytest.skip("reading /proc/PID/seccomp_cache needs CAP_SYS_ADMIN")
    if not Path("/proc/self/seccomp_cache").exists():
        pytest.skip("no /proc/PID/seccomp_cache (CONFIG_SECCOMP_CACHE_DEBUG)")
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler in the VM")
    tmp = tmp_path_factory.mktemp("cacheread")
    src, exe = tmp / "cacheread.c", tmp / "cacheread"
    src.write_text(CACHEREAD_C)
    subprocess.run([cc, "-O1", "-o", str(exe), str(src)], check=True)
    return exe


def kernel_caches(exe: Path, programs: list[list[I.Insn]]) -> list[soundness.KernelResult]:
    blob = b"".join(struct.pack("<I", len(p)) + I.encode(p) for p in programs)
    out = subprocess.run([str(exe)], input=blob, capture_output=True, check=True, timeout=900)
    lines = out.stdout.decode().splitlines()
    assert len(lines) == len(programs), out.stderr.decode()
    return [parse(line) for line in lines]


def cache_of_attached(fd: int) -> dict[str, set[int]]:
    """Attach FD in a spinning child and read its cache (examples: fd from the loader)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            from ebpfseccomp import sys as _sys

            _sys.set_no_new_privs()
            _sys.seccomp_attach_fd(fd, contract.SECCOMP_FILTER_FLAG_EXTENDED)
        except BaseException:
            os._exit(1)
        while True:
            pass
    try:
        path = f"/proc/{pid}/seccomp_cache"
        text = ""
        for _ in range(5000):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                pytest.fail("the child could not attach the filter")
            with open(path) as f:
                text = f.read()
            if text:
                break
            time.sleep(0.001)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    cached: dict[str, set[int]] = {}
    for line in text.splitlines():
        arch, nr, status = line.split()
        cached.setdefault(PROC_ARCH.get(arch, arch), set())
        if status == "ALLOW":
            cached[PROC_ARCH.get(arch, arch)].add(int(nr))
    return cached


def examples() -> list[str]:
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.c"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache-objs")
    return {ex: build(EXAMPLES_DIR / f"{ex}.c", out=root / f"{ex}.o") for ex in examples()}


@pytest.mark.parametrize("example", examples())
def test_check_predicts_kernel_cache(example: str, built: dict[str, Path], cacheread: Path,
                                     kernel_has_extended: bool) -> None:
    if not kernel_has_extended:
        pytest.skip("the running kernel lacks the eBPF seccomp patch")
    obj = load_object(str(built[example]))
    predicted = {c.arch: set(c.cached)
                 for c in cacheability.analyze_program(obj.program(), obj.maps)}
    with loader.load(built[example]) as prog:
        kernel = cache_of_attached(prog.fd)
    assert kernel, "empty seccomp_cache"
    for arch, nrs in kernel.items():
        assert len(nrs) <= cacheability.NR_COUNT[arch]
        only_kernel = sorted(nrs - predicted[arch])
        only_check = sorted(predicted[arch] - nrs)
        assert not only_kernel and not only_check, (
            f"{arch}: kernel only {only_kernel}, check only {only_check}"
        )


def artifact_path() -> Path | None:
    """Where the kernel's answers go for the host test: next to the VM's pytest results."""
    explicit = os.environ.get("EBPFSECCOMP_CACHE_ARTIFACT")
    if explicit:
        return Path(explicit)
    results = os.environ.get("EBPFSECCOMP_VM_RESULTS")
    return Path(results).parent / soundness.ARTIFACT if results else None


def test_random_programs_kernel_cache(cacheread: Path, kernel_has_extended: bool) -> None:
    """Random programs through the verifier and the kernel's analysis.

    Records the kernel's cache of every program for the host test, which runs
    the emulator over all of them; checks a sample here.
    """
    if not kernel_has_extended:
        pytest.skip("the running kernel lacks the eBPF seccomp patch")
    progs = soundness.programs(SEED, PROGRAMS)
    t0 = time.monotonic()
    results = kernel_caches(cacheread, progs)
    t_kernel = time.monotonic() - t0
    path = artifact_path()
    if path is not None:
        soundness.save(path, SEED, PROGRAMS, results)

    t0 = time.monotonic()
    v = soundness.check_programs(progs, results, inputs_per_syscall=INPUTS_PER_SYSCALL,
                                 seed=SEED, limit=GUEST_SAMPLE)
    print(f"in the VM: {v.summary()} (emulator on the first {GUEST_SAMPLE} attached; "
          f"kernel {t_kernel:.0f}s, sample {time.monotonic() - t0:.0f}s; artifact {path})")
    if PROGRAMS >= 2000:
        assert v.attached >= 2000, v.summary()
    assert not v.counterexamples, "\n".join(v.counterexamples[:20])
    assert not v.disagreements, "\n".join(v.disagreements[:10])
