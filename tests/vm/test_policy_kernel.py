"""The kernel layers of issue 10: converted profiles under the real kernel.

1. A sample of the differential test's calls (tests/test_policy_differential.py)
   is made for real by the syscaller of tests/vm/test_differential.py, once
   under the converted eBPF filter and once under libseccomp's classic filter
   for the same profile.  Every outcome (errno, SIGSYS kill, passed) must be
   equal, and equal to the plan's answer.  As there, a classic "sentinel"
   filter installed first answers ERRNO(4000) to every generated call
   (args[5] == MAGIC), so an allowed call never runs; the profiles used do not
   compare args[5].
2. A container-like workload (a shell pipeline, coreutils, python3) runs
   under `ebpfseccomp run --profile` with the eBPF and with the classic
   backend; the output and exit status are the same.
"""

from __future__ import annotations

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
from ebpfseccomp.policy import inputs, libseccomp, model, semantics  # noqa: E402
from ebpfseccomp.policy.convert import write  # noqa: E402
from ebpfseccomp.syscalls import nr as syscall_nr  # noqa: E402

pytestmark = pytest.mark.vm

PROFILES = REPO.parent / "shared" / "profiles"
COMMON = PROFILES / "containers-common-seccomp.json"
SAMPLE = int(os.environ.get("EBPFSECCOMP_POLICY_VM_CALLS", "1500"))
X86_64 = 0xC000003E

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


@pytest.fixture(scope="module")
def syscaller(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.uname().machine != "x86_64":
        pytest.skip("the syscaller is x86_64 only")
    assert _ATTACH in td.SYSCALLER_C
    tmp = tmp_path_factory.mktemp("policy-syscaller")
    src = tmp / "syscaller.c"
    src.write_text(td.SYSCALLER_C.replace(_ATTACH, _ATTACH_EITHER))
    exe = tmp / "syscaller"
    subprocess.run(["cc", "-O1", "-o", str(exe), str(src)], check=True)
    return exe


def _sample(plan: semantics.Plan, count: int) -> list[td.Call]:
    """Native-arch calls from the differential stream: all argument-rule calls
    first (their boundaries), then a spread of numbers, unknown and x32 ones."""
    rng = random.Random(10)
    ruled, plain = [], []
    # Linux 6.12 never filters uretprobe (seccomp_uprobe_exception in
    # kernel/seccomp.c): made outside a uretprobe trampoline it raises SIGILL.
    unfiltered = {syscall_nr("uretprobe")}
    for arch, nr, args in inputs.generate(plan, minimum=0, product_cap=400):
        if arch != X86_64 or nr in unfiltered:
            continue
        call = td.Call(nr, (*args[:5], td.MAGIC))
        sp = plan.arches[0].syscalls.get(nr)
        (ruled if sp is not None and sp.branches else plain).append(call)
    rng.shuffle(ruled)
    rng.shuffle(plain)
    out = ruled[: count // 2]
    return out + plain[: count - len(out)]


def _outcomes(exe: Path, prog_fd: int, calls: list[td.Call], tmp: Path,
              cbpf: Path | None) -> list[str]:
    if cbpf is not None:
        os.environ["SYSCALLER_CBPF"] = str(cbpf)
    try:
        return [o.kind for o in td.run_calls(exe, prog_fd, calls, b"", tmp)]
    finally:
        os.environ.pop("SYSCALLER_CBPF", None)


@pytest.mark.parametrize("caps", [None, "all"], ids=["docker-caps", "all-caps"])
def test_kernel_outcomes_equal(syscaller: Path, tmp_path: Path, caps: str | None) -> None:
    sel = model.select(model.load(str(COMMON)), arch="x86_64", caps=model.parse_caps(caps),
                       kernel=(6, 12))
    assert not any(a.index == 5 for r in sel.rules for a in r.args)  # the sentinel's argument
    plan = semantics.compile(sel)
    obj = write(plan, tmp_path / "profile.o")
    classic = libseccomp.build(sel)
    cbpf = tmp_path / "profile.bpf"
    cbpf.write_bytes(classic.bytes())
    calls = _sample(plan, SAMPLE)
    prog = loader.load(str(obj))
    try:
        (tmp_path / "e").mkdir()
        (tmp_path / "c").mkdir()
        ebpf = _outcomes(syscaller, prog.fd, calls, tmp_path / "e", None)
        ref = _outcomes(syscaller, prog.fd, calls, tmp_path / "c", cbpf)
    finally:
        prog.close()
    expected = [td.normalise(Verdict(plan.decide(X86_64, c.nr, c.args))) for c in calls]
    diffs = [(hex(c.nr), [hex(a) for a in c.args], e, k, x)
             for c, e, k, x in zip(calls, ebpf, ref, expected, strict=True) if not e == k == x]
    kinds = {k: ebpf.count(k) for k in set(ebpf)}
    print(f"kernel: {len(calls)} calls under each filter, outcomes {kinds}, "
          f"{len(diffs)} disagreements")
    assert len(ebpf) == len(ref) == len(calls)
    assert not diffs, diffs[:20]
    assert "KILL" in kinds and "PASS" in kinds  # the sample reaches both ends


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
