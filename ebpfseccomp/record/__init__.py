"""Record what a program does into a seccomp profile (`ebpfseccomp record`).

    from ebpfseccomp.record import record, to_profile
    rec = record(["sh", "-c", "ls | wc -l"], backend="auto")
    profile = to_profile(rec, with_args=True)

Modules:

* `model`: the event model (`Recording`: calls per ABI, argument values,
  the argument table `ARG_TABLE`);
* `process`: the process tree (fork, exec, subreaper, timeouts, kill);
* `notify`: the user-notification backend (unprivileged, any kernel >= 5.6);
* `ebpf`: the eBPF seccomp filter backend (patched kernel, ring buffer);
* `profile`: the OCI profile writer.

See docs/record.md for what each backend sees and misses.
"""

from __future__ import annotations

import os

from ..errors import UsageError
from .model import ARG_TABLE, Recording, arg_table, parse_arg_option
from .process import Backend, run
from .profile import to_profile

__all__ = ["ARG_TABLE", "BACKENDS", "Recording", "arg_table", "choose_backend",
           "parse_arg_option", "record", "to_profile"]

#: Backend names `--backend` accepts, besides auto, in the order auto tries them.
BACKENDS = ("ebpf", "tracepoint", "notify")


def _ring_bytes(ring_bytes: int | None) -> int:
    from .ebpf import RING_BYTES

    ring = RING_BYTES if ring_bytes is None else ring_bytes
    page = os.sysconf("SC_PAGE_SIZE")
    if ring < page or ring & (ring - 1) or ring > 1 << 30:
        raise UsageError(f"--ring-size {ring}: must be a power of two from {page} to 2**30",
                         hint="e.g. --ring-size 67108864 (64 MiB)")
    return ring


def choose_backend(wanted: str = "auto", ring_bytes: int | None = None
                   ) -> tuple[Backend, str]:
    """(backend, why it was chosen) for `--backend WANTED`; RING_BYTES sizes the
    ring buffer of the eBPF and tracepoint backends (a power of two, at least a page)."""
    if wanted not in ("auto", *BACKENDS):
        raise UsageError(f"unknown backend {wanted!r}", hint="one of auto, "
                         + ", ".join(BACKENDS))
    from . import ebpf, notify, tracepoint

    ring = _ring_bytes(ring_bytes)
    makers = {
        "ebpf": (ebpf.unavailable, lambda: ebpf.EbpfBackend(ring),
                 "this kernel runs eBPF seccomp filters and this user may load one"),
        "tracepoint": (tracepoint.unavailable, lambda: tracepoint.TracepointBackend(ring),
                       "no eBPF seccomp here; root may trace raw_syscalls with BTF"),
        "notify": (lambda: None, notify.NotifyBackend,
                   "needs no privilege"),
    }
    if wanted != "auto":
        why_not_fn, make, _ = makers[wanted]
        why_not = why_not_fn()
        if why_not:
            raise UsageError(f"--backend {wanted}: {why_not}",
                             hint="--backend notify works on any kernel without privilege")
        return make(), f"--backend {wanted}"
    refused = []
    for name in BACKENDS:
        why_not_fn, make, why = makers[name]
        why_not = why_not_fn()
        if why_not is None:
            return make(), "; ".join([*refused, why])
        refused.append(f"{name}: {why_not}")
    raise AssertionError("notify is always available")


def record(cmd: list[str], backend: str = "auto", extra_args: tuple[tuple[str, int], ...] = (),
           timeout: float | None = None, grace: float = 2.0,
           ring_bytes: int | None = None) -> Recording:
    """Run CMD and record its syscalls and those of all its descendants."""
    if not cmd:
        raise UsageError("no command to record",
                         hint="put it after --, e.g. ebpfseccomp record -o p.json -- ls /")
    chosen, why = choose_backend(backend, ring_bytes)
    rec = Recording(args=arg_table(extra_args))
    rec.notes.append(f"backend {chosen.name}: {why}")
    return run(list(cmd), chosen, rec, timeout=timeout, grace=grace)
