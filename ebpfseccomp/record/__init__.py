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

from ..errors import UsageError
from .model import ARG_TABLE, Recording, arg_table, parse_arg_option
from .process import Backend, run
from .profile import to_profile

__all__ = ["ARG_TABLE", "BACKENDS", "Recording", "arg_table", "choose_backend",
           "parse_arg_option", "record", "to_profile"]

#: Backend names `--backend` accepts, besides auto.
BACKENDS = ("ebpf", "notify")


def choose_backend(wanted: str = "auto") -> tuple[Backend, str]:
    """(backend, why it was chosen) for `--backend WANTED`."""
    if wanted not in ("auto", *BACKENDS):
        raise UsageError(f"unknown backend {wanted!r}", hint="one of auto, "
                         + ", ".join(BACKENDS))
    if wanted == "notify":
        from .notify import NotifyBackend

        return NotifyBackend(), "--backend notify"
    from .ebpf import EbpfBackend, unavailable

    if wanted == "ebpf":
        why_not = unavailable()
        if why_not:
            raise UsageError(f"--backend ebpf: {why_not}",
                             hint="--backend notify works on any kernel without privilege")
        return EbpfBackend(), "--backend ebpf"
    why_not = unavailable()
    if why_not is None:
        return EbpfBackend(), "this kernel runs eBPF seccomp filters and this user may load one"
    from .notify import NotifyBackend

    return NotifyBackend(), f"eBPF backend unavailable: {why_not}"


def record(cmd: list[str], backend: str = "auto", extra_args: tuple[tuple[str, int], ...] = (),
           timeout: float | None = None, grace: float = 2.0) -> Recording:
    """Run CMD and record its syscalls and those of all its descendants."""
    if not cmd:
        raise UsageError("no command to record", hint="e.g. ebpfseccomp record -- ls /")
    chosen, why = choose_backend(backend)
    rec = Recording(args=arg_table(extra_args))
    rec.notes.append(f"backend {chosen.name}: {why}")
    return run(list(cmd), chosen, rec, timeout=timeout, grace=grace)
