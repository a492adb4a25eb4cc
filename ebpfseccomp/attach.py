"""Attach a loaded program with seccomp(2), and find out what the kernel supports.

    attach(prog_fd, flags=("tsync",), set_no_new_privs=True) -> int
    probe() -> KernelSupport

attach() calls seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_EXTENDED |
flags, &prog_fd) after setting no_new_privs (which is what lets an
unprivileged process install a filter).  The kernel takes its own reference
to the program: the caller may close its fd afterwards.  Errors become
KernelError with the contract's meaning of the errno.

probe() answers without privilege: the kernel supports eBPF seccomp filters
when seccomp(2) with the EXTENDED flag and fd -1 answers EBADF (an unpatched
kernel answers EINVAL for the unknown flag).
"""

from __future__ import annotations

import errno as _errno
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import contract
from . import sys as _sys
from .contract import Tier
from .errors import KernelError, PrivilegeError, UsageError

PATCH_HINT = "see kernel-patches/, `make kernel`, then try it in the VM with `vm/run`"
LACKS_PATCH = f"this kernel ({os.uname().release}) lacks the eBPF seccomp patch ({PATCH_HINT})"

#: The flags a user may ask for (EXTENDED is always added).
USER_FLAGS: dict[str, int] = {k: v for k, v in contract.FILTER_FLAGS.items() if k != "extended"}


def flags_value(flags: Iterable[str | int] | int) -> int:
    """Combine flag names ("tsync", "log", ...) or numbers into the seccomp(2) flag word."""
    if isinstance(flags, int):
        return flags
    value = 0
    for f in flags:
        if isinstance(f, int):
            value |= f
            continue
        key = f.strip().lower().replace("_", "-")
        if key not in USER_FLAGS:
            raise UsageError(f"unknown seccomp flag {f!r}",
                             hint=f"choose from: {', '.join(USER_FLAGS)}")
        value |= USER_FLAGS[key]
    return value


def extended_flag_supported() -> bool:
    """Does seccomp(2) know SECCOMP_FILTER_FLAG_EXTENDED?  (fd -1: EBADF if it does.)"""
    try:
        _sys.seccomp_attach_fd(-1, contract.SECCOMP_FILTER_FLAG_EXTENDED)
    except OSError as exc:
        # EBADF: the flag is known and the fd checked.  EACCES would mean the
        # kernel checked no_new_privs before the fd: the flag is known too.
        return exc.errno != _errno.EINVAL
    return True  # cannot happen: fd -1 is never a program


def _explain_einval(prog_fd: int, flags: int) -> str:
    if not extended_flag_supported():
        return LACKS_PATCH
    try:
        info = _sys.prog_info(prog_fd)
    except OSError:
        return (f"fd {prog_fd} is not a BPF program (seccomp(2) answered EINVAL); pass the fd "
                f"of a program loaded as type seccomp ({contract.BPF_PROG_TYPE_SECCOMP})")
    if info.type != contract.BPF_PROG_TYPE_SECCOMP:
        return (f"fd {prog_fd} is a BPF program of type {info.type}, not a seccomp program "
                f"(type {contract.BPF_PROG_TYPE_SECCOMP}); seccomp(2) answered EINVAL")
    f = USER_FLAGS
    if flags & f["tsync"] and flags & f["new-listener"] and not flags & f["tsync-esrch"]:
        return "the tsync and new-listener flags together need tsync-esrch as well (EINVAL)"
    if flags & f["wait-killable-recv"] and not flags & f["new-listener"]:
        return "wait-killable-recv only makes sense with new-listener (EINVAL)"
    return (f"seccomp(2) refused the flags {flags_names(flags)} with EINVAL "
            f"(a combination this kernel does not accept)")


def flags_names(flags: int) -> str:
    names = [k for k, v in contract.FILTER_FLAGS.items() if flags & v]
    return "|".join(names) or "none"


def attach(prog_fd: int, flags: Iterable[str | int] | int = (), *,
           set_no_new_privs: bool = True) -> int:
    """Install the seccomp program PROG_FD on the calling thread (all threads with tsync).

    Returns seccomp(2)'s result: 0, or the listener fd with new-listener, or
    with tsync (without tsync-esrch) the id of a thread that could not be
    synchronised.  Raises KernelError/PrivilegeError with the errno's meaning.
    """
    value = flags_value(flags) | contract.SECCOMP_FILTER_FLAG_EXTENDED
    if set_no_new_privs:
        _sys.set_no_new_privs()
    try:
        return _sys.seccomp_attach_fd(prog_fd, value)
    except OSError as exc:
        raise attach_error(exc.errno or 0, prog_fd, value) from None


def attach_error(err: int, prog_fd: int, flags: int) -> KernelError:
    """The KernelError for seccomp(2) answering ERR when attaching PROG_FD (.errno: ERR)."""
    exc = _attach_error(err, prog_fd, flags)
    exc.errno = err  # type: ignore[attr-defined]
    return exc


