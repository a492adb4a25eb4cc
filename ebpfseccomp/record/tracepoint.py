"""The tracepoint backend: raw_syscalls:sys_enter through libbpf, for stock kernels.

bpf/record/tracepoint.c has two BTF-enabled tracepoint programs: one on
`sys_enter` that writes each call of a tracked process to the ring buffer
`events` (the layout of the eBPF seccomp backend, read by the same
`RingEvents`), one on `sched_process_fork` that tracks the children of
tracked processes.  The recorder loads and attaches both, forks, puts the
child's pid into `tracked`, and only then lets the child exec.

Needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN), a kernel with BTF
(/sys/kernel/btf/vmlinux: the programs read kernel structs through CO-RE),
x86_64, and the initial pid namespace (the programs see its pids).  The
programs run on every syscall of every task on the machine (one hash lookup
for the ones not recorded) while the recording lasts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .. import sys as _sys
from ..errors import EbpfSeccompError
from .ebpf import (
    RING_BYTES,
    RingBackend,
    RingEvents,
    lacks_bpf_caps,
    refuse_if_lost,
    source_path,
)
from .model import Recording


def unavailable() -> str | None:
    """Why the tracepoint backend cannot run here, or None."""
    if os.uname().machine != "x86_64":
        return "the tracepoint programs read x86_64 registers"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
    if lacks_bpf_caps():
        return "tracepoint programs need CAP_BPF and CAP_PERFMON"
    try:
        with open("/proc/self/status") as f:
            nspid = [ln for ln in f if ln.startswith("NSpid:")]
    except OSError:
        nspid = []
    if nspid and len(nspid[0].split()) > 2:
        return "the recorder runs in a child pid namespace; the programs see the initial one's"
    return None


class TracepointBackend(RingBackend):
    name = "tracepoint"

    def __init__(self, ring_bytes: int = RING_BYTES) -> None:
        super().__init__(ring_bytes)
        self.obj: int | None = None
        self.links: list[int] = []
        self._go: tuple[int, int] | None = None

    def _map_fd(self, name: str) -> int:
        assert self.obj is not None
        m = _sys.object_find_map(self.obj, name)
        if m is None:
            raise EbpfSeccompError(f"the tracepoint object has no map {name!r}")
        return _sys.map_fd(m)

    def prepare(self) -> None:
        from ..build import build

        with tempfile.TemporaryDirectory(prefix="ebpfseccomp-record-") as tmp:
            path = build(source_path("tracepoint.c"), out=Path(tmp) / "tracepoint.o",
                         defines={"RECORD_RING_BYTES": self.ring_bytes})
            try:
                with _sys.libbpf_messages() as msgs:
                    self.obj = _sys.object_open(str(path))
                    _sys.object_load(self.obj)
                    for prog in _sys.object_programs(self.obj):
                        self.links.append(_sys.program_attach(prog))
            except OSError as exc:
                self.close(Recording())
                detail = "; ".join(t.strip() for _, t in msgs[-3:])
                raise EbpfSeccompError(f"cannot load the tracepoint programs: "
                                       f"{exc.strerror or exc}", hint=detail or None) from None
        self.events = RingEvents(self._map_fd("events"))
        self._go = os.pipe()

    def attach_in_child(self) -> None:
        assert self._go is not None
        r, w = self._go
        os.close(w)
        go = os.read(r, 1)  # until the recorder tracks this pid
        os.close(r)
        if not go:
            raise OSError(0, "the recorder went away before it tracked this process")

    def started(self, pid: int, pidfd: int, deadline: float) -> None:
        assert self._go is not None
        r, w = self._go
        os.close(r)
        _sys.map_update(self._map_fd("tracked"), pid.to_bytes(4, "little"), b"\x01")
        os.write(w, b"g")
        os.close(w)
        self._go = None

    def _counter(self, name: str) -> int:
        raw = _sys.map_lookup(self._map_fd(name), bytes(4), 8)
        return int.from_bytes(raw, "little") if raw else 0

    def close(self, rec: Recording) -> None:
        try:
            if self.events is not None and self.obj is not None:
                self.events.drain(rec)
                rec.lost = self._counter("lost")
                untracked = self._counter("untracked")
                if untracked:
                    rec.lost += untracked
                    rec.notes.append(f"{untracked} forked processes could not be tracked")
        finally:
            for link in self.links:
                _sys.link_destroy(link)
            self.links = []
            if self.events is not None:
                self.events.close()
                self.events = None
            if self.obj is not None:
                _sys.object_close(self.obj)
                self.obj = None
            if self._go is not None:
                for fd in self._go:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                self._go = None
        refuse_if_lost(rec)
