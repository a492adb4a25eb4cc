"""bcc filters on the patched kernel (in the VM, as root): ebpfseccomp.bcc.

bcc (Debian's python3-bpfcc) compiles bpf/examples/bcc/count_and_deny.py's
C against the running kernel's headers (CONFIG_IKHEADERS:
/sys/kernel/kheaders.tar.xz), loads it as a seccomp program (type 33) and
the project's attach installs it on a child; the child's getppid() fails
with the filter's errno, and the parent reads the filter's counters as bcc
tables while the child is still running (blocked on a pipe), then again
after it exits.  Compiler and verifier errors come back as BuildError and
KernelError with bcc's diagnostics.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Protocol

import pytest

from ebpfseccomp import bcc
from ebpfseccomp import sys as esys
from ebpfseccomp.errors import BuildError, KernelError

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "bpf" / "examples" / "bcc" / "count_and_deny.py"
PY = str(REPO / ".venv" / "bin" / "python")
GETPPID = esys.nr("getppid")


@pytest.fixture(autouse=True)
def _needs(kernel_has_extended: bool) -> None:
    if not kernel_has_extended:
        pytest.skip("the running kernel lacks the eBPF seccomp patch")
    ok, why = bcc.available()
    if not ok:
        pytest.skip(f"bcc is not installed: {why}")
    if os.geteuid() != 0:
        pytest.skip("bcc loads programs as root (CAP_BPF): run as root")
    release = os.uname().release
    assert Path("/sys/kernel/kheaders.tar.xz").exists() or \
        Path(f"/lib/modules/{release}/build").exists(), \
        "the VM kernel has no headers for bcc: CONFIG_IKHEADERS (vm/kernel-bcc.config) is missing"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("count_and_deny", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Attachable(Protocol):
    def attach(self) -> int: ...


def _child(flt: _Attachable, ready_w: int, go_r: int, first: int, then: int) -> None:
    """In the forked child: attach, call getppid FIRST times, report, wait, THEN more."""
    code = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)

        def calls(n: int) -> bool:
            ok = True
            for _ in range(n):
                ctypes.set_errno(0)
                r = libc.syscall(GETPPID)
                ok &= r == -1 and ctypes.get_errno() == errno.EACCES
            return ok

        flt.attach()
        ok = calls(first)
        os.write(ready_w, b"1" if ok else b"0")
        os.read(go_r, 1)
        ok &= calls(then)
        code = 0 if ok else 3
    except BaseException:
        code = 2
    os._exit(code)


class _Child:
    """A forked child running _child under FLT: ready() when it made FIRST
    calls (and is blocked), go() to let it make THEN more.  As a context
    manager it is always reaped: killed first if the block raised, and its
    exit code is then in .code."""

    def __init__(self, flt: _Attachable, first: int, then: int):
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(ready_r)
            os.close(go_w)  # EOF on go_r when the parent goes away
            _child(flt, ready_w, go_r, first, then)
        os.close(ready_w)
        os.close(go_r)
        self._ready, self._go = ready_r, go_w

    def ready(self) -> bool:
        return os.read(self._ready, 1) == b"1"

    def running(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def go(self) -> None:
        os.write(self._go, b"g")

    def wait(self) -> int:
        """Exit code (after go(), or after killing a child a failed test left blocked)."""
        os.close(self._go)
        os.close(self._ready)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass

    def __enter__(self) -> _Child:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.kill()
        self.code = self.wait()


def test_example_enforces_and_its_map_is_read_while_the_child_runs(example: ModuleType) -> None:
    with example.load("getppid", errno.EACCES) as flt:
        assert flt.compile_seconds > 0 and flt.fd >= 0
        assert sorted(flt.table_names()) == ["counts", "denied"]
        with _Child(flt, 5, 3) as child:
            assert child.ready(), "getppid did not fail with EACCES in the child"
            # the child is blocked on the pipe: still running, under the filter
            assert child.running()
            counts = flt["counts"]
            assert counts[counts.Key(GETPPID)].value == 5
            assert flt["denied"][0].value == 5
            # the child's other calls are counted too (its write(2) to the pipe at least)
            seen = example.counts(flt)
            assert seen["getppid"] == 5 and seen.get("write", 0) >= 1, seen
            child.go()
        assert child.code == 0
        assert counts[counts.Key(GETPPID)].value == 8
        assert flt["denied"][0].value == 8
    # the parent itself was never filtered
    assert os.getppid() > 0


def test_example_script_runs_a_command_under_the_filter() -> None:
    check = ("import ctypes,sys; l=ctypes.CDLL(None, use_errno=True); r=l.syscall(NR); "
             "sys.exit(0 if r == -1 and ctypes.get_errno() == 1 else 1)").replace(
                 "NR", str(GETPPID))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    proc = subprocess.run([PY, str(EXAMPLE), "--every", "0.2", "--", sys.executable, "-c", check],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[1]: int(line.split()[0]) for line in proc.stdout.splitlines()}
    assert lines["getppid"] == 1
    assert lines["execve"] >= 1
    assert "1 call(s) of getppid refused with EPERM" in proc.stderr
    assert "bcc compiled the filter in" in proc.stderr
    assert time.monotonic() - t0 < 300


def test_compiler_errors_are_a_build_error_with_the_diagnostics() -> None:
    with pytest.raises(BuildError) as info:
        bcc.load("int broken(struct seccomp_data *ctx) { return undeclared_name; }")
    assert "undeclared_name" in str(info.value)


def test_verifier_refusal_is_a_kernel_error_with_the_log() -> None:
    src = """int bad(struct seccomp_data *ctx)
{
	((volatile struct seccomp_data *)ctx)->nr = 1;   /* the context is read-only */
	return SECCOMP_ALLOW;
}
"""
    with pytest.raises(KernelError) as info:
        bcc.load(src)
    text = str(info.value)
    assert "bad" in text and getattr(info.value, "errno", None) == errno.EACCES, text


def test_several_functions_need_a_name_and_unknown_tables_are_a_key_error() -> None:
    src = """static __always_inline int helper(int nr) { return nr == SYS_getppid; }
