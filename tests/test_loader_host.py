"""Loader, attach and their commands on the host (no VM, usually no patch).

On the stock host kernel `ebpfseccomp probe` and `run` must say that the
kernel lacks the patch and exit non-zero without a traceback; every error
path closes what it opened (counted in /proc/self/fd).  Where the host lets
us (root), the libbpf path is exercised for real with the program type
switched to SOCKET_FILTER, which any kernel loads: maps, .rodata.init
entries, --map preloads, pinning and reopening.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpfseccomp import attach as attach_mod
from ebpfseccomp import cli, loader
from ebpfseccomp import sys as esys
from ebpfseccomp.errors import KernelError, ObjectError, PrivilegeError, UsageError
from ebpfseccomp.privilege import Credentials, SystemPolicy

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "bpf" / "examples"
PY = sys.executable

needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")


def patched() -> bool:
    return attach_mod.extended_flag_supported()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def can_load_bpf() -> bool:
    try:
        fd = esys.map_create_raw(2, 4, 4, 1)
    except OSError:
        return False
    os.close(fd)
    return True


needs_bpf = pytest.mark.skipif(not can_load_bpf(), reason="this host does not let us use bpf(2)")


@pytest.fixture(scope="module")
def objs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("clang") is None:
        pytest.skip("clang is not installed")
    from ebpfseccomp.build import build

    root = tmp_path_factory.mktemp("objs")
    out = {}
    for name in ("allow_all", "allowlist_hashmap", "execve_once", "arg_rules"):
        out[name] = build(EXAMPLES / f"{name}.c", out=root / f"{name}.o")
    return out


def run_cli(*args: str, user_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(user_env or {}))
    return subprocess.run([PY, "-m", "ebpfseccomp", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


# --- map keys and values -------------------------------------------------------------


@pytest.mark.parametrize(("value", "size", "raw"), [
    (1, 4, b"\x01\0\0\0"),
    ("0x10", 4, b"\x10\0\0\0"),
    ("-1", 4, b"\xff\xff\xff\xff"),
    (-2, 8, b"\xfe" + b"\xff" * 7),
    ("hex:00ff", 2, b"\x00\xff"),
    ("str:/tmp", 8, b"/tmp\0\0\0\0"),
    ("getppid", 4, (110).to_bytes(4, "little") if os.uname().machine == "x86_64"
     else (173).to_bytes(4, "little")),
    (b"abcd", 4, b"abcd"),
    (0x7FFF0000, 4, b"\0\0\xff\x7f"),
])  # fmt: skip
def test_encode(value: object, size: int, raw: bytes) -> None:
    assert loader.encode(value, size) == raw  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "size", "words"), [
    (1 << 32, 4, "does not fit"),
    ("-2147483649", 4, "does not fit"),
    ("hex:zz", 2, "not hex"),
    ("hex:00", 2, "1 bytes given"),
    ("str:/very/long", 4, "holds 4"),
    ("opnat", 4, "neither a number, a syscall name"),
    (b"abc", 4, "needs 4"),
    (1.5, 4, "give an int"),
])  # fmt: skip
def test_encode_errors(value: object, size: int, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        loader.encode(value, size)  # type: ignore[arg-type]


def test_parse_map_assignments() -> None:
    assert loader.parse_map_assignment("allowed:openat=1") == ("allowed", "openat", "1")
    assert loader.parse_map_assignment("p:0=str:a=b") == ("p", "0", "str:a=b")
    for bad in ("allowed", "allowed:1", ":1=2", "m:=2", "m:1="):
        with pytest.raises(UsageError, match="NAME:KEY=VALUE"):
            loader.parse_map_assignment(bad)
    assert loader.group_assignments(["a:1=2", "a:3=4", "b:0=1"]) == {
        "a": {"1": "2", "3": "4"}, "b": {"0": "1"}}


def test_patch_global() -> None:
    assert loader.patch_global(".data", b"\0" * 8, {"4": "7"}) == b"\0\0\0\0\x07\0\0\0"
    assert loader.patch_global(".data", b"\0" * 4, {0: "hex:0102"}) == b"\x01\x02\0\0"
    with pytest.raises(UsageError, match="outside"):
        loader.patch_global(".data", b"\0" * 4, {"2": "hex:010203"})


# --- the raw syscall layer ------------------------------------------------------------------


def _in_child(fn) -> int:  # type: ignore[no-untyped-def]
    pid = os.fork()
    if pid == 0:
        try:
            code = fn()
        except BaseException:
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_capget_matches_proc_status() -> None:
    caps = esys.capget()
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith("Cap"))
    assert caps.effective == int(fields["CapEff"], 16)
    assert caps.permitted == int(fields["CapPrm"], 16)


def test_no_new_privs_in_child() -> None:
    def child() -> int:
        before = esys.get_no_new_privs()
        esys.set_no_new_privs()
        return 0 if (not before or True) and esys.get_no_new_privs() else 1

    assert _in_child(child) == 0


def test_capset_drops_in_child() -> None:
    if esys.capget().effective == 0:
        pytest.skip("no capabilities to drop")

    def child() -> int:
        c = esys.capget()
        keep = c.permitted & ~(1 << esys.CAP_BPF)
        esys.capset(keep & c.effective, keep)
        return 0 if not esys.capget().effective >> esys.CAP_BPF & 1 else 1

    assert _in_child(child) == 0


def test_classic_filter_attach_and_raw_syscall() -> None:
    # ld [0] (nr); jeq getppid -> ERRNO(5) else ALLOW: what bench_loader installs, in cBPF
    import struct

    nr = esys.nr("getppid")
    prog = b"".join(struct.pack("<HBBI", *i) for i in (
        (0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x00050005), (0x06, 0, 0, 0x7FFF0000)))

    def child() -> int:
        esys.set_no_new_privs()
        esys.seccomp_attach_cbpf(prog)
        return 0 if esys.raw_syscall(nr) == -errno.EIO else 1

    assert _in_child(child) == 0


def test_seccomp_errors_are_oserrors() -> None:
    with pytest.raises(OSError) as e:
        esys.seccomp_attach_fd(-1, 1 << 6)
    assert e.value.errno in (errno.EINVAL, errno.EBADF)


def test_prog_info_rejects_non_bpf_fd() -> None:
    with open("/dev/null") as f, pytest.raises(OSError) as e:
        esys.prog_info(f.fileno())
    assert e.value.errno in (errno.EINVAL, errno.EBADF, errno.EPERM)


@needs_bpf
def test_map_class_on_a_real_kernel_map() -> None:
    fd = esys.map_create_raw(1, 4, 8, 16, name="t")
    m = loader.Map("t", fd, 1, 4, 8, 16)
    try:
        assert m.lookup(1) is None
        m.update(1, 0x1122)
        m.update("getppid", "-1")
        assert m.lookup_int(1) == 0x1122
        assert m.lookup_int("getppid") == (1 << 64) - 1
        assert sorted(k for k, _ in m.items_int()) == sorted([1, esys.nr("getppid")])
        assert m.delete(1) and not m.delete(1)
        with pytest.raises(KernelError, match="full"):
            for i in range(200, 300):
                m.update(i, i, esys.BPF_NOEXIST)
    finally:
        m.close()
    assert m.fd == -1


@needs_bpf
def test_percpu_map_values_are_per_cpu() -> None:
    fd = esys.map_create_raw(6, 4, 4, 2)
    m = loader.Map("pc", fd, 6, 4, 4, 2)
    try:
        m.update(0, 3)
        assert m.lookup_int(0) == 3 * esys.possible_cpus()
    finally:
        m.close()


# --- the kernel lacks the patch: probe, load, attach, run ------------------------------------

host_unpatched = pytest.mark.skipif(patched(), reason="this kernel has the eBPF seccomp patch")


@host_unpatched
def test_probe_exits_1_and_names_the_missing_patch() -> None:
    r = run_cli("probe")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NOT supported" in r.stdout
    assert "lacks the eBPF seccomp patch" in r.stdout and "kernel-patches/" in r.stdout
    assert "Traceback" not in r.stderr


@host_unpatched
def test_probe_json() -> None:
    import json

    r = run_cli("probe", "--json")
    assert r.returncode == 1
    d = json.loads(r.stdout)
    assert d["supported"] is False and d["extended_flag"] is False
    assert d["prog_type"] in (False, None)
    assert {"ptrace_scope", "unprivileged_bpf_disabled", "tier", "release"} <= set(d)


@host_unpatched
@needs_clang
def test_run_on_unpatched_kernel_is_one_clear_error(objs: dict[str, Path]) -> None:
    r = run_cli("run", "-f", str(objs["allowlist_hashmap"]), "--", "true")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "lacks the eBPF seccomp patch" in r.stderr or "would be refused" in r.stderr
    assert r.stderr.count("\n") <= 2, r.stderr


@host_unpatched
@needs_clang
def test_load_on_unpatched_kernel_leaks_no_fd(objs: dict[str, Path]) -> None:
    for _ in range(2):  # the first call may open libbpf's own descriptors
        with pytest.raises(KernelError):
            loader.load(objs["allowlist_hashmap"])
    before = fd_count()
    for name in objs:
        with pytest.raises(KernelError, match="lacks the eBPF seccomp patch|refused"):
            loader.load(objs[name])
    assert fd_count() == before


@host_unpatched
def test_attach_on_unpatched_kernel() -> None:
    def child() -> int:
        try:
            attach_mod.attach(-1)
        except KernelError as e:
            return 0 if "lacks the eBPF seccomp patch" in str(e) else 1
        return 2

    assert _in_child(child) == 0


# --- refusals before bpf(2), and bad input ------------------------------------------------------


@needs_clang
def test_privilege_refusal_before_bpf(objs: dict[str, Path]) -> None:
    nobody = Credentials.from_values(65534, [])
    before = fd_count()
    with pytest.raises(PrivilegeError) as e:
        loader.load(objs["allowlist_hashmap"], creds=nobody, policy=SystemPolicy(3, 0))
    text = str(e.value)
    assert "map 'allowed'" in text and "ptrace_scope=3" in text and "EACCES" in text
    assert "allowlist_hashmap.c:" in text  # the source line of the reference
    with pytest.raises(PrivilegeError, match="unprivileged_bpf_disabled=2"):
        loader.load(objs["allow_all"], creds=nobody, policy=SystemPolicy(1, 2))
    with pytest.raises(PrivilegeError, match="bpf_probe_read_user_str.*CAP_SYS_PTRACE"):
        loader.load(objs["arg_rules"], creds=nobody, policy=SystemPolicy(2, 0))
    assert fd_count() == before


def test_missing_and_bad_objects(tmp_path: Path) -> None:
    before = fd_count()
    with pytest.raises(ObjectError, match="no such file"):
        loader.load(tmp_path / "nope.o")
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"not an ELF file at all")
    with pytest.raises(ObjectError):
        loader.load(bad)
    assert fd_count() == before


@needs_clang
def test_unknown_map_and_bad_values_refused_early(objs: dict[str, Path]) -> None:
    before = fd_count()
    with pytest.raises(UsageError, match="no map 'nope'"):
        loader.load(objs["allowlist_hashmap"], maps={"nope": {1: 1}})
    with pytest.raises(UsageError, match="does not fit in 4 bytes"):
        loader.load(objs["allowlist_hashmap"], maps={"allowed": {"openat": 1 << 40}})
    assert fd_count() == before


@needs_clang
@pytest.mark.parametrize(("args", "code", "words"), [
    (["run", "-f", "X"], 2, "no command to run"),
    (["run", "-f", "X", "--flag", "bogus", "--", "true"], 2, "invalid choice"),
    (["run", "-f", "X", "--map", "allowed", "--", "true"], 2, "NAME:KEY=VALUE"),
    (["run", "-f", "X", "--map", "allowed:opnat=1", "--", "true"], 2, "syscall name"),
    (["run", "-f", "/nonexistent.o", "--", "true"], 1, "no such file"),
    (["run", "--pinned", "/sys/fs/bpf/ebpfseccomp-none", "--", "true"], 1, "nothing is pinned"),
    (["load", "X", "--pin", "/tmp/not-bpffs/x"], 2, "does not exist"),
    (["load", "X", "--pin", "/tmp/x", "--mode", "9"], 2, "octal"),
    (["load", "X", "--pin", "/sys/fs/bpf/x.o"], 2, "may not contain '.'"),
    (["run", "-f", "X", "--", "true"], 1, ""),
])  # fmt: skip
def test_cli_errors(objs: dict[str, Path], args: list[str], code: int, words: str) -> None:
    args = [str(objs["allowlist_hashmap"]) if a == "X" else a for a in args]
    r = run_cli(*args)
    assert r.returncode == code, r.stderr
    assert words in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_help_teaches() -> None:
    for cmd, words in (("run", "--pinned PATH"), ("load", "--mode"), ("probe", "EBADF")):
        r = run_cli(cmd, "--help")
        assert r.returncode == 0 and words in r.stdout


# --- the libbpf path for real, as a socket filter ------------------------------------------------


@pytest.fixture
def as_socket_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load 'seccomp' objects as SOCKET_FILTER (1), which any kernel knows."""
    if not can_load_bpf():
        pytest.skip("this host does not let us use bpf(2)")
    monkeypatch.setattr(loader.contract, "BPF_PROG_TYPE_SECCOMP", 1)


