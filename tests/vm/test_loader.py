"""Loader and attach on the patched kernel (in the VM, as root; some parts as 65534).

Every example loads and attaches; `ebpfseccomp run` execs under it; probe says
supported; pinned programs are attached by an unprivileged user; a root-loaded
fd passed to an unprivileged child attaches; the contract's attach errors
(EACCES without no_new_privs, EINVAL for a wrong fd, EPERM across user
namespaces, EBADF for fd -1); verifier refusals show the log with source
lines; and nothing leaks file descriptors.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpfseccomp import attach, loader
from ebpfseccomp import sys as esys
from ebpfseccomp.build import build
from ebpfseccomp.errors import KernelError, PrivilegeError

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO / "bpf" / "examples"
PY = str(REPO / ".venv" / "bin" / "python")
GETPPID = esys.nr("getppid")

DENY_GETPPID = """#include <ebpfseccomp/filter.h>
SEC("seccomp") int deny_getppid(struct seccomp_data *ctx)
{ return ctx->nr == NR ? SECCOMP_ERRNO(42) : SECCOMP_ALLOW; }
SECCOMP_LICENSE("GPL");
""".replace("NR", str(GETPPID))

#: a Python one-liner: exit 0 when getppid() fails with errno 42
CHECK_42 = ("import ctypes,sys; l=ctypes.CDLL(None, use_errno=True); r=l.syscall(NR); "
            "sys.exit(0 if r == -1 and ctypes.get_errno() == 42 else 1)").replace(
                "NR", str(GETPPID))

CTX_STORE = """#include <ebpfseccomp/filter.h>
SEC("seccomp") int bad(struct seccomp_data *ctx)
{
    ((volatile struct seccomp_data *)ctx)->nr = 1;  /* stores are refused */
    return SECCOMP_ALLOW;
}
SECCOMP_LICENSE("GPL");
"""


@pytest.fixture(autouse=True)
def _needs_patch(kernel_has_extended: bool) -> None:
    if not kernel_has_extended:
        pytest.skip("the running kernel lacks the eBPF seccomp patch")


@pytest.fixture(scope="module")
def objs() -> Iterator[dict[str, Path]]:
    # world-readable: the unprivileged user (65534) must read the objects too
    root = Path(tempfile.mkdtemp(prefix="ebpfseccomp-loader-", dir="/tmp"))
    os.chmod(root, 0o755)
    out = {p.stem: build(p, out=root / f"{p.stem}.o") for p in sorted(EXAMPLES_DIR.glob("*.c"))}
    for name, text in (("deny_getppid", DENY_GETPPID), ("ctx_store", CTX_STORE)):
        src = root / f"{name}.c"
        src.write_text(text)
        out[name] = build(src, out=root / f"{name}.o")
    for p in root.iterdir():
        os.chmod(p, 0o644)
    yield out
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bpffs_dir() -> Iterator[Path]:
    base = Path("/sys/fs/bpf")
    if not loader.is_bpffs(str(base)):
        base.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(base)], check=True)
    d = base / f"ebpfseccomp_test_{os.getpid()}"
    d.mkdir()
    os.chmod(base, os.stat(base).st_mode | 0o711)
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def child(fn: Any, *args: Any) -> tuple[int, bytes]:
    """Run fn(shared) in a forked child; returns (wait status, shared memory).

    The child reports through shared memory, which needs no system call (the
    filter under test may refuse write(2))."""
    shared = mmap.mmap(-1, 4096)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            code = int(fn(shared, *args) or 0)
        except BaseException as e:  # noqa: BLE001
            msg = f"EXC {type(e).__name__}: {e}".encode()[:4000]
            shared[:len(msg)] = msg
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status, bytes(shared[:4096]).rstrip(b"\0")


def put(shared: mmap.mmap, text: str) -> None:
    data = text.encode()
    shared[:len(data)] = data


# --- every example ----------------------------------------------------------------------


@pytest.mark.parametrize("example", sorted(p.stem for p in EXAMPLES_DIR.glob("*.c")))
def test_every_example_loads_and_attaches(example: str, objs: dict[str, Path]) -> None:
    before = fd_count()
    with loader.load(objs[example]) as prog:
        assert prog.fd > 2 and prog.tier is not None
        if prog.needed is not None and prog.needed > 0:
            assert prog.tier_confirmed

        def body(shared: mmap.mmap) -> int:
            rc = prog.attach()
            put(shared, f"attached {rc}")
            return 0

        status, out = child(body)
        assert out.startswith(b"attached 0"), out
    assert fd_count() == before


@pytest.mark.parametrize("example", sorted(p.stem for p in EXAMPLES_DIR.glob("*.c")))
def test_run_execs_under_every_example(example: str, objs: dict[str, Path]) -> None:
    r = subprocess.run([PY, "-m", "ebpfseccomp", "run", "-f", str(objs[example]), "--",
                        "/bin/true"], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr
    if example == "deny_all_errno":
        assert r.returncode != 0
    else:
        assert r.returncode == 0, r.stderr


def test_run_filter_takes_effect(objs: dict[str, Path]) -> None:
    code = CHECK_42
    r = subprocess.run([PY, "-m", "ebpfseccomp", "run", "-f", str(objs["deny_getppid"]),
                        "--flag", "log", "--", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_probe_supported() -> None:
    r = subprocess.run([PY, "-m", "ebpfseccomp", "probe", "--json"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["supported"] and d["extended_flag"] and d["prog_type"] is True


def test_probe_as_nobody(unprivileged: Any, sysctl: Any) -> None:
    sysctl("kernel.unprivileged_bpf_disabled", 2)
    r = unprivileged.run([PY, "-m", "ebpfseccomp", "probe", "--json"], cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["extended_flag"] and d["can_load"] is False and d["prog_type"] is None


# --- pinning and unprivileged use -----------------------------------------------------------


def test_pinned_program_run_by_nobody(objs: dict[str, Path], bpffs_dir: Path,
                                      unprivileged: Any, sysctl: Any) -> None:
    sysctl("kernel.unprivileged_bpf_disabled", 2)
    pin = bpffs_dir / "deny_getppid"
    r = subprocess.run([PY, "-m", "ebpfseccomp", "load", str(objs["deny_getppid"]), "--pin",
                        str(pin), "--mode", "0644"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    code = CHECK_42
    r = unprivileged.run([PY, "-m", "ebpfseccomp", "run", "--pinned", str(pin), "--",
                          sys.executable, "-c", code], cwd="/")
    assert r.returncode == 0, r.stderr
    # and loading it himself is refused before bpf(2), with the way out in the message
    r = unprivileged.run([PY, "-m", "ebpfseccomp", "run", "-f", str(objs["deny_getppid"]),
                          "--", "/bin/true"], cwd="/")
    assert r.returncode == 1 and "--pinned" in r.stderr and "Traceback" not in r.stderr


def test_pinned_maps(objs: dict[str, Path], bpffs_dir: Path) -> None:
    pin = bpffs_dir / "hashmap"
    with loader.load(objs["allowlist_hashmap"], pin=pin, pin_mode=0o644):
        pass
    with loader.open_pinned(pin) as p:
        assert p.maps["allowed"].lookup_int("read") == 0x7FFF0000
        p.maps["allowed"].update("getppid", 0x00050000 | 7)

        def body(shared: mmap.mmap) -> int:
            p.attach()
            put(shared, str(esys.raw_syscall(GETPPID)))
            return 0

        _, out = child(body)
        assert out == b"-7"


def _attach_inherited(fd: int) -> tuple[int, int]:
    esys.set_no_new_privs()
    rc = attach.attach(fd)
    return rc, esys.raw_syscall(GETPPID)


def test_root_loaded_fd_attached_by_nobody(objs: dict[str, Path], unprivileged: Any) -> None:
    with loader.load(objs["deny_getppid"]) as prog:
        rc, got = unprivileged.call(_attach_inherited, prog.fd)
    assert (rc, got) == (0, -42)


def _attach_without_nnp(fd: int) -> str:
    try:
        attach.attach(fd, set_no_new_privs=False)
    except PrivilegeError as e:
        return f"{getattr(e, 'errno', None)} {e}"
    return "attached"


def test_attach_without_no_new_privs_is_eacces(objs: dict[str, Path],
                                                unprivileged: Any) -> None:
    with loader.load(objs["deny_getppid"]) as prog:
        out = unprivileged.call(_attach_without_nnp, prog.fd)
    assert out.startswith(f"{errno.EACCES} ") and "no_new_privs" in out

    # root has CAP_SYS_ADMIN: no no_new_privs needed
    def body(shared: mmap.mmap) -> int:
        with loader.load(objs["deny_getppid"]) as p:
            p.attach(set_no_new_privs=False)
        put(shared, f"{int(esys.get_no_new_privs())} {esys.raw_syscall(GETPPID)}")
        return 0

    _, res = child(body)
    assert res == b"0 -42"


def test_attach_wrong_fds() -> None:
    def body(shared: mmap.mmap) -> int:
        out = []
        fd, _ = esys.prog_load_raw(esys.BPF_PROG_TYPE_SOCKET_FILTER, attach.TRIVIAL_PROGRAM)
        for f in (fd, os.open("/dev/null", os.O_RDONLY), -1):
            try:
                attach.attach(f)
                out.append("attached")
            except KernelError as e:
                out.append(f"{e.errno}:{e}")  # type: ignore[attr-defined]
        put(shared, json.dumps(out))
        return 0

    _, res = child(body)
    sock, null, bad = json.loads(res)
    assert sock.startswith(f"{errno.EINVAL}:") and "type 1, not a seccomp program" in sock
    assert null.startswith(f"{errno.EINVAL}:") and "not a BPF program" in null
    assert bad.startswith(f"{errno.EBADF}:")


def test_user_namespace_rule(objs: dict[str, Path], sysctl: Any) -> None:
    """Loaded in a child user namespace: refused (EPERM) in the parent's namespace."""
    sysctl("kernel.unprivileged_bpf_disabled", 0)
    if os.path.exists("/proc/sys/kernel/yama/ptrace_scope"):
        sysctl("kernel.yama.ptrace_scope", 1)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            a.close()
            esys.unshare(esys.CLONE_NEWUSER)
            with loader.load(objs["deny_getppid"]) as p:
                socket.send_fds(b, [b"fd"], [p.fd])
                # in its own namespace the program attaches fine
                esys.set_no_new_privs()
                p.attach()
                b.sendall(str(esys.raw_syscall(GETPPID)).encode())
        except BaseException as e:  # noqa: BLE001
            b.sendall(f"EXC {e}".encode())
        os._exit(0)
    b.close()
    try:
        msg, fds, _, _ = socket.recv_fds(a, 16, 1)
        assert msg == b"fd" and len(fds) == 1, msg
        own = a.recv(200)
        assert own == b"-42", own
        fd = fds[0]

        def body(shared: mmap.mmap) -> int:
            try:
                attach.attach(fd)
                put(shared, "attached")
            except PrivilegeError as e:
                put(shared, f"{e.errno} {e}")  # type: ignore[attr-defined]
            return 0

        _, res = child(body)
        assert res.startswith(f"{errno.EPERM} ".encode()) and b"user namespace" in res
        os.close(fd)
    finally:
        a.close()
        os.waitpid(pid, 0)


