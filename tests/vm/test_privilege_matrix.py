"""The privilege matrix: privilege.predict against the patched kernel, cell by cell.

kernel.yama.ptrace_scope 0..2 (3 in its own boot: it cannot be lowered again)
x loaders: root with capability subsets (CAP_SYS_PTRACE, CAP_BPF, CAP_PERFMON,
CAP_SYS_ADMIN; set with capset in a forked child) and uid 65534 without any
x objects that need each tier and each CAP_BPF-only verifier feature
x kernel.unprivileged_bpf_disabled 0 and 2.

In every cell the prediction (ok, errno) equals the kernel's answer to
loader.load(check=False), which skips the prediction and asks the kernel.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import submit_objects  # noqa: E402

from ebpfseccomp import elf, loader
from ebpfseccomp import sys as esys
from ebpfseccomp.build import build
from ebpfseccomp.errors import EbpfSeccompError
from ebpfseccomp.privilege import Credentials, Needs, SystemPolicy, predict

pytestmark = pytest.mark.vm

#: the objects of tests/submit_objects.py whose tier or verifier rule differs
MATRIX_OBJECTS = ("plain", "hashmap", "global", "ktime", "readuser", "tracing", "calls",
                  "loop", "lru", "big")
SOURCES: dict[str, str] = {name: submit_objects.SOURCES[name] for name in MATRIX_OBJECTS}
HEAD, TAIL = submit_objects.HEAD, submit_objects.TAIL

CAPS = {"PTRACE": esys.CAP_SYS_PTRACE, "BPF": esys.CAP_BPF, "PERFMON": esys.CAP_PERFMON,
        "ADMIN": esys.CAP_SYS_ADMIN}

#: loader name -> (uid, capabilities kept) ; None: all of root's
LOADERS: dict[str, tuple[int, tuple[str, ...] | None]] = {
    "root": (0, None),
    "root-nocaps": (0, ()),
    "root+ptrace": (0, ("PTRACE",)),
    "root+bpf": (0, ("BPF",)),
    "root+bpf+perfmon": (0, ("BPF", "PERFMON")),
    "root+bpf+perfmon+ptrace": (0, ("BPF", "PERFMON", "PTRACE")),
    "root+bpf+ptrace": (0, ("BPF", "PTRACE")),
    "root+admin": (0, ("ADMIN",)),
    "nobody": (65534, ()),
}


@pytest.fixture(scope="module")
def objects() -> Iterator[dict[str, Path]]:
    # world-readable: the unprivileged user (65534) loads them too
    root = Path(tempfile.mkdtemp(prefix="ebpfseccomp-matrix-", dir="/tmp"))
    out = {}
    for name, body in SOURCES.items():
        src = root / f"{name}.c"
        src.write_text(HEAD + body + TAIL)
        out[name] = build(src, out=root / f"{name}.o")
    os.chmod(root, 0o755)
    for p in root.iterdir():
        os.chmod(p, 0o644)
    yield out
    shutil.rmtree(root, ignore_errors=True)


def _needs_cover_tiers(objects: dict[str, Path]) -> None:
    n = {k: Needs.from_program(o := elf.load_object(str(v)), o.program()) for k, v in
         objects.items()}
    assert n["calls"].calls is not None, "clang inlined the subprogram"
    assert n["loop"].loop is not None, "clang unrolled the loop"
    assert n["big"].insn_count > 4096


def in_child(fn: Callable[[], Any], *, uid: int, keep: tuple[str, ...] | None) -> Any:
    """fn() in a forked child with uid and capabilities set; returns its result."""
    from vmhelpers import call_in_child, drop_to_nobody

    def become_loader() -> None:
        if uid != 0:
            drop_to_nobody(uid, uid)
        elif keep is not None:
            mask = 0
            for k in keep:
                mask |= 1 << CAPS[k]
            esys.capset(mask, mask, 0)

    return call_in_child(fn, setup=become_loader)


def _cells(objects: dict[str, Path]) -> Callable[[], list[tuple[str, Any, Any, str]]]:
    def run() -> list[tuple[str, Any, Any, str]]:
        creds = Credentials.current()
        policy = SystemPolicy.current()
        rows = []
        for name, path in sorted(objects.items()):
            obj = elf.load_object(str(path))
            p = predict(Needs.from_program(obj, obj.program()), creds, policy)
            try:
                with loader.load(path, check=False):
                    kernel: int | None = None
                detail = ""
            except EbpfSeccompError as e:
                kernel = getattr(e, "errno", -1)
                detail = e.render()[:400]
            rows.append((name, (p.ok, p.errno), (kernel is None, kernel), detail
                         + " | predicted: " + p.message[:300]))
        return rows

    return run


def _check_matrix(objects: dict[str, Path], sysctl: Any, scopes: tuple[int, ...]) -> int:
    _needs_cover_tiers(objects)
    bad: list[str] = []
    cells = 0
    for ubd in (0, 2):
        sysctl("kernel.unprivileged_bpf_disabled", ubd)
        for scope in scopes:
            sysctl("kernel.yama.ptrace_scope", scope)
            for who, (uid, keep) in LOADERS.items():
                rows = in_child(_cells(objects), uid=uid, keep=keep)
                for name, pred, kern, detail in rows:
                    cells += 1
                    if pred != kern:
                        bad.append(f"scope={scope} ubd={ubd} {who} {name}: predicted "
                                   f"{_fmt(pred)}, kernel {_fmt(kern)}: {detail}")
    assert not bad, f"{len(bad)} of {cells} cells differ:\n" + "\n".join(bad[:40])
    return cells


def _fmt(cell: tuple[bool, int | None]) -> str:
    ok, err = cell
    return "ok" if ok else errno.errorcode.get(err or 0, str(err))


@pytest.fixture
def yama() -> None:
    if not os.path.exists("/proc/sys/kernel/yama/ptrace_scope"):
        pytest.skip("Yama is not active in this kernel")
    if int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text()) == 3 and \
            os.environ.get("EBPFSECCOMP_SCOPE3") != "1":
        pytest.skip("ptrace_scope is 3 (cannot be lowered until reboot)")


def test_privilege_matrix(objects: dict[str, Path], sysctl: Any, yama: None,
                          kernel_has_extended: bool) -> None:
    if not kernel_has_extended:
        pytest.skip("the running kernel lacks the eBPF seccomp patch")
    cells = _check_matrix(objects, sysctl, (0, 1, 2))
    assert cells == 2 * 3 * len(LOADERS) * len(SOURCES)


def test_privilege_matrix_scope3(objects: dict[str, Path], sysctl: Any, yama: None,
                                 kernel_has_extended: bool) -> None:
    """ptrace_scope=3 is one-way until reboot: only in a boot of its own.

    tests/test_loader_host.py::test_scope3_matrix_in_its_own_boot starts it
    with vm/run and EBPFSECCOMP_SCOPE3=1.
    """
    if os.environ.get("EBPFSECCOMP_SCOPE3") != "1":
        pytest.skip("ptrace_scope=3 cannot be undone: runs in its own boot "
                    "(EBPFSECCOMP_SCOPE3=1, see test_loader_host.py)")
    if not kernel_has_extended:
        pytest.skip("the running kernel lacks the eBPF seccomp patch")
    _check_matrix(objects, sysctl, (3,))


def test_prediction_in_child_user_namespace(objects: dict[str, Path], sysctl: Any, yama: None,
                                            kernel_has_extended: bool) -> None:
    """All capabilities in a child user namespace: CAP_SYS_PTRACE counts for Yama, CAP_BPF not."""
    if not kernel_has_extended:
        pytest.skip("the running kernel lacks the eBPF seccomp patch")
    sysctl("kernel.unprivileged_bpf_disabled", 0)
    for scope in (1, 2):
        sysctl("kernel.yama.ptrace_scope", scope)

        def run() -> list[tuple[str, Any, Any, str]]:
            esys.unshare(esys.CLONE_NEWUSER)
            assert not Credentials.current().initial_userns
            return _cells(objects)()

        rows = in_child(run, uid=65534, keep=())
        bad = [f"scope={scope} {n}: predicted {_fmt(p)}, kernel {_fmt(k)}: {d}"
               for n, p, k, d in rows if p != k]
        assert not bad, "\n".join(bad)
