"""Capability arithmetic: what the daemon loads each program with, and what
it keeps when it drops privileges.

The kernel decides a program's helper tier from the loader's capabilities
at load time, so every load is done with the effective set lowered to what
the catalog entry approves (`tier_caps`) or what the submitting client has
itself (`submit_caps`), inside `effective_caps`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..catalog import Entry
from ..contract import Tier
from ..errors import EbpfSeccompError, UsageError

if TYPE_CHECKING:
    from ..privilege import Prediction
    from .peer import Peer

# Capability numbers (linux/capability.h).
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
CAP_NAMES = {
    CAP_SETGID: "CAP_SETGID",
    CAP_SETUID: "CAP_SETUID",
    CAP_SETPCAP: "CAP_SETPCAP",
    CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
    CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
    CAP_PERFMON: "CAP_PERFMON",
    CAP_BPF: "CAP_BPF",
}


def cap_bit(cap: int) -> int:
    return 1 << cap


def cap_names(mask: int) -> list[str]:
    return [CAP_NAMES.get(i, f"cap#{i}") for i in range(64) if mask & (1 << i)]


#: Capabilities of a client that carry over to a program the daemon loads
#: for it (CAP_BPF is the daemon's: it stands in for the load gate).
SUBMIT_CAPS = cap_bit(CAP_PERFMON) | cap_bit(CAP_SYS_PTRACE)


def tier_caps(tier: Tier, ptrace_scope: int | None) -> int:
    """The effective capabilities a catalog entry approved at TIER is loaded with.

    CAP_BPF always (the load itself).  CAP_SYS_PTRACE from the ptrace tier
    up, and at ptrace_scope 2 for every tier above none (Yama grants the
    extended helpers only to a loader with it, which also lets the program
    read any task's memory).  CAP_PERFMON for tracing.  Each tier includes
    the ones below it.
    """
    caps = cap_bit(CAP_BPF)
    if tier >= Tier.PTRACE:
        caps |= cap_bit(CAP_SYS_PTRACE)
    if tier >= Tier.EXTENDED and ptrace_scope == 2:
        caps |= cap_bit(CAP_SYS_PTRACE)
    if tier >= Tier.TRACING:
        caps |= cap_bit(CAP_PERFMON)
    return caps


def submit_caps(peer: Peer) -> int:
    """The effective capabilities a client's own object is loaded with:
    CAP_BPF, and those of CAP_PERFMON and CAP_SYS_PTRACE the client has
    (CAP_SYS_ADMIN counts as CAP_PERFMON, as the kernel's perfmon_capable)."""
    caps = cap_bit(CAP_BPF) | (peer.caps & SUBMIT_CAPS)
    if peer.has_cap(CAP_SYS_ADMIN):
        caps |= cap_bit(CAP_PERFMON)
    return caps


@contextlib.contextmanager
def effective_caps(want: int) -> Iterator[None]:
    """Lower the effective set to WANT (intersected with what is held) for
    the duration, then restore it.

    The kernel decides a program's tier from the loader's capabilities at
    load time, so a program loaded for a client must not inherit the
    daemon's other capabilities.  The daemon is single-threaded, so nothing
    else runs with the lowered set.  Without root nothing changes."""
    from .. import sys as ksys

    cur = ksys.capget()
    new_eff = cur.effective & want
    if new_eff == cur.effective:
        yield
        return
    ksys.capset(new_eff, cur.permitted, cur.inheritable)
    try:
        yield
    finally:
        ksys.capset(cur.effective, cur.permitted, cur.inheritable)


def catalog_caps(entries: Sequence[Entry], ptrace_scope: int | None, submit: bool) -> int:
    """What --drop-privileges keeps: enough to load (and reload) every entry
    and, with submit enabled, to load with any client's CAP_PERFMON and
    CAP_SYS_PTRACE."""
    caps = cap_bit(CAP_BPF)
    for e in entries:
        caps |= tier_caps(e.tier, ptrace_scope)
    if submit:
        caps |= SUBMIT_CAPS
    return caps


def satisfies(decision: Prediction, want: Tier) -> bool:
    """Does the tier the client would get include WANT?  PTRACE means reads
    of non-dumpable tasks (CAP_SYS_PTRACE), TRACING the tracing helpers."""
    if want == Tier.PTRACE:
        return decision.reads_any_task
    if want == Tier.TRACING:
        return decision.tier == Tier.TRACING
    return decision.tier >= want


def describe_grant(decision: Prediction) -> str:
    what = decision.tier.name.lower()
    if decision.tier >= Tier.EXTENDED:
        what += ", reading " + (
            "any task's memory" if decision.reads_any_task else "only dumpable tasks' memory"
        )
    return what


PR_SET_KEEPCAPS = 8


def drop_privileges(keep: int, user: str | None, workdir: Path | None = None) -> None:
    """Keep only KEEP in the permitted and effective sets (and the bounding
    set), optionally switching to USER first; refuse if KEEP is not held."""
    from .. import sys as ksys

    prm = ksys.capget().permitted
    missing = keep & ~prm
    if missing:
        raise EbpfSeccompError(
            f"cannot drop privileges: the catalog needs {', '.join(cap_names(missing))}, "
            "which this process does not hold",
            hint="run ebpfseccompd as root or with AmbientCapabilities= set in its unit",
        )
    pw = None
    if user is not None:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise UsageError(f"--user: no user named {user!r}") from None
    # The bounding set first, while CAP_SETPCAP is still effective: no
    # program the daemon might execute (clang, for a C entry) can regain more.
    for cap in range(64):
        if keep & cap_bit(cap):
            continue
        try:
            ksys.capbset_drop(cap)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                break  # past the last capability this kernel knows
            if exc.errno != errno.EPERM:
                raise
    if pw is not None:
        # PR_SET_KEEPCAPS keeps the permitted set over setuid() from root;
        # the effective set is cleared and raised again by capset below.
        if workdir is not None:
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
        ksys.prctl(PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
        ksys.prctl(PR_SET_KEEPCAPS, 0)
    ksys.capset(keep, keep, 0)
    ksys.set_no_new_privs()
    now = ksys.capget()
    if now.permitted & ~keep or now.effective != keep:
        raise EbpfSeccompError("capabilities did not drop as asked; refusing to run")