# --- refusals and leaks --------------------------------------------------------------------


def test_verifier_refusal_shows_log_and_source(objs: dict[str, Path]) -> None:
    before = fd_count()
    with pytest.raises(KernelError) as e:
        loader.load(objs["ctx_store"], check=False)
    text = str(e.value)
    assert e.value.errno in (errno.EACCES, errno.EINVAL)  # type: ignore[attr-defined]
    assert "verifier log" in text and "ctx_store.c:" in text, text
    assert fd_count() == before
    # with the static check, the same object is refused before bpf(2)
    from ebpfseccomp.errors import ObjectError

    with pytest.raises(ObjectError):
        loader.load(objs["ctx_store"])
    assert fd_count() == before


def test_no_fd_leaks_over_many_loads(objs: dict[str, Path], unprivileged: Any,
                                     sysctl: Any) -> None:
    for _ in range(3):
        loader.load(objs["allowlist_hashmap"]).close()
    before = fd_count()
    for _ in range(20):
        with loader.load(objs["allowlist_hashmap"]) as p:
            assert p.maps["allowed"].lookup_int("read") == 0x7FFF0000
        with pytest.raises(KernelError):
            loader.load(objs["ctx_store"], check=False)
    assert fd_count() == before

    sysctl("kernel.unprivileged_bpf_disabled", 2)

    def refused(path: str) -> tuple[int, int]:
        n0 = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            try:
                loader.load(path, check=False)
            except KernelError:
                pass
        return n0, len(os.listdir("/proc/self/fd"))

    n0, n1 = unprivileged.call(refused, str(objs["allowlist_hashmap"]))
    assert n0 == n1


