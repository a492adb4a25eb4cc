"""The eBPF seccomp backend: a filter that logs every call to a ring buffer.

The recorder builds bpf/record/recorder.c (ebpfseccomp.build), loads it
(ebpfseccomp.loader), and the child attaches it with
SECCOMP_FILTER_FLAG_EXTENDED before exec; every task that inherits the
filter writes `struct record_event` (number, arch, tgid, six argument
registers) to the ring buffer `events`, which the recorder reads with
libbpf's ring_buffer (ebpfseccomp.sys.RingBuffer).  The filter answers
ALLOW to everything: the program runs at full speed apart from the filter's
own cost and the recorder's reading.

Needs the patched kernel, and CAP_BPF with CAP_PERFMON (the ring buffer
helpers are base helpers: the tracing tier).  A call the buffer had no room
for is counted in the map `lost`; `close` then refuses to finish (the
profile would allow less than the program did).
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from .. import sys as _sys
from ..contract import SECCOMP_FILTER_FLAG_EXTENDED, Tier
from ..errors import EbpfSeccompError
from ..loader import Program
from .model import Recording

#: struct record_event of recorder.c
EVENT = struct.Struct("<iIII6Q")
#: Ring buffer size (bytes, a power of two): 16 MiB holds 233k events.
RING_BYTES = 16 * 1024 * 1024


def source_path(name: str = "recorder.c") -> Path:
    """bpf/record/NAME of the checkout, or the installed copy."""
    import sys

    here = Path(__file__).resolve().parent
    candidates = [here.parent.parent / "bpf" / "record" / name,
                  Path(sys.prefix) / "share" / "ebpfseccomp" / "record" / name]
    for c in candidates:
        if c.is_file():
            return c
    raise EbpfSeccompError(f"cannot find the recorder's BPF source (bpf/record/{name})",
                           hint="run from a checkout, or reinstall ebpfseccomp")


class RingEvents:
    """The ring buffer `events` of recorder.c and tracepoint.c, read into a Recording."""

    def __init__(self, map_fd: int) -> None:
        self._pending: list[bytes] = []
        self.ring: _sys.RingBuffer | None = _sys.RingBuffer(map_fd, self._pending.append)

    def fds(self) -> list[int]:
        return [self.ring.fileno()] if self.ring is not None else []

    def _flush(self, rec: Recording) -> None:
        for raw in self._pending:
            if len(raw) < EVENT.size:
                continue
            nr, arch, tgid, _pad, *args = EVENT.unpack_from(raw)
            rec.add(arch, nr, args, tgid)
        self._pending.clear()

    def drain(self, rec: Recording) -> None:
        if self.ring is None:
            return
        while self.ring.consume() > 0:
            self._flush(rec)
        self._flush(rec)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None


def lacks_bpf_caps() -> bool:
    """True unless this process has CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)."""
    caps = _sys.capget().effective
    need = (1 << _sys.CAP_BPF) | (1 << _sys.CAP_PERFMON)
    return caps & need != need and not caps & (1 << _sys.CAP_SYS_ADMIN)


class RingBackend:
    """What the ebpf and tracepoint backends share: the ring buffer `events`."""

    name = ""

    def __init__(self, ring_bytes: int = RING_BYTES) -> None:
        self.ring_bytes = ring_bytes
        self.events: RingEvents | None = None

    def started(self, pid: int, pidfd: int, deadline: float) -> None:
        pass

    def fds(self) -> list[int]:
        return self.events.fds() if self.events is not None else []

    def drain(self, rec: Recording) -> bool:
        if self.events is not None:
            self.events.drain(rec)
        return True


def refuse_if_lost(rec: Recording) -> None:
    """A recording that lost calls would give a profile allowing less than was done."""
    if rec.lost:
        raise EbpfSeccompError(
            f"{rec.lost} calls did not fit in the ring buffer: the recording is "
            "incomplete and no profile was written",
            hint="record again with a larger --ring-size, or use --backend notify")


def unavailable() -> str | None:
    """Why the eBPF backend cannot run here, or None if it can."""
    from ..attach import probe

    try:
        support = probe()
    except OSError as exc:
        return f"cannot probe the kernel: {exc.strerror or exc}"
    if not support.supported:
        return f"kernel {support.release} does not run eBPF seccomp filters"
    if lacks_bpf_caps():
        return "the recording filter's ring buffer needs CAP_BPF and CAP_PERFMON"
    if support.tier < Tier.TRACING:
        return f"this loader would get tier {support.tier.name.lower()}, the ring buffer " \
            "needs tracing (kernel.yama.ptrace_scope)"
    return None


class EbpfBackend(RingBackend):
    name = "ebpf-seccomp"

    def __init__(self, ring_bytes: int = RING_BYTES) -> None:
        super().__init__(ring_bytes)
        self.prog: Program | None = None

    def prepare(self) -> None:
        from ..build import build
        from ..loader import load

        with tempfile.TemporaryDirectory(prefix="ebpfseccomp-record-") as tmp:
            obj = build(source_path(), out=Path(tmp) / "recorder.o",
                        defines={"RECORD_RING_BYTES": self.ring_bytes})
            # checked like any filter: the checker knows the ring buffer (contract.MAP_TYPES)
            self.prog = load(str(obj), None)
        self.events = RingEvents(self.prog.maps["events"].fd)

    def attach_in_child(self) -> None:
        assert self.prog is not None
        _sys.set_no_new_privs()
        _sys.seccomp_attach_fd(self.prog.fileno(), SECCOMP_FILTER_FLAG_EXTENDED)

    def close(self, rec: Recording) -> None:
        try:
            if self.events is not None:
                self.events.drain(rec)
            if self.prog is not None:
                rec.lost = int(self.prog.maps["lost"].lookup_int(0) or 0)
        finally:
            if self.events is not None:
                self.events.close()
                self.events = None
            if self.prog is not None:
                self.prog.close()
                self.prog = None
        refuse_if_lost(rec)
