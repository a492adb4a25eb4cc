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
from ..contract import Tier
from ..errors import EbpfSeccompError
from .model import Recording

#: struct record_event of recorder.c
EVENT = struct.Struct("<iIII6Q")
#: Ring buffer size (bytes, a power of two): 16 MiB holds 233k events.
RING_BYTES = 16 * 1024 * 1024


def source_path() -> Path:
    """bpf/record/recorder.c of the checkout, or the installed copy."""
    import sys

    here = Path(__file__).resolve().parent
    candidates = [here.parent.parent / "bpf" / "record" / "recorder.c",
                  Path(sys.prefix) / "share" / "ebpfseccomp" / "record" / "recorder.c"]
    for c in candidates:
        if c.is_file():
            return c
    raise EbpfSeccompError("cannot find the recorder filter's source (bpf/record/recorder.c)",
                           hint="run from a checkout, or reinstall ebpfseccomp")


def unavailable() -> str | None:
    """Why the eBPF backend cannot run here, or None if it can."""
    from ..attach import probe

    try:
        support = probe()
    except OSError as exc:
        return f"cannot probe the kernel: {exc.strerror or exc}"
    if not support.supported:
        return f"kernel {support.release} does not run eBPF seccomp filters"
    caps = _sys.capget().effective
    need = (1 << _sys.CAP_BPF) | (1 << _sys.CAP_PERFMON)
    if caps & need != need and not caps & (1 << _sys.CAP_SYS_ADMIN):
        return "the recording filter's ring buffer needs CAP_BPF and CAP_PERFMON"
    if support.tier < Tier.TRACING:
        return f"this loader would get tier {support.tier.name.lower()}, the ring buffer " \
            "needs tracing (kernel.yama.ptrace_scope)"
    return None


class EbpfBackend:
    name = "ebpf-seccomp"

    def __init__(self, ring_bytes: int = RING_BYTES) -> None:
        self.ring_bytes = ring_bytes
        self.prog: object | None = None
        self.ring: _sys.RingBuffer | None = None
        self._rec: Recording | None = None
        self._pending: list[bytes] = []

    def prepare(self) -> None:
        from ..build import build
        from ..loader import load

        with tempfile.TemporaryDirectory(prefix="ebpfseccomp-record-") as tmp:
            obj = build(source_path(), out=Path(tmp) / "recorder.o",
                        defines={"RECORD_RING_BYTES": self.ring_bytes})
            # the static checker does not model ring buffers yet: the kernel decides
            self.prog = load(str(obj), None, check=False)
        events = self.prog.maps["events"]  # type: ignore[attr-defined]
        self.ring = _sys.RingBuffer(events.fd, self._pending.append)

    def attach_in_child(self) -> None:
        _sys.set_no_new_privs()
        _sys.seccomp_attach_fd(self.prog.fileno(), 1 << 6)  # type: ignore[attr-defined]

    def started(self, pid: int, pidfd: int, deadline: float) -> None:
        pass

    def fds(self) -> list[int]:
        return [self.ring.fileno()] if self.ring is not None else []

    def _flush(self, rec: Recording) -> None:
        for raw in self._pending:
            if len(raw) < EVENT.size:
                continue
            nr, arch, tgid, _pad, *args = EVENT.unpack_from(raw)
            rec.add(arch, nr, args, tgid)
        self._pending.clear()

    def drain(self, rec: Recording) -> bool:
        assert self.ring is not None
        while self.ring.consume() > 0:
            self._flush(rec)
        self._flush(rec)
        return True

    def close(self, rec: Recording) -> None:
        try:
            if self.ring is not None:
                self.drain(rec)
            lost = self.prog.maps["lost"].lookup_int(0) if self.prog else 0  # type: ignore
            rec.lost = int(lost or 0)
        finally:
            if self.ring is not None:
                self.ring.close()
                self.ring = None
            if self.prog is not None:
                self.prog.close()  # type: ignore[attr-defined]
                self.prog = None
        if rec.lost:
            raise EbpfSeccompError(
                f"{rec.lost} calls did not fit in the ring buffer: the recording is "
                "incomplete and no profile was written",
                hint="record again with a larger --ring-size, or use --backend notify")

