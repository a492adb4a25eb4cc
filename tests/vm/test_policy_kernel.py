"""The kernel layers of issue 10: converted profiles under the real kernel.

1. A sample of the differential test's calls (tests/test_policy_differential.py)
   is made for real by the syscaller of tests/vm/test_differential.py, once
   under the converted eBPF filter and once under libseccomp's classic filter
   for the same profile.  Every outcome (errno, SIGSYS kill, passed) must be
   equal, and equal to the plan's answer.  As there, a classic "sentinel"
   filter installed first answers ERRNO(4000) to every generated call
   (args[5] == MAGIC), so an allowed call never runs; the profiles used do not
   compare args[5].
   The sample covers every ABI of the x86_64 filter: native calls with the
   `syscall` instruction; x32 numbers (X32_SYSCALL_BIT) the same way, which
   the kernel reports as AUDIT_ARCH_X86_64 with the bit in seccomp_data.nr
   whether or not it runs x32 programs (the VM kernel has
   CONFIG_X86_X32_ABI off, so an allowed x32 call would fail ENOSYS in the
   dispatcher, after the filters: the sentinel answers first); i386 calls
   with `int $0x80` (CONFIG_IA32_EMULATION=y), from the same 64-bit program,
   so the upper halves of the argument registers reach seccomp_data.args and
   the 32-bit comparison of both filters is put to the test.
2. A container-like workload (a shell pipeline, coreutils, python3) runs
   under `ebpfseccomp run --profile` with the eBPF and with the classic
   backend; the output and exit status are the same.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_differential as td  # noqa: E402

from ebpfseccomp import loader  # noqa: E402
from ebpfseccomp.contract import Verdict  # noqa: E402
from ebpfseccomp.policy import (  # noqa: E402
    differential,
    inputs,
    libseccomp,
    model,
    semantics,
)
from ebpfseccomp.policy.convert import write  # noqa: E402
from ebpfseccomp.syscalls import nr as syscall_nr  # noqa: E402

pytestmark = pytest.mark.vm

PROFILES = REPO.parent / "shared" / "profiles"
COMMON = PROFILES / "containers-common-seccomp.json"
SAMPLE = int(os.environ.get("EBPFSECCOMP_POLICY_VM_CALLS", "1500"))
X86_64 = 0xC000003E
I386 = 0x40000003
#: in a call's nr for the syscaller: make it with int $0x80 (the i386 ABI)
INT80 = 1 << 63

#: The syscaller of test_differential, able to attach a classic program too:
#: with $SYSCALLER_CBPF naming a file of struct sock_filter, that is attached
#: (after the sentinel) instead of the eBPF program fd.
_ATTACH = """    int pfd = prog_fd;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 1 << 6, &pfd)) {"""
_ATTACH_EITHER = """    int pfd = prog_fd;
    const char *cbpf_path = getenv("SYSCALLER_CBPF");
    static struct sock_filter cbpf[4096];
    struct sock_fprog cfp = { 0, cbpf };
    if (cbpf_path) {
        FILE *cf = fopen(cbpf_path, "rb");
        if (!cf) { hdr->attach_errno = 4000; return 3; }
        cfp.len = (unsigned short)fread(cbpf, sizeof(cbpf[0]), 4096, cf);
        fclose(cf);
    }
    if (cbpf_path ? syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &cfp)
                  : syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 1 << 6, &pfd)) {"""


#: ... and able to make i386 calls: an input whose nr has bit 63 set is made
#: with int $0x80 (eax = nr, ebx..ebp = args, with their upper halves).
_CALL = ("        long ret = raw6(p->nr, p->args[0], p->args[1], p->args[2], p->args[3], "
         "p->args[4],\n                p->args[5]);")
_CALL_EITHER = """        long ret = (p->nr >> 63)
            ? int80(p->nr & 0xffffffffu, p->args[0], p->args[1], p->args[2], p->args[3],
                    p->args[4], p->args[5])
            : raw6(p->nr, p->args[0], p->args[1], p->args[2], p->args[3], p->args[4],
                   p->args[5]);"""
_INT80 = r"""static long int80(uint64_t n, uint64_t a, uint64_t b, uint64_t c, uint64_t d,
                  uint64_t e, uint64_t f)
{
    uint64_t ret = n, bp = f;
    /* rbp carries the sixth argument: swapped in and out around the call */
    __asm__ volatile("xchg %[bp], %%rbp\n\tint $0x80\n\txchg %[bp], %%rbp"
             : "+a"(ret), [bp] "+r"(bp)
             : "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
             : "r8", "r9", "r10", "r11", "memory", "cc");
    return (long)(int)ret;
}

static void on_sigsys("""


@pytest.fixture(scope="module")
def syscaller(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.uname().machine != "x86_64":
        pytest.skip("the syscaller is x86_64 only")
    assert _ATTACH in td.SYSCALLER_C and _CALL in td.SYSCALLER_C
    tmp = tmp_path_factory.mktemp("policy-syscaller")
    src = tmp / "syscaller.c"
    src.write_text(td.SYSCALLER_C.replace(_ATTACH, _ATTACH_EITHER).replace(_CALL, _CALL_EITHER)
                   .replace("static void on_sigsys(", _INT80, 1))
    exe = tmp / "syscaller"
    subprocess.run(["cc", "-O1", "-o", str(exe), str(src)], check=True)
    return exe


def _sample(plan: semantics.Plan, count: int) -> list[tuple[int, td.Call]]:
    """(arch, call) pairs from the differential stream, x86_64 (x32 numbers
    included) and i386: all argument-rule calls first (their boundaries), then
    a spread of numbers, unknown and x32 ones; about a third of each i386."""
    rng = random.Random(10)
    ruled: dict[int, list[tuple[int, td.Call]]] = {X86_64: [], I386: []}
    plain: dict[int, list[tuple[int, td.Call]]] = {X86_64: [], I386: []}
    # Linux 6.12 never filters uretprobe (seccomp_uprobe_exception in
    # kernel/seccomp.c): made outside a uretprobe trampoline it raises SIGILL.
    unfiltered = {(X86_64, syscall_nr("uretprobe"))}
    for arch, nr, args in inputs.generate(plan, minimum=0, product_cap=400):
        if arch not in ruled or (arch, nr) in unfiltered:
            continue
        call = td.Call(nr | (INT80 if arch == I386 else 0), (*args[:5], td.MAGIC))
        ap = plan.arch_for(arch, nr)
        sp = ap.syscalls.get(nr) if ap is not None else None
        (ruled if sp is not None and sp.branches else plain)[arch].append((arch, call))
    out: list[tuple[int, td.Call]] = []
    for arch, share in ((I386, count // 3), (X86_64, count - count // 3)):
        for pool in (ruled[arch], plain[arch]):
            rng.shuffle(pool)
        part = ruled[arch][: share // 2]
        out += part + plain[arch][: share - len(part)]
    rng.shuffle(out)
    return out


def _outcomes(exe: Path, prog_fd: int, calls: list[td.Call], tmp: Path,
              cbpf: Path | None) -> list[str]:
    if cbpf is not None:
        os.environ["SYSCALLER_CBPF"] = str(cbpf)
    try:
        return [o.kind for o in td.run_calls(exe, prog_fd, calls, b"", tmp)]
    finally:
        os.environ.pop("SYSCALLER_CBPF", None)


@pytest.mark.parametrize("caps,subarches", [(None, True), ("all", True), (None, False)],
                         ids=["docker-caps", "all-caps", "native-only"])
def test_kernel_outcomes_equal(syscaller: Path, tmp_path: Path, caps: str | None,
                               subarches: bool) -> None:
    profile = json.loads(COMMON.read_text())
    if not subarches:  # i386 and x32 left out: their calls get the bad-arch action
        profile["archMap"] = [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}]
    sel = model.select(model.parse(json.dumps(profile)), arch="x86_64",
                       caps=model.parse_caps(caps), kernel=(6, 12))
    assert not any(a.index == 5 for r in sel.rules for a in r.args)  # the sentinel's argument
    plan = semantics.compile(sel)
    obj = write(plan, tmp_path / "profile.o")
    classic = libseccomp.build(sel)
    cbpf = tmp_path / "profile.bpf"
    cbpf.write_bytes(classic.bytes())
    sample = _sample(plan, SAMPLE)
    if not subarches:
        # every i386 and x32 call is a kill then, and each kill costs a new
        # child: 100 of each show the bad-architecture action well enough
        seen = {"i386": 0, "x32": 0}
        kept = []
        for arch, c in sample:
            abi = "i386" if arch == I386 else "x32" if c.nr & 0x40000000 else ""
            if abi:
                seen[abi] += 1
                if seen[abi] > 100:
                    continue
            kept.append((arch, c))
        sample = kept
    calls = [c for _, c in sample]
    prog = loader.load(str(obj))
    try:
        (tmp_path / "e").mkdir()
        (tmp_path / "c").mkdir()
        ebpf = _outcomes(syscaller, prog.fd, calls, tmp_path / "e", None)
        ref = _outcomes(syscaller, prog.fd, calls, tmp_path / "c", cbpf)
    finally:
        prog.close()
    expected = [td.normalise(Verdict(plan.decide(arch, c.nr & 0xFFFFFFFF, c.args)))
                for arch, c in sample]
    # syscalls libseccomp's table lacks (docs/policies.md): counted apart, as
    # on the host, when the eBPF filter does what the plan says
    gaps = differential.table_gaps(plan)
    diffs, gap_calls = [], []
    for (arch, c), e, k, x in zip(sample, ebpf, ref, expected, strict=True):
        if e == k == x:
            continue
        gap = gaps.get((arch, c.nr & 0xFFFFFFFF))
        (gap_calls if gap and e == x else diffs).append(
            (hex(arch), hex(c.nr), [hex(a) for a in c.args], e, k, x, gap))
    print(f"kernel: {len(calls)} calls under each filter, {len(diffs)} disagreements, "
          f"{len(gap_calls)} calls of syscalls libseccomp's table lacks "
          f"{sorted({g[-1] for g in gap_calls})}")
    for name, picked in (("x86_64", lambda a, n: a == X86_64 and n < 0x40000000),
                         ("x32", lambda a, n: a == X86_64 and n >= 0x40000000),
                         ("i386", lambda a, n: a == I386)):
        got = [e for (a, c), e in zip(sample, ebpf, strict=True) if picked(a, c.nr & 0xFFFFFFFF)]
        kinds = {k: got.count(k) for k in sorted(set(got))}
        print(f"  {name}: {len(got)} calls, outcomes {kinds}")
        if name == "x86_64" or subarches:
            assert "PASS" in kinds and len(kinds) > 1, (name, kinds)  # both ends reached
        else:
            assert "KILL" in kinds, (name, kinds)  # the bad-architecture action
    assert len(ebpf) == len(ref) == len(calls)
    assert not diffs, diffs[:20]


WORKLOAD = r"""
set -e
echo 'hello from a container' | tr a-z A-Z
printf '%s\n' c b a | sort | head -2
ls / >/dev/null && echo ls ok
wc -l < /etc/passwd >/dev/null && echo wc ok
mkdir -p "$TMPDIR/w" && cp /etc/hostname "$TMPDIR/w/h" 2>/dev/null || touch "$TMPDIR/w/h"
stat -c %F "$TMPDIR/w/h"
rm -r "$TMPDIR/w"
python3 - <<'PY'
import ctypes, errno, json, os, socket, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    r = getattr(libc, name)(*args)
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
t = threading.Thread(target=lambda: None); t.start(); t.join()
a, b = socket.socketpair(); a.sendall(b"x"); assert b.recv(1) == b"x"; a.close(); b.close()
print(json.dumps({
    "sum": sum(range(1000)),
    "child": subprocess.run(["true"]).returncode,
    "acct": call("acct", None),                 # ERRNO(EPERM): no CAP_SYS_PACCT
    "personality_query": call("personality", ctypes.c_ulong(0xFFFFFFFF)),
    "personality_bad": call("personality", ctypes.c_ulong(0x0400000)),  # not listed
    "syscall_9999": call("syscall", 9999),      # unknown: the default, ENOSYS
}, sort_keys=True))
PY
"""


def test_real_workload_same_under_both(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    results = {}
    for backend in ("ebpf", "classic"):
        proc = subprocess.run(
            [str(REPO / ".venv/bin/ebpfseccomp"), "run", "--profile", str(COMMON),
             "--backend", backend, "--", "sh", "-c", WORKLOAD],
            capture_output=True, text=True, env=env, timeout=300, check=False)
        results[backend] = proc
        assert f"attached the {'eBPF' if backend == 'ebpf' else 'classic'} filter" in proc.stderr
    e, c = results["ebpf"], results["classic"]
    print("workload output:\n" + e.stdout)
    assert e.returncode == c.returncode == 0, (e.stderr, c.stderr)
    assert e.stdout == c.stdout
    assert '"acct": "EPERM"' in e.stdout and '"syscall_9999": "ENOSYS"' in e.stdout
    assert '"personality_bad": "ENOSYS"' in e.stdout
