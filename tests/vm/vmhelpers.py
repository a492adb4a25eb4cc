"""Helpers behind the VM fixtures (tests/vm/conftest.py); import the types from here."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

NOBODY = 65534
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_SYS_SECCOMP = 317  # x86_64
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_EXTENDED = 1 << 6

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def in_vm() -> bool:
    return os.environ.get("EBPFSECCOMP_IN_VM") == "1"


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except OSError:
        return 40


def drop_to_nobody(uid: int = NOBODY, gid: int = NOBODY) -> None:
    """In the current process: no groups, uid/gid 65534, empty capability sets."""
    for cap in range(_last_cap() + 1):
        _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # clears permitted/effective/ambient caps


class Unprivileged:
    """Runs things as uid/gid 65534 without capabilities."""

    uid = NOBODY
    gid = NOBODY

    def run(
        self, cmd: Sequence[str], *, check: bool = False, timeout: float = 120, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """subprocess.run(cmd) as nobody (text mode, output captured)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(
            list(cmd), preexec_fn=drop_to_nobody, check=check, timeout=timeout, **kwargs
        )

    def call(self, func: Callable[..., Any], *args: Any, timeout: float = 120, **kw: Any) -> Any:
        """func(*args, **kw) in a forked child running as nobody (call_in_child)."""
        return call_in_child(func, *args, setup=lambda: drop_to_nobody(self.uid, self.gid), **kw)


def call_in_child(func: Callable[..., Any], *args: Any,
                  setup: Callable[[], None] | None = None, **kw: Any) -> Any:
    """func(*args, **kw) in a forked child, after SETUP() there (dropping
    credentials, say): what the child changes stays in the child.

    Returns its (picklable) result; an exception in the child (or in SETUP)
    is re-raised here, as the same type when it pickles, else as RuntimeError
    with the child's traceback.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            if setup is not None:
                setup()
            payload = pickle.dumps(("ok", func(*args, **kw)))
        except BaseException as e:  # noqa: BLE001 - everything goes back
            try:
                payload = pickle.dumps(("exc", e, traceback.format_exc()))
            except Exception:
                payload = pickle.dumps(("exc", None, traceback.format_exc()))
        with os.fdopen(w, "wb") as f:
            f.write(payload)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"child died without a result (wait status {status:#x})")
    msg = pickle.loads(data)
    if msg[0] == "ok":
        return msg[1]
    if msg[1] is not None:
        raise msg[1]
    raise RuntimeError(f"exception in the child:\n{msg[2]}")


def probe_extended() -> bool:
    """seccomp(SET_MODE_FILTER, FLAG_EXTENDED, &(-1)): EBADF = supported."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        fd = ctypes.c_int(-1)
        _libc.syscall.restype = ctypes.c_long
        _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        rc = _libc.syscall(
            _SYS_SECCOMP,
            _SECCOMP_SET_MODE_FILTER,
            _SECCOMP_FILTER_FLAG_EXTENDED,
            ctypes.byref(fd),
        )
        err = ctypes.get_errno() if rc != 0 else 0
        os.write(w, str(err).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out.strip() == str(errno.EBADF)


class Sysctl:
    def __init__(self) -> None:
        self.saved: dict[Path, str] = {}

    @staticmethod
    def path(name: str) -> Path:
        return Path("/proc/sys") / name.replace(".", "/")

    def get(self, name: str) -> str:
        return self.path(name).read_text().strip()

    def set(self, name: str, value: object) -> None:
        p = self.path(name)
        if p not in self.saved:
            self.saved[p] = p.read_text().strip()
        p.write_text(f"{value}\n")

    __call__ = set

    def restore(self) -> None:
        errors = []
        for p, old in reversed(list(self.saved.items())):
            if p.name == "ptrace_scope" and p.read_text().strip() == "3":
                continue  # one-way until reboot (the scope-3 boot wants it so)
            try:
                p.write_text(f"{old}\n")
            except OSError as e:  # e.g. ptrace_scope 3 cannot be lowered
                errors.append(f"{p}: {e}")
        self.saved.clear()
        if errors:
            print("sysctl restore failed: " + "; ".join(errors), file=sys.stderr)