def test_tsync_and_new_listener_flags(objs: dict[str, Path]) -> None:
    def body(shared: mmap.mmap) -> int:
        with loader.load(objs["deny_getppid"]) as p:
            rc = p.attach(["tsync"])
            lfd = p.attach(["new-listener"])
        put(shared, f"{rc} {lfd > 2} {esys.raw_syscall(GETPPID)}")
        return 0

    _, res = child(body)
    assert res == b"0 True -42", res


def test_python_api_map_update_applies_to_next_child(objs: dict[str, Path]) -> None:
    with loader.load(objs["allowlist_hashmap"]) as prog:
        def body(shared: mmap.mmap) -> int:
            prog.attach()
            put(shared, str(esys.raw_syscall(GETPPID)))
            return 0

        _, first = child(body)
        prog.maps["allowed"].update("getppid", 0x00050000 | 13)
        _, second = child(body)
    assert int(first) > 0 and second == b"-13"




RDONLY_TABLE = """#include <ebpfseccomp/filter.h>
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8);
    __uint(map_flags, BPF_F_RDONLY_PROG);
    __type(key, __u32);
    __type(value, __u32);
} table SEC(".maps");
const struct { __u32 k, v; } table_init[] SECCOMP_MAP_INIT(table) = { { NR, 42 } };
SEC("seccomp") int ro(struct seccomp_data *ctx)
{
    __u32 nr = ctx->nr, *v = bpf_map_lookup_elem(&table, &nr);
    return v ? SECCOMP_ERRNO(*v & 0xfff) : SECCOMP_ALLOW;
}
SECCOMP_LICENSE("GPL");
""".replace("NR", str(GETPPID))


