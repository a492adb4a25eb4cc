"""The user-notification backend: no privilege, any kernel since 5.5 (pidfd_getfd: 5.6).

The child sets no_new_privs and installs a one-instruction classic filter,
`return SECCOMP_RET_USER_NOTIF`, with SECCOMP_FILTER_FLAG_NEW_LISTENER.
From then on every syscall of the child and of everything it starts waits
until the recorder has read it (SECCOMP_IOCTL_NOTIF_RECV) and answered
SECCOMP_USER_NOTIF_FLAG_CONTINUE: the kernel then runs the call as if the
filter had allowed it.

Getting the listener: the child cannot send it (sendmsg would itself wait
for a recorder that has no listener yet), so the recorder finds the fd in
/proc/CHILD/fd (`anon_inode:seccomp notify`) and copies it with
pidfd_getfd(2), which needs ptrace access to the child (Yama ptrace_scope 0
or 1, or CAP_SYS_PTRACE).  The child's own copy is close-on-exec: the
recorded program never holds its listener.

Limits (docs/record.md): each call costs two context switches to the
recorder; a call interrupted by a signal while it waits is restarted by the
kernel and seen again; the recorder sees registers only, never memory (so no
pointer is ever followed); setuid binaries run without their privilege
(no_new_privs).
"""

from __future__ import annotations

import errno
import os
import select
import struct
import time

from .. import sys as _sys
from ..errors import EbpfSeccompError
from .model import Recording

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_RET_USER_NOTIF = 0x7FC00000
_BPF_RET_K = 0x06

#: The whole filter: every call goes to the recorder.
NOTIFY_ALL = struct.pack("<HBBI", _BPF_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF)

#: How many notifications one drain() answers before the loop looks at children.
_BATCH = 4096


class NotifyBackend:
    name = "user-notification"

    def __init__(self) -> None:
        self.listener: int | None = None
        self._hup = False

    def prepare(self) -> None:
        pass

    def attach_in_child(self) -> None:
        _sys.set_no_new_privs()
        _sys.seccomp_attach_cbpf(NOTIFY_ALL, _sys.SECCOMP_FILTER_FLAG_NEW_LISTENER)

    def started(self, pid: int, pidfd: int, deadline: float) -> None:
        while self.listener is None:
            fd = _find_listener(pid)
            if fd is not None:
                try:
                    self.listener = _sys.pidfd_getfd(pidfd, fd)
                except OSError as exc:
                    if exc.errno in (errno.EPERM, errno.EACCES):
                        raise EbpfSeccompError(
                            "cannot take the child's notification listener: "
                            "pidfd_getfd needs ptrace access to it",
                            hint="kernel.yama.ptrace_scope must be 0 or 1 (or run with "
                            "CAP_SYS_PTRACE), or use --backend ebpf") from None
                    raise EbpfSeccompError(f"pidfd_getfd: {exc.strerror}") from None
                break
            ready, _, _ = select.select([pidfd], [], [], 0.001)
            if ready:
                raise EbpfSeccompError("the child exited before it installed the "
                                       "recording filter (see its message above)")
            if time.monotonic() > deadline:
                raise EbpfSeccompError("the child did not install the recording filter "
                                       "within 10 seconds")

    def fds(self) -> list[int]:
        return [self.listener] if self.listener is not None else []

    def drain(self, rec: Recording) -> bool:
        fd = self.listener
        if fd is None:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        for _ in range(_BATCH):
            events = poller.poll(0)
            if not events:
                return True
            ev = events[0][1]
            if ev & select.POLLIN:
                try:
                    n = _sys.notif_recv(fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.EINTR):
                        continue  # the task died (or was signalled) meanwhile
                    raise
                rec.add(n.arch, n.nr, n.args, n.pid)
                try:
                    _sys.notif_continue(fd, n.id)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
            elif ev & (select.POLLHUP | select.POLLERR):
                self._hup = True
                return False
        return True

    def close(self, rec: Recording) -> None:
        if self.listener is not None:
            os.close(self.listener)
            self.listener = None


def _find_listener(pid: int) -> int | None:
    """The fd number of the seccomp notification listener in PID, if there is one."""
    base = f"/proc/{pid}/fd"
    try:
        entries = os.listdir(base)
    except OSError:
        return None
    for e in entries:
        try:
            if os.readlink(f"{base}/{e}") == "anon_inode:seccomp notify":
                return int(e)
        except (OSError, ValueError):
            continue
    return None
