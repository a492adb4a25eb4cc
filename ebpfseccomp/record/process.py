"""Run the recorded command and its whole process tree, whatever it does.

`run(cmd, backend, recording)` makes this process a child subreaper (so
that every descendant that outlives its parent becomes our child and is
reaped here), forks, lets the backend attach its filter in the child, execs
CMD, then feeds the backend's events to the recording until no descendant
is left.  It never waits forever on the program: `timeout` bounds the whole
run, `grace` how long descendants may outlive CMD; after either, the tree is
killed (SIGKILL, repeated until no child is left) and the recording ends
with what was seen.

This reaps every child of the calling process (waitpid(-1)): call it from a
process that has no other children to wait for, as the CLI is.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import time
from typing import Protocol

from .. import sys as _sys
from ..errors import EbpfSeccompError
from .model import Recording

#: How often the loop looks at children when no event arrives (seconds).
TICK = 0.05
#: How long killing the tree may take before we give up on stragglers.
KILL_DEADLINE = 10.0


class Backend(Protocol):
    name: str

    def prepare(self) -> None:
        """In the recorder, before fork: load what the child will attach."""

    def attach_in_child(self) -> None:
        """In the forked child, before exec: attach the filter (may raise OSError)."""

    def started(self, pid: int, pidfd: int, deadline: float) -> None:
        """In the recorder, after fork: connect to the child's filter."""

    def fds(self) -> list[int]:
        """Descriptors to poll for events."""

    def drain(self, rec: Recording) -> bool:
        """Hand every pending event to REC; False once no task holds the filter."""

    def close(self, rec: Recording) -> None:
        """Last events, loss counters; release everything."""


def _child(cmd: list[str], backend: Backend) -> None:
    """In the forked child: never returns."""
    code = 126
    try:
        try:
            backend.attach_in_child()
        except OSError as exc:
            os.write(2, f"ebpfseccomp record: error: cannot attach the {backend.name} "
                        f"recorder: {exc.strerror or exc}\n".encode())
            os._exit(126)
        try:
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            code = 127 if exc.errno == errno.ENOENT else 126
            os.write(2, f"ebpfseccomp record: error: cannot run {cmd[0]}: "
                        f"{exc.strerror}\n".encode())
    finally:
        os._exit(code)


def children() -> list[int]:
    """Processes whose parent is this one (from /proc)."""
    me = os.getpid()
    out = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me:
            out.append(int(e))
    return out


class _Reaper:
    def __init__(self, leader: int) -> None:
        self.leader = leader
        self.status: int | None = None
        self.leader_exit_time: float | None = None

    def reap(self) -> bool:
        """Reap what has exited; True while any child is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            except InterruptedError:
                continue
            if pid == 0:
                return True
            if pid == self.leader:
                self.status = os.waitstatus_to_exitcode(status)
                self.leader_exit_time = time.monotonic()


def kill_tree(reaper: _Reaper) -> None:
    """SIGKILL every descendant: children first; theirs become ours as they die."""
    deadline = time.monotonic() + KILL_DEADLINE
    while time.monotonic() < deadline:
        if not reaper.reap():
            return
        for pid in children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def run(cmd: list[str], backend: Backend, rec: Recording, *, timeout: float | None = None,
        grace: float = 2.0) -> Recording:
    """Record CMD with BACKEND into REC; see the module doc."""
    backend.prepare()
    rec.backend = backend.name
    _sys.set_child_subreaper(True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
        if pid == 0:
            _child(cmd, backend)
        reaper = _Reaper(pid)
        start = time.monotonic()
        deadline = start + timeout if timeout is not None else None
        pidfd = _sys.pidfd_open(pid)
        try:
            rec.start_at_exec_of(pid)
            try:
                backend.started(pid, pidfd, start + 10.0)
            except BaseException:
                kill_tree(reaper)
                raise
            _loop(backend, rec, reaper, deadline, grace)
        finally:
            os.close(pidfd)
        backend.close(rec)
        rec.exit_status = reaper.status
        return rec
    finally:
        _sys.set_child_subreaper(False)


def _loop(backend: Backend, rec: Recording, reaper: _Reaper, deadline: float | None,
          grace: float) -> None:
    poller = select.poll()
    for fd in backend.fds():
        poller.register(fd, select.POLLIN)
    try:
        while True:
            try:
                poller.poll(int(TICK * 1000))
                alive = backend.drain(rec)
                left = reaper.reap()
            except KeyboardInterrupt:
                rec.notes.append("interrupted: the process tree was killed")
                kill_tree(reaper)
                backend.drain(rec)
                raise
            if not left:
                backend.drain(rec)
                return
            if not alive and reaper.status is not None:
                return  # the filter has no task left; children left were never under it
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                rec.timed_out = True
                rec.notes.append("--timeout reached: the process tree was killed")
                kill_tree(reaper)
                backend.drain(rec)
                return
            if reaper.leader_exit_time is not None and now - reaper.leader_exit_time >= grace:
                rec.notes.append(f"descendants still running {grace:g}s after the command "
                                 "exited were killed (--grace)")
                kill_tree(reaper)
                backend.drain(rec)
                return
    except OSError as exc:
        kill_tree(reaper)
        raise EbpfSeccompError(f"recording failed: {exc.strerror or exc}") from None