def test_read_only_maps_are_frozen_after_their_contents(tmp_path: Path) -> None:
    """A map the program may only read (BPF_F_RDONLY_PROG) is frozen by the loader
    once its initial contents are in: nobody holding an fd of it, nor anyone who
    reopens it by id, can loosen the filter after it is handed out (issue 8, item 7)."""
    src = tmp_path / "ro.c"
    src.write_text(RDONLY_TABLE)
    obj = build(src, out=tmp_path / "ro.o")
    prog = loader.load(obj)
    try:
        table = prog.maps["table"]
        assert table.lookup(GETPPID) is not None  # the initial entry went in
        with pytest.raises(KernelError):
            table.update(GETPPID, 0x7FFF0000)
        reopened = esys.map_get_fd_by_id(esys.map_info(table.fd).id)
        try:
            key = GETPPID.to_bytes(4, "little")
            with pytest.raises(OSError) as exc:
                esys.map_update(reopened, key, (0).to_bytes(4, "little"))
            assert exc.value.errno == errno.EPERM
        finally:
            os.close(reopened)
    finally:
        prog.close()


def test_run_leaves_no_bpf_fd_in_the_command(objs: dict[str, Path]) -> None:
    """The filtered command holds no fd of the program or its maps: it cannot
    change its own filter's state through an inherited map fd (issue 8, item 7).
    rate_limit has a map; the command lists its own fds' targets."""
    code = ("import os; print('\\n'.join(os.readlink(f'/proc/self/fd/{f}') "
            "for f in os.listdir('/proc/self/fd') if os.path.exists(f'/proc/self/fd/{f}')))")
    r = subprocess.run([PY, "-m", "ebpfseccomp", "run", "-f", str(objs["rate_limit"]), "--",
                        sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    targets = r.stdout.split()
    assert targets, r.stdout  # stdin/stdout/stderr at least
    assert not [t for t in targets if "bpf" in t], targets
