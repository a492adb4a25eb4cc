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
import pickle
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpfseccomp import elf, loader
from ebpfseccomp import sys as esys
from ebpfseccomp.build import build
from ebpfseccomp.errors import EbpfSeccompError
from ebpfseccomp.privilege import Credentials, Needs, SystemPolicy, predict

pytestmark = pytest.mark.vm

HEAD = "#include <ebpfseccomp/filter.h>\n"
TAIL = '\nSECCOMP_LICENSE("GPL");\n'

SOURCES: dict[str, str] = {
    "none": """
SEC("seccomp") int f(struct seccomp_data *ctx)
{ return ctx->nr == 39 ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
    "hashmap": """
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 8);
         __type(key, __u32); __type(value, __u32); } m SEC(".maps");
SEC("seccomp") int f(struct seccomp_data *ctx)
{ __u32 k = ctx->nr; __u32 *v = bpf_map_lookup_elem(&m, &k); return v ? *v : SECCOMP_ALLOW; }""",
    "global": """
__u32 calls;
SEC("seccomp") int f(struct seccomp_data *ctx)
{ calls++; return SECCOMP_ALLOW; }""",
    "ktime": """
SEC("seccomp") int f(struct seccomp_data *ctx)
{ return bpf_ktime_get_ns() == 1 ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
    "readuser": """
SEC("seccomp") int f(struct seccomp_data *ctx)
{ char b[16]; return bpf_probe_read_user_str(b, sizeof(b), (void *)ctx->args[1]) == 3
    ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
    "tracing": """
static __u32 (* const smp_id)(void) = (void *)8;  /* bpf_get_smp_processor_id */
SEC("seccomp") int f(struct seccomp_data *ctx)
{ return smp_id() == 1000 ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
    "calls": """
static __attribute__((noinline)) int pick(int nr) { return nr == 39 ? 1 : 0; }
SEC("seccomp") int f(struct seccomp_data *ctx)
{ return pick(ctx->nr) ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
    "loop": """
SEC("seccomp") int f(struct seccomp_data *ctx)
{ __u64 a = ctx->args[0]; int n = 0;
  #pragma clang loop unroll(disable)
  for (int i = 0; i < 16; i++) { if (a & 1) n++; a >>= 1; }
  return n == 3 ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }""",
    "lru": """
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 8);
         __type(key, __u32); __type(value, __u32); } m SEC(".maps");
SEC("seccomp") int f(struct seccomp_data *ctx)
{ __u32 k = ctx->nr; __u32 *v = bpf_map_lookup_elem(&m, &k); return v ? *v : SECCOMP_ALLOW; }""",
}


def _big_source(cases: int = 2200) -> str:
    body = "\n".join(f"  if (a == {i * 7919 % 100003}) return SECCOMP_ERRNO({1 + i % 100});"
                     for i in range(cases))
    return ("SEC(\"seccomp\") int f(struct seccomp_data *ctx)\n{ __u64 a = ctx->args[0];\n"
            + body + "\n  return SECCOMP_ALLOW; }")


SOURCES["big"] = _big_source()

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
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            if uid != 0:
                from vmhelpers import drop_to_nobody

                drop_to_nobody(uid, uid)
            elif keep is not None:
                mask = 0
                for k in keep:
                    mask |= 1 << CAPS[k]
                esys.capset(mask, mask, 0)
            payload = pickle.dumps(("ok", fn()))
        except BaseException:
            payload = pickle.dumps(("exc", traceback.format_exc()))
        with os.fdopen(w, "wb") as f:
            f.write(payload)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    msg = pickle.loads(data)
    if msg[0] != "ok":
        raise AssertionError(f"child failed:\n{msg[1]}")
    return msg[1]


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