int first(struct seccomp_data *ctx) { return SECCOMP_ALLOW; }
int second(struct seccomp_data *ctx)
{ return helper(ctx->nr) ? SECCOMP_ERRNO(EPERM) : SECCOMP_ALLOW; }
"""
    with pytest.raises(BuildError, match="name the one to load"):
        bcc.load(src)
    with pytest.raises(BuildError, match="no function 'third'.*first, second"):
        bcc.load(src, "third")
    with bcc.load(src, "second") as flt:
        assert flt.name == "second" and flt.fd >= 0
        with pytest.raises(KeyError):
            flt["nothing"]


#: the same filter for clang and the project's loader (bpf/include/ebpfseccomp/maps.h)
CLANG_COUNTER = """#include <ebpfseccomp/filter.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1024);
         __type(key, __u32); __type(value, __u64); } counts SEC(".maps");
SEC("seccomp") int count_and_deny(struct seccomp_data *ctx)
{
	__u32 nr = ctx->nr;
	__u64 one = 1, *n = bpf_map_lookup_elem(&counts, &nr);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&counts, &nr, &one, BPF_NOEXIST);
	return ctx->nr == SYS_getppid ? SECCOMP_ERRNO(EACCES) : SECCOMP_ALLOW;
}
SECCOMP_LICENSE("GPL");
"""


def test_the_loaders_maps_answer_as_bcc_tables_do(tmp_path: Path) -> None:
    from ebpfseccomp import loader
    from ebpfseccomp.build import build

    src = tmp_path / "counter.c"
    src.write_text(CLANG_COUNTER)
    with loader.load(build(src, out=tmp_path / "counter.o")) as prog:
        counts = prog.maps["counts"]
        with _Child(prog, 4, 0) as child:
            assert child.ready(), "getppid did not fail with EACCES in the child"
            assert child.running()
            assert counts[GETPPID] == 4 and "getppid" in counts
            decoded = dict(counts.items_decoded())
            assert decoded[GETPPID] == 4 and all(isinstance(k, int) for k in decoded)
            child.go()
        assert child.code == 0
