"""Syscall names <-> numbers for the architectures filters are built for.

The tables come from the Linux 6.12 source tree (tools/gen_syscalls.py writes
ebpfseccomp/_syscall_tables.py and the matching C headers
bpf/include/ebpfseccomp/syscalls_<arch>.h), so a filter compiled with
`SYS_openat` and a test or CLI saying "openat" agree on the number.

    >>> nr("openat")
    257
    >>> nr("openat", "aarch64")
    56
    >>> name(257)
    'openat'
"""

from __future__ import annotations

from ._syscall_tables import COMPAT_TABLES, TABLES
from .errors import UsageError

#: Architectures with a table, in the order the CLI lists them.
ARCHES: tuple[str, ...] = tuple(TABLES)

#: The ABIs a 64-bit kernel runs beside its own (i386 and x32 on x86_64, arm on
#: aarch64): filters are not built for them, but a converted profile decides
#: their calls too (ebpfseccomp.policy).  Numbers are as seccomp_data.nr
#: carries them (x32's with X32_SYSCALL_BIT set).
COMPAT_ARCHES: tuple[str, ...] = tuple(COMPAT_TABLES)

#: Spellings accepted for an architecture, mapped to the name in ARCHES.
ARCH_ALIASES: dict[str, str] = {
    "x86_64": "x86_64",
    "x86-64": "x86_64",
    "amd64": "x86_64",
    "x86": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
}

_NAMES: dict[str, dict[int, str]] = {
    arch: {num: n for n, num in table.items()} for arch, table in TABLES.items()
}


def canonical_arch(arch: str) -> str:
    """'arm64' -> 'aarch64'; UsageError naming the choices for anything unknown."""
    try:
        return ARCH_ALIASES[arch.lower()]
    except (KeyError, AttributeError):
        raise UsageError(
            f"unknown architecture {arch!r}", hint=f"choose one of: {', '.join(ARCHES)}"
        ) from None


def table(arch: str = "x86_64") -> dict[str, int]:
    """A copy of ARCH's name -> number table."""
    return dict(TABLES[canonical_arch(arch)])


def compat_table(arch: str) -> dict[str, int]:
    """A copy of compat ABI ARCH's name -> number table ("i386", "x32", "arm")."""
    return dict(COMPAT_TABLES[arch])


def nr(syscall: str | int, arch: str = "x86_64") -> int:
    """The number of SYSCALL on ARCH.

    Accepts a name ("openat", also "SYS_openat" and "__NR_openat"), or a number
    given as an int or a decimal/0x string, which is returned as it is when
    non-negative (filters see numbers the table does not know, too).
    """
    arch = canonical_arch(arch)
    if isinstance(syscall, int):
        if syscall < 0:
            raise UsageError(f"syscall number {syscall} is negative")
        return syscall
    text = syscall.strip()
    try:
        value = int(text, 0)
    except ValueError:
        pass
    else:
        return nr(value, arch)
    for prefix in ("__NR_", "SYS_"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    found = TABLES[arch].get(text)
    if found is None:
        hint = _suggest(text, arch)
        raise UsageError(f"unknown syscall {syscall!r} on {arch}", hint=hint)
    return found


def name(number: int, arch: str = "x86_64") -> str | None:
    """The name of syscall NUMBER on ARCH, None if the table has no such number."""
    return _NAMES[canonical_arch(arch)].get(number)


def _suggest(text: str, arch: str) -> str:
    import difflib

    close = difflib.get_close_matches(text, TABLES[arch], n=3)
    others = [a for a in ARCHES if a != arch and text in TABLES[a]]
    parts = []
    if close:
        parts.append(f"did you mean {', '.join(close)}?")
    if others:
        parts.append(f"{text} exists on {', '.join(others)}; pass --arch")
    return "; ".join(parts) or "names are as in the kernel's table, e.g. openat, getpid"