def _attach_error(err: int, prog_fd: int, flags: int) -> KernelError:
    if err == _errno.EINVAL:
        return KernelError(_explain_einval(prog_fd, flags))
    if err == _errno.EACCES:
        return PrivilegeError(
            "seccomp(2) refused to attach the filter (EACCES): the process has neither "
            "no_new_privs nor CAP_SYS_ADMIN; set no_new_privs (prctl(PR_SET_NO_NEW_PRIVS, 1), "
            "which `ebpfseccomp run` does) or run with CAP_SYS_ADMIN")
    if err == _errno.EPERM:
        return PrivilegeError(
            "seccomp(2) refused to attach the filter (EPERM): the program was loaded in a "
            "user namespace that is neither this process's nor one of its ancestors; load it "
            "in this process's user namespace or an ancestor of it")
    if err == _errno.EBADF:
        return KernelError(f"fd {prog_fd} is not an open file descriptor (EBADF)")
    if err == _errno.EBUSY:
        return KernelError("another filter of this thread already has a notification "
                           "listener (EBUSY); only one new-listener filter is allowed")
    if err == _errno.ESRCH:
        return KernelError("tsync failed: another thread of this process has a filter chain "
                           "that is not an ancestor of this thread's (ESRCH)")
    if err == _errno.ENOMEM:
        return KernelError("the filter chain is too long (ENOMEM): the kernel limits the "
                           "total instructions over all attached filters")
    return KernelError(f"seccomp(2) failed: {os.strerror(err)} "
                       f"({_errno.errorcode.get(err, err)})")


# --- the feature probe ------------------------------------------------------------

#: r0 = SECCOMP_RET_ALLOW; exit
TRIVIAL_PROGRAM = struct.pack("<BBhi", 0xB7, 0, 0, 0x7FFF0000) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def probe_prog_type() -> tuple[bool | None, str]:
    """Can this process load a BPF_PROG_TYPE_SECCOMP program?  (True/False/None: unknown)."""
    try:
        fd, _ = _sys.prog_load_raw(contract.BPF_PROG_TYPE_SECCOMP, TRIVIAL_PROGRAM,
                                   log_level=1, name="probe")
    except OSError as exc:
        log = exc.filename if isinstance(exc.filename, str) else ""
        if exc.errno == _errno.EINVAL and not log.strip():
            return False, "bpf(BPF_PROG_LOAD) does not know program type 33 (EINVAL, no log)"
        if exc.errno == _errno.EPERM:
            return None, "this process may not load BPF programs (EPERM), so it cannot tell"
        return None, f"a trivial seccomp program failed to load: {os.strerror(exc.errno or 0)}"
    os.close(fd)
    return True, "a trivial seccomp program loads"


@dataclass
class KernelSupport:
    release: str
    prog_type: bool | None
    prog_type_detail: str
    extended_flag: bool
    ptrace_scope: int | None
    unprivileged_bpf_disabled: int | None
    can_load: bool
    tier: Tier
    credentials: str
    notes: list[str] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        return self.extended_flag and self.prog_type is not False

    def to_dict(self) -> dict[str, object]:
        return {
            "supported": self.supported,
            "release": self.release,
            "prog_type": self.prog_type,
            "prog_type_detail": self.prog_type_detail,
            "extended_flag": self.extended_flag,
            "ptrace_scope": self.ptrace_scope,
            "unprivileged_bpf_disabled": self.unprivileged_bpf_disabled,
            "can_load": self.can_load,
            "tier": self.tier.name.lower(),
            "credentials": self.credentials,
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        yes = {True: "yes", False: "no", None: "unknown"}
        lines = [
            f"kernel {self.release}: eBPF seccomp filters "
            f"{'SUPPORTED' if self.supported else 'NOT supported'}",
            f"  program type seccomp ({contract.BPF_PROG_TYPE_SECCOMP}) loadable: "
            f"{yes[self.prog_type]} ({self.prog_type_detail})",
            f"  seccomp(2) flag EXTENDED (1<<6): {yes[self.extended_flag]}",
            "  kernel.yama.ptrace_scope: "
            + ("Yama not active" if self.ptrace_scope is None else str(self.ptrace_scope)),
            f"  kernel.unprivileged_bpf_disabled: {self.unprivileged_bpf_disabled}",
            f"  you ({self.credentials}) can load: {yes[self.can_load]}; "
            f"tier you would get: {self.tier.name.lower()}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def probe() -> KernelSupport:
    """What the running kernel supports, and what this process would get."""
    from .privilege import Credentials, SystemPolicy, granted_tier

    creds = Credentials.current()
    policy = SystemPolicy.current()
    flag = extended_flag_supported()
    ptype, detail = probe_prog_type()
    can_load = policy.unprivileged_bpf_disabled == 0 or creds.bpf_capable
    notes: list[str] = []
    if not flag or ptype is False:
        notes.append(LACKS_PATCH)
    if not can_load:
        notes.append(
            f"kernel.unprivileged_bpf_disabled={policy.unprivileged_bpf_disabled}: you cannot "
            "load programs yourself, but you can attach one an administrator pinned "
            "(ebpfseccomp run --pinned PATH) or the loader daemon hands out (--daemon NAME)")
    tier = granted_tier(creds, policy)
    if tier == Tier.NONE and flag:
        notes.append("programs you load get no helpers and no maps (Yama ptrace_scope)")
    return KernelSupport(os.uname().release, ptype, detail, flag, policy.ptrace_scope,
                         policy.unprivileged_bpf_disabled, can_load, tier, creds.describe(),
                         notes)