@pytest.fixture
def bpffs(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "bpffs"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "bpf", "bpf", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a bpf file system here")
    try:
        try:
            os.mkdir(d / "probe")
            os.rmdir(d / "probe")
            fd = esys.map_create_raw(2, 4, 4, 1)
            try:
                esys.obj_pin(fd, str(d / "probe"))
            finally:
                os.close(fd)
            os.unlink(d / "probe")
        except OSError as e:
            pytest.skip(f"this host's bpf file system refuses changes ({e.strerror})")
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


@needs_clang
def test_load_through_libbpf(objs: dict[str, Path], as_socket_filter: None) -> None:
    before = fd_count()
    with loader.load(objs["allowlist_hashmap"], maps={"allowed": {"ptrace": "0x50001"}}) as p:
        assert p.fd > 2 and p.name == "allowlist_hashmap"
        assert set(p.maps) == {"allowed"}  # .rodata.init.allowed is not a kernel map
        m = p.maps["allowed"]
        assert m.lookup_int("read") == 0x7FFF0000  # from .rodata.init.allowed
        assert m.lookup_int("ptrace") == 0x50001  # --map, after the init entries
        assert m.lookup_int("mount") is None
        assert p.tier is not None and p.tier_confirmed
        assert "processed" in p.log  # the verifier log was captured
        assert fd_count() == before + 2
    assert fd_count() == before
    assert p.fd == -1


@needs_clang
def test_globals_preloaded_before_load(objs: dict[str, Path], as_socket_filter: None) -> None:
    from ebpfseccomp import elf

    obj = elf.load_object(objs["execve_once"])
    glob = [n for n, s in obj.maps.items() if s.is_global and not n.startswith(".rodata.init")]
    if not glob:
        pytest.skip("execve_once has no globals")
    with loader.load(objs["execve_once"]) as p:
        assert set(glob) <= set(p.maps)


@needs_clang
def test_pin_and_open_pinned(objs: dict[str, Path], as_socket_filter: None, bpffs: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    pin = bpffs / "allow"
    with loader.load(objs["allowlist_hashmap"], pin=pin, pin_mode=0o644) as p:
        assert p.pinned == str(pin)
    assert oct(pin.stat().st_mode & 0o777) == oct(0o644)
    assert (bpffs / "allow_maps" / "allowed").exists()
    before = fd_count()
    with loader.open_pinned(pin) as q:
        assert q.name == "allowlist_hash"[:15] or q.name.startswith("allowlist")
        assert q.maps["allowed"].lookup_int("read") == 0x7FFF0000
        q.maps["allowed"].update("mount", 1)
    assert fd_count() == before
    with pytest.raises(KernelError, match="pinned there already"):
        loader.load(objs["allowlist_hashmap"], pin=pin)
    assert fd_count() == before
    # a map is not a program
    with pytest.raises(ObjectError, match="not a BPF program"):
        loader.open_pinned(bpffs / "allow_maps" / "allowed")
    assert fd_count() == before


@needs_clang
def test_wrong_type_pinned_program_refused(objs: dict[str, Path], as_socket_filter: None,
                                           bpffs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin = bpffs / "sock"
    loader.load(objs["allow_all"], pin=pin).close()
    monkeypatch.setattr(loader.contract, "BPF_PROG_TYPE_SECCOMP", 33)
    before = fd_count()
    with pytest.raises(ObjectError, match="type 1, not a seccomp program"):
        loader.open_pinned(pin)
    assert fd_count() == before


@needs_clang
def test_cli_load_pins(objs: dict[str, Path], bpffs: Path) -> None:
    # in-process, so that the monkeypatched program type applies
    import ebpfseccomp.loader as L

    old = L.contract.BPF_PROG_TYPE_SECCOMP
    L.contract.BPF_PROG_TYPE_SECCOMP = 1
    try:
        if not can_load_bpf():
            pytest.skip("this host does not let us use bpf(2)")
        code = cli.main(["load", str(objs["allowlist_hashmap"]), "--pin", str(bpffs / "p"),
                         "--mode", "0644", "--map", "allowed:mount=1"])
    finally:
        L.contract.BPF_PROG_TYPE_SECCOMP = old
    assert code == 0
    assert (bpffs / "p").exists()


# --- ptrace_scope=3 in a boot of its own ------------------------------------------------------


@pytest.mark.slow
def test_scope3_matrix_in_its_own_boot(request: pytest.FixtureRequest) -> None:
    """kernel.yama.ptrace_scope=3 cannot be lowered until reboot, so its cells of the
    privilege matrix, and the kernel selftest for scope 3, run in a VM boot of their
    own (only with pytest --vm)."""
    if not request.config.getoption("--vm", default=False):
        pytest.skip("needs the patched kernel in the VM: run with --vm (make test)")
    py = REPO / ".venv" / "bin" / "python"
    script = (
        f"EBPFSECCOMP_SCOPE3=1 {py} -m pytest -q -m vm -p no:cacheprovider -rs "
        "tests/vm/test_privilege_matrix.py::test_privilege_matrix_scope3; s=$?; "
        'echo "== selftest"; cd /tmp && SECCOMP_EBPF_SCOPE3=1 '
        '"$EBPFSECCOMP_KERNEL_DIR/selftests/seccomp_ebpf" -t yama_scope_no_attach; '
        't=$?; [ $s = 0 ] && [ $t = 0 ]'
    )
    r = subprocess.run([str(REPO / "vm" / "run"), "--", "bash", "-c", script],
                       capture_output=True, text=True, cwd=REPO, timeout=3000)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "1 passed" in out, out[-4000:]
    tap = out.split("== selftest", 1)[-1]
    assert "ok 1 global.yama_scope_no_attach" in tap and "# SKIP" not in tap, tap[-2000:]
    assert "not ok" not in tap, tap[-2000:]


def test_libbpf_probe_read_rewrite_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    """libbpf 1.1 turns probe_read_user(_str) into probe_read(_str) when its
    tracepoint feature probe fails (no CONFIG_BPF_EVENTS, no CAP_PERFMON);
    the prepare-load hook gives the object's own helper ids back."""
    from ebpfseccomp.insn import Insn

    def call(imm: int) -> Insn:
        return Insn(0x85, 0, 0, 0, imm)

    original = [call(112), Insn(0xB7, 0, 0, 0, 0), call(114), call(5), Insn(0x95, 0, 0, 0, 0)]
    buf = (esys.BpfInsn * 5)()
    for slot, ins in zip(buf, original, strict=True):
        slot.code, slot.imm = ins.code, ins.imm
    buf[0].imm, buf[2].imm = 4, 45  # what libbpf's sanitizer leaves
    monkeypatch.setattr(esys, "program_name", lambda h: "f")
    monkeypatch.setattr(esys, "program_insns", lambda h: buf)
    loader._helper_restorer("f", original, "x.o")(1)
    assert [b.imm for b in buf] == [112, 0, 114, 5, 0]

    # Both the user and the kernel variant in one program: told apart by position.
    both = [call(112), call(113)]
    buf2 = (esys.BpfInsn * 2)()
    for slot in buf2:
        slot.code, slot.imm = 0x85, 4
    monkeypatch.setattr(esys, "program_insns", lambda h: buf2)
    loader._helper_restorer("f", both, "x.o")(1)
    assert [b.imm for b in buf2] == [112, 113]

    # ... and when the position does not say, a clear error rather than a guess.
    buf3 = (esys.BpfInsn * 3)()
    for slot in buf3:
        slot.code, slot.imm = 0x85, 4
    monkeypatch.setattr(esys, "program_insns", lambda h: buf3)
    with pytest.raises(ObjectError, match="cannot be told apart"):
        loader._helper_restorer("f", both, "x.o")(1)


def test_below_the_tracing_tier_unprivileged_verifier_rules_apply() -> None:
    """The v2 kernel verifies a seccomp program below the tracing tier with the
    unprivileged rules whatever the loader's CAP_PERFMON (a read of stack never
    written could return stale kernel data to the filtered tasks): the loader
    refuses such a program early for root when the tier will be lower."""
    from asm import ALLOW, flatten, ldx, ret, simple_object

    from ebpfseccomp.contract import Tier
    from ebpfseccomp.elf import load_object_bytes
    from ebpfseccomp.insn import BPF_DW

    obj = load_object_bytes(simple_object(flatten(ldx(BPF_DW, 2, 10, -8), ret(ALLOW))), "u.o")
    prog = obj.programs[0]
    root = Credentials.from_values(0, ["CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON"])
    loader._static_check(obj, prog, "u.o", root, Tier.TRACING)  # stale data, but loads
    with pytest.raises(PrivilegeError, match="invalid read from stack"):
        loader._static_check(obj, prog, "u.o", root, Tier.NONE)
