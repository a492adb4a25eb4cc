"""`ebpfseccomp record` on the host: the user-notification backend, the profile
writer, and programs re-run under their recorded profiles (classic filter).

The eBPF backend and the eBPF filter are tested in the VM
(tests/vm/test_record_vm.py).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from record_programs import (
    INT80_GETPID,
    ODD_CALLS,
    PIPELINE,
    PY,
    PYTHON_WORK,
    REPO,
    TARGET_PY,
    TCP_PAIR,
    UNIX_SOCKET,
    elf32_getpid_exit,
    program_output,
    record,
    replay,
    summary,
)

from ebpfseccomp import sys as esys
from ebpfseccomp.errors import UsageError
from ebpfseccomp.policy import model as policy_model
from ebpfseccomp.policy import semantics
from ebpfseccomp.record.model import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    MAX_TUPLES,
    MAX_UNNAMED,
    X32_SYSCALL_BIT,
    Recording,
    abi_of,
    arg_table,
    parse_arg_option,
)
from ebpfseccomp.record.profile import MAX_COMBOS, dumps, to_profile
from ebpfseccomp.record.tracepoint import unavailable as tracepoint_unavailable

NATIVE_X86 = os.uname().machine == "x86_64"


def _notify_usable() -> str | None:
    """Why the user-notification backend cannot run here, or None."""
    try:
        scope = int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text())
    except OSError:
        scope = 0
    caps = esys.capget().effective
    if scope >= 3 or (scope == 2 and not caps & (1 << esys.CAP_SYS_PTRACE)):
        return f"Yama ptrace_scope {scope} forbids pidfd_getfd on the child"
    return None


needs_notify = pytest.mark.skipif(_notify_usable() is not None,
                                  reason=str(_notify_usable()))
_TP_UNAVAILABLE = tracepoint_unavailable()
needs_tracepoint = pytest.mark.skipif(_TP_UNAVAILABLE is not None,
                                      reason=f"tracepoint backend: {_TP_UNAVAILABLE}")
#: The backends that run on a stock kernel, each with the reason it cannot here.
HOST_BACKENDS = [pytest.param("notify", marks=needs_notify),
                 pytest.param("tracepoint", marks=needs_tracepoint)]
BACKEND_NAMES = {"notify": "user-notification", "tracepoint": "tracepoint"}
needs_x86 = pytest.mark.skipif(not NATIVE_X86, reason="i386 ABI tests need an x86_64 host")


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "ebpfseccomp", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _is_valid_profile(path: Path) -> policy_model.Profile:
    profile = policy_model.parse(path.read_bytes(), source=str(path))
    semantics.compile(policy_model.select(profile, arch="x86_64" if NATIVE_X86 else "aarch64"))
    return profile


# --- the model and the profile writer ----------------------------------------


def test_abi_of_names_compat_calls() -> None:
    assert abi_of(AUDIT_ARCH_X86_64, 39) == ("x86_64", 39)
    assert abi_of(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39) == ("x32", 39)
    assert abi_of(AUDIT_ARCH_I386, 20) == ("i386", 20)
    assert abi_of(0x1234, 5) == ("arch-0x1234", 5)
    assert abi_of(AUDIT_ARCH_X86_64, -1) == ("x86_64", -1)


def test_recording_keeps_argument_combinations_and_counts() -> None:
    rec = Recording()
    for _ in range(3):
        rec.add(AUDIT_ARCH_X86_64, 41, (2, 1, 0, 0, 0, 0), pid=10)  # socket(AF_INET, STREAM)
    rec.add(AUDIT_ARCH_X86_64, 41, (1, 0x80001, 0, 0, 0, 0), pid=11)  # AF_UNIX, CLOEXEC
    rec.add(AUDIT_ARCH_X86_64, 39, (0,) * 6, pid=10)
    assert rec.calls[("x86_64", 41)] == 4
    assert rec.values[("x86_64", 41)] == {(2, 1): 3, (1, 0x80001): 1}
    assert ("x86_64", 39) not in rec.values
    assert rec.tasks == {10, 11}


def test_int_arguments_keep_the_low_half_only() -> None:
    rec = Recording()
    rec.add(AUDIT_ARCH_X86_64, 16, (3, 0xFFFFFFFF00005401, 0, 0, 0, 0), pid=1)  # ioctl TCGETS
    assert rec.values[("x86_64", 16)] == {(0x5401,): 1}
    rec.add(AUDIT_ARCH_X86_64, 56, (0xFFFFFFFF00000011,) + (0,) * 5, pid=1)  # clone: 64-bit
    assert rec.values[("x86_64", 56)] == {(0xFFFFFFFF00000011,): 1}


def test_calls_before_the_leaders_exec_are_not_the_commands() -> None:
    rec = Recording()
    rec.start_at_exec_of(100)
    rec.add(AUDIT_ARCH_X86_64, 3, (0,) * 6, pid=100)  # close: the recorder's stub
    rec.add(AUDIT_ARCH_X86_64, 59, (0,) * 6, pid=100)  # execve
    rec.add(AUDIT_ARCH_X86_64, 3, (0,) * 6, pid=100)
    assert rec.skipped_before_exec == 1
    assert dict(rec.calls) == {("x86_64", 59): 1, ("x86_64", 3): 1}


def test_profile_without_args_allows_every_named_call_on_every_abi() -> None:
    rec = Recording(backend="test")
    rec.add(AUDIT_ARCH_X86_64, 59, (0,) * 6, pid=1)  # execve
    rec.add(AUDIT_ARCH_I386, 20, (0,) * 6, pid=1)  # i386 getpid
    rec.add(AUDIT_ARCH_X86_64, 100000, (0,) * 6, pid=1)  # no name
    prof = to_profile(rec, native="x86_64")
    assert prof["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert prof["defaultErrnoRet"] == errno.ENOSYS
    assert prof["syscalls"][0]["names"] == ["execve", "getpid"]
    assert rec.unnamed() == [("x86_64", 100000, 1)]
    policy_model.parse(dumps(prof))


def test_profile_with_args_has_one_rule_per_combination() -> None:
    rec = Recording(backend="test")
    rec.add(AUDIT_ARCH_X86_64, 41, (2, 1, 0, 0, 0, 0), pid=1)
    rec.add(AUDIT_ARCH_X86_64, 41, (10, 0x80002, 0, 0, 0, 0), pid=1)
    rec.add(AUDIT_ARCH_X86_64, 56, (0x1200011,) + (0,) * 5, pid=1)
    prof = to_profile(rec, native="x86_64", with_args=True)
    socket_rules = [r for r in prof["syscalls"] if r["names"] == ["socket"]]
    assert [r["args"] for r in socket_rules] == [
        [{"index": 0, "value": 0xFFFFFFFF, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"},
         {"index": 1, "value": 0xFFFFFFFF, "valueTwo": 1, "op": "SCMP_CMP_MASKED_EQ"}],
        [{"index": 0, "value": 0xFFFFFFFF, "valueTwo": 10, "op": "SCMP_CMP_MASKED_EQ"},
         {"index": 1, "value": 0xFFFFFFFF, "valueTwo": 0x80002, "op": "SCMP_CMP_MASKED_EQ"}],
    ]
    clone = [r for r in prof["syscalls"] if r["names"] == ["clone"]]
    assert clone[0]["args"] == [{"index": 0, "value": 0x1200011, "op": "SCMP_CMP_EQ"}]
    sel = policy_model.select(policy_model.parse(dumps(prof)), arch="x86_64")
    plan = semantics.compile(sel)
    assert plan is not None


def test_profile_with_too_many_combinations_allows_the_whole_syscall() -> None:
    rec = Recording()
    for req in range(MAX_COMBOS + 1):
        rec.add(AUDIT_ARCH_X86_64, 16, (0, req, 0, 0, 0, 0), pid=1)
    prof = to_profile(rec, native="x86_64", with_args=True)
    assert prof["syscalls"] == [{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW",
                                 "comment": prof["syscalls"][0]["comment"]}]


def test_a_program_cannot_grow_the_recording_without_bound() -> None:
    rec = Recording()
    for v in range(MAX_TUPLES + 10):
        rec.add(AUDIT_ARCH_X86_64, 16, (0, v, 0, 0, 0, 0), pid=1)
    for nr in range(100000, 100000 + MAX_UNNAMED + 10):
        rec.add(AUDIT_ARCH_X86_64, nr, (0,) * 6, pid=1)
    assert len(rec.values[("x86_64", 16)]) == MAX_TUPLES
    assert rec.calls[("x86_64", 16)] == MAX_TUPLES + 10
    assert len(rec.unnamed()) == MAX_UNNAMED and rec.unnamed_dropped == 10
    prof = to_profile(rec, native="x86_64", with_args=True)
    assert prof["syscalls"][0]["names"] == ["ioctl"] and "args" not in prof["syscalls"][0]


def test_i386_old_mmap_has_no_arguments_to_constrain() -> None:
    rec = Recording()
    rec.add(AUDIT_ARCH_I386, 90, (0x1000,) + (0,) * 5, pid=1)  # old_mmap(struct *)
    rec.add(AUDIT_ARCH_X86_64, 9, (0, 4096, 3, 0x22, 0, 0), pid=1)
    prof = to_profile(rec, native="x86_64", with_args=True)
    assert {"names": ["mmap"], "action": "SCMP_ACT_ALLOW"}.items() <= prof["syscalls"][0].items()
    assert all("args" not in r for r in prof["syscalls"])


def test_args_option_parsing() -> None:
    assert parse_arg_option("setsockopt:1") == ("setsockopt", 1)
    assert parse_arg_option("openat:0x2") == ("openat", 2)
    for bad, needle in (("openat", "SYSCALL:INDEX"), ("openat:6", "out of range"),
                        ("openat:-1", "out of range"), ("nosuchcall:1", "unknown syscall"),
                        ("openat:x", "not a number"), (":1", "SYSCALL:INDEX")):
        with pytest.raises(UsageError, match=needle):
            parse_arg_option(bad)
    table = arg_table((("openat", 3), ("openat", 2)))
    assert [(s.index, s.bits) for s in table["openat"]] == [(2, 32), (3, 64)]


# --- the command line ---------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    ([], "no command to record"),
    (["--"], "no command to record"),
    (["--args", "nosuchcall:1", "--", "true"], "unknown syscall 'nosuchcall'"),
    (["--args", "openat:6", "--", "true"], "index 6 is out of range"),
    (["--timeout", "0", "--", "true"], "--timeout"),
])
def test_bad_input_is_a_clear_error(args: list[str], needle: str) -> None:
    proc = _cli("record", *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_teaches() -> None:
    proc = _cli("record", "--help")
    assert proc.returncode == 0
    for needle in ("run --profile profile.json", "--with-args", "user notification",
                   "--args SYSCALL:INDEX", "examples:"):
        assert needle in proc.stdout
    assert "record" in _cli("--help").stdout


@needs_notify
def test_a_command_that_cannot_be_run(tmp_path: Path) -> None:
    proc = record(["/nonexistent/cmd"], tmp_path / "p.json", "--backend", "notify")
    assert proc.returncode == 127
    assert "cannot run /nonexistent/cmd" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- real programs, recorded and re-run under their profile ------------------


def _record_and_replay(cmd: list[str], tmp_path: Path, backend: str, *extra: str) -> dict:
    profile = tmp_path / "profile.json"
    rec = record(cmd, profile, "--backend", backend, *extra)
    assert rec.returncode == 0, rec.stderr
    info = summary(rec)
    assert info["backend"] == BACKEND_NAMES[backend]
    assert info["lost"] == 0
    _is_valid_profile(profile)
    again = replay(cmd, profile, "classic")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == program_output(rec), again.stderr
    return info


@pytest.mark.slow
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_shell_pipeline_runs_again_under_its_profile(tmp_path: Path, backend: str) -> None:
    info = _record_and_replay(PIPELINE, tmp_path, backend)
    calls = info["syscalls"][info["abis"][0]]
    assert {"execve", "pipe2", "wait4"} <= set(calls) or {"execve", "pipe", "wait4"} <= set(calls)
    assert info["tasks"] >= 3  # sh, ls, sort, wc


@pytest.mark.slow
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_python_with_threads_and_a_child_runs_again(tmp_path: Path, backend: str) -> None:
    info = _record_and_replay([TARGET_PY, "-c", PYTHON_WORK], tmp_path, backend, "--with-args")
    calls = info["syscalls"]["x86_64" if NATIVE_X86 else "aarch64"]
    assert calls["clone" if "clone" in calls else "clone3"] >= 4
    assert "mmap" in info["arg_values"][info["abis"][0]]


@pytest.mark.slow
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_tcp_server_and_client_run_again_with_argument_rules(tmp_path: Path, backend: str
                                                             ) -> None:
    cmd = [TARGET_PY, "-c", TCP_PAIR]
    info = _record_and_replay(cmd, tmp_path, backend, "--with-args")
    sockets = info["arg_values"][info["abis"][0]]["socket"]
    assert any(v["args"]["0:family"] == hex(2) for v in sockets)  # AF_INET
    # the argument rules are enforced: an AF_UNIX socket is not what was recorded
    other = replay([TARGET_PY, "-c", UNIX_SOCKET], tmp_path / "profile.json", "classic")
    assert other.stdout.strip() == f"unix socket: {errno.ENOSYS}", other.stderr


@needs_notify
def test_unknown_numbers_and_bogus_pointers(tmp_path: Path) -> None:
    cmd = [TARGET_PY, "-c", ODD_CALLS]
    info = _record_and_replay(cmd, tmp_path, "notify")
    assert {"abi": info["abis"][0], "nr": 100000, "count": 1} in info["unnamed"]
    out = program_output(record(cmd, tmp_path / "again.json", "--backend", "notify"))
    assert out.split()[:2] == ["-1", str(errno.ENOSYS)]
    assert out.split()[3] == str(errno.EFAULT)


@needs_x86
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_int80_calls_are_recorded_under_i386(tmp_path: Path, backend: str) -> None:
    profile = tmp_path / "p.json"
    proc = record([TARGET_PY, "-c", INT80_GETPID], profile, "--backend", backend)
    assert proc.returncode == 0, proc.stderr
    if "same pid: True" not in proc.stdout:
        pytest.skip("this kernel does not run i386 syscalls (no IA32 emulation)")
    info = summary(proc)
    assert info["syscalls"]["i386"] == {"getpid": 1}
    assert "SCMP_ARCH_X86" in json.loads(profile.read_text())["architectures"]


@needs_x86
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_a_64_bit_program_execing_a_32_bit_one_is_recorded_under_both(tmp_path: Path,
                                                                      backend: str) -> None:
    prog = elf32_getpid_exit(tmp_path / "prog32", status=7)
    proc = record(["sh", "-c", f"{prog}; echo status $?"], tmp_path / "p.json",
                  "--backend", backend)
    if "status 7" not in proc.stdout:
        pytest.skip(f"this kernel does not run i386 programs: {proc.stdout!r}")
    info = summary(proc)
    assert {"getpid", "exit"} <= set(info["syscalls"]["i386"])
    assert "execve" in info["syscalls"]["x86_64"]
    assert info["abis"] == ["i386", "x86_64"]


@needs_notify
@needs_tracepoint
def test_notify_and_tracepoint_see_the_same_syscalls(tmp_path: Path) -> None:
    seen = {}
    for backend in ("notify", "tracepoint"):
        proc = record(PIPELINE, tmp_path / f"{backend}.json", "--backend", backend)
        assert proc.returncode == 0, proc.stderr
        # names, not counts: how often a pipe is read depends on scheduling
        seen[backend] = {abi: set(calls) for abi, calls in summary(proc)["syscalls"].items()}
    assert seen["notify"] == seen["tracepoint"]


@needs_tracepoint
def test_tracepoint_forks_are_followed_and_nothing_stays_attached(tmp_path: Path) -> None:
    proc = record(["sh", "-c", "(sh -c 'getconf PAGESIZE' &); sleep 0.2"],
                  tmp_path / "p.json", "--backend", "tracepoint")
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["tasks"] >= 3
    # the kernel frees the programs shortly after the recorder's last reference goes
    deadline = time.monotonic() + 15
    while shutil.which("bpftool"):
        left = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True)
        if left.returncode != 0 or "record_sys_enter" not in left.stdout:
            break
        assert time.monotonic() < deadline, "the tracepoint program outlived the recorder"
        time.sleep(0.2)


# --- what an untrusted program can do to the recorder ------------------------


@needs_notify
def test_descendants_that_outlive_the_command_are_killed_after_the_grace(tmp_path: Path
                                                                         ) -> None:
    start = time.monotonic()
    proc = record(["sh", "-c", "sleep 300 & echo started"], tmp_path / "p.json",
                  "--backend", "notify", "--grace", "1")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 60
    info = summary(proc)
    assert any("--grace" in n for n in info["notes"])
    assert "nanosleep" in info["syscalls"][info["abis"][0]] or \
        "clock_nanosleep" in info["syscalls"][info["abis"][0]]


@needs_notify
@pytest.mark.slow
def test_a_fork_bomb_is_stopped_by_the_timeout(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = record(["sh", "-c", "while :; do sleep 317 & done"], tmp_path / "p.json",
                  "--backend", "notify", "--timeout", "3")
    assert time.monotonic() - start < 90
    info = summary(proc)
    assert info["timed_out"] is True
    _is_valid_profile(tmp_path / "p.json")
    assert "clone" in info["syscalls"][info["abis"][0]] or \
        "fork" in info["syscalls"][info["abis"][0]]
    # nothing of the tree is left
    left = subprocess.run(["pgrep", "-x", "-f", "sleep 317"], capture_output=True, text=True)
    assert left.stdout.strip() == ""


@needs_notify
def test_a_stopped_command_does_not_hang_the_recorder(tmp_path: Path) -> None:
    proc = record(["sh", "-c", "kill -STOP $$; echo never"], tmp_path / "p.json",
                  "--backend", "notify", "--timeout", "2")
    info = summary(proc)
    assert info["timed_out"] is True
    assert "never" not in proc.stdout


@needs_notify
def test_threads_exiting_mid_call_and_closing_every_fd(tmp_path: Path) -> None:
    prog = ("import os, threading\n"
            "os.closerange(3, 4096)\n"
            "def spin():\n"
            "    while True: os.getppid()\n"
            "for _ in range(4): threading.Thread(target=spin, daemon=True).start()\n"
            "os._exit(3)\n")
    proc = record([TARGET_PY, "-c", prog], tmp_path / "p.json", "--backend", "notify",
                  "--timeout", "60")
    assert proc.returncode == 3, proc.stderr
    info = summary(proc)
    assert info["timed_out"] is False
    assert "exit_group" in info["syscalls"][info["abis"][0]]
    _is_valid_profile(tmp_path / "p.json")


@needs_notify
def test_filter_out_converts_the_recorded_profile(tmp_path: Path) -> None:
    proc = record(["true"], tmp_path / "p.json", "--backend", "notify",
                  "--filter-out", str(tmp_path / "f.c"))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "f.c").read_text()
    assert "execve" in text
    assert summary(proc)["filter"] == str(tmp_path / "f.c")
