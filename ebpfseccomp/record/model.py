"""What a recording holds: calls per ABI and syscall, and argument values.

Every backend turns what it sees into the same event, `(arch, nr, args,
pid)` with `arch` the AUDIT_ARCH value of `seccomp_data.arch`, and hands it
to `Recording.add`.  The recording keeps

* how often each syscall was called, per ABI (`x86_64`, `i386`, `x32`,
  `aarch64`, `arm`; an ABI it cannot name is kept as `arch-0x...`);
* for the syscalls of `ARG_TABLE` (and those added with `--args
  SYSCALL:INDEX`), the distinct tuples of the chosen argument values, each
  with its count.

A number that the ABI's table does not name is kept by number (the profile
cannot name it; the summary lists it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .. import syscalls
from ..errors import UsageError

# --- ABIs --------------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
X32_SYSCALL_BIT = 0x40000000


@dataclass(frozen=True)
class Abi:
    name: str  # "x86_64", "i386", "x32", "aarch64", "arm"
    scmp: str | None  # SCMP_ARCH_* in an OCI profile (None: not expressible)
    table: dict[str, int] | None  # name -> number, None when the project has no table


ABIS: dict[str, Abi] = {
    "x86_64": Abi("x86_64", "SCMP_ARCH_X86_64", syscalls.table("x86_64")),
    "i386": Abi("i386", "SCMP_ARCH_X86", syscalls.compat_table("i386")),
    # numbers within the ABI: abi_of() takes the x32 bit off
    "x32": Abi("x32", "SCMP_ARCH_X32",
               {n: v & ~X32_SYSCALL_BIT for n, v in syscalls.compat_table("x32").items()}),
    "aarch64": Abi("aarch64", "SCMP_ARCH_AARCH64", syscalls.table("aarch64")),
    "arm": Abi("arm", "SCMP_ARCH_ARM", syscalls.compat_table("arm")),
}
_NAMES: dict[str, dict[int, str]] = {
    a.name: {num: n for n, num in a.table.items()} for a in ABIS.values() if a.table
}


def abi_of(arch: int, nr: int) -> tuple[str, int]:
    """(ABI name, syscall number within it) for a call seen as (ARCH, NR)."""
    if arch == AUDIT_ARCH_X86_64:
        if nr >= 0 and nr & X32_SYSCALL_BIT:
            return "x32", nr & ~X32_SYSCALL_BIT
        return "x86_64", nr
    if arch == AUDIT_ARCH_I386:
        return "i386", nr
    if arch == AUDIT_ARCH_AARCH64:
        return "aarch64", nr
    if arch == AUDIT_ARCH_ARM:
        return "arm", nr
    return f"arch-{arch:#x}", nr


def syscall_name(abi: str, nr: int) -> str | None:
    return _NAMES.get(abi, {}).get(nr)


# --- the argument table ------------------------------------------------------


@dataclass(frozen=True)
class ArgSpec:
    """Argument INDEX of a syscall whose value the recording keeps."""
    index: int
    label: str
    bits: int = 32  # 32: the kernel reads an int (compare the low half); 64: the whole register


#: The arguments a policy usually constrains (docs/record.md has the table).
ARG_TABLE: dict[str, tuple[ArgSpec, ...]] = {
    "socket": (ArgSpec(0, "family"), ArgSpec(1, "type")),
    "ioctl": (ArgSpec(1, "request"),),
    "prctl": (ArgSpec(0, "option"),),
    "personality": (ArgSpec(0, "persona"),),
    "clone": (ArgSpec(0, "flags", 64),),
    "mmap": (ArgSpec(2, "prot"),),
    "mmap2": (ArgSpec(2, "prot"),),
    "mprotect": (ArgSpec(2, "prot"),),
    "open": (ArgSpec(1, "flags"),),
    "openat": (ArgSpec(2, "flags"),),
    "fcntl": (ArgSpec(1, "cmd"),),
    "fcntl64": (ArgSpec(1, "cmd"),),
}

#: (ABI, syscall) whose arguments are not in registers: i386's old mmap takes
#: a pointer to a struct, so its register holds no prot to record.
NOT_IN_REGISTERS = frozenset({("i386", "mmap")})


def parse_arg_option(text: str) -> tuple[str, int]:
    """`--args SYSCALL:INDEX` -> (syscall, index); UsageError naming the fix."""
    name, sep, index = text.partition(":")
    name = name.strip()
    if not sep or not name or not index.strip():
        raise UsageError(f"--args {text!r}: expected SYSCALL:INDEX",
                         hint="e.g. --args setsockopt:1 records setsockopt's level")
    try:
        idx = int(index, 0)
    except ValueError:
        raise UsageError(f"--args {text!r}: index {index!r} is not a number",
                         hint="arguments are numbered 0 to 5") from None
    if not 0 <= idx <= 5:
        raise UsageError(f"--args {text!r}: index {idx} is out of range",
                         hint="a syscall has arguments 0 to 5")
    if not any(a.table and name in a.table for a in ABIS.values()):
        close = syscalls._suggest(name, "x86_64")
        raise UsageError(f"--args {text!r}: unknown syscall {name!r}", hint=close)
    return name, idx


def arg_table(extra: list[tuple[str, int]] | tuple[tuple[str, int], ...] = ()
              ) -> dict[str, tuple[ArgSpec, ...]]:
    """ARG_TABLE with the `--args` additions (compared as whole 64-bit values)."""
    table = dict(ARG_TABLE)
    for name, idx in extra:
        have = table.get(name, ())
        if any(s.index == idx for s in have):
            continue
        table[name] = tuple(sorted((*have, ArgSpec(idx, f"arg{idx}", 64)),
                                   key=lambda s: s.index))
    return table


# --- the recording -----------------------------------------------------------

#: Distinct argument tuples kept per syscall; past this the syscall is allowed
#: whole (profile.MAX_COMBOS is lower), so a program cannot grow the recorder's
#: memory without bound by varying an argument.
MAX_TUPLES = 1024
#: Distinct numbers without a name kept; the rest are counted together.
MAX_UNNAMED = 4096


@dataclass
class Recording:
    """Calls and argument values seen; filled by a backend through `add`."""
    backend: str = ""
    args: dict[str, tuple[ArgSpec, ...]] = field(default_factory=lambda: dict(ARG_TABLE))
    calls: Counter[tuple[str, int]] = field(default_factory=Counter)
    values: dict[tuple[str, int], Counter[tuple[int, ...]]] = field(default_factory=dict)
    tasks: set[int] = field(default_factory=set)
    events: int = 0
    lost: int = 0  # events a backend reports it could not deliver
    overflowed: set[tuple[str, int]] = field(default_factory=set)  # > MAX_TUPLES tuples
    unnamed_dropped: int = 0  # calls of numbers past MAX_UNNAMED distinct ones
    skipped_before_exec: int = 0
    exit_status: int | None = None
    timed_out: bool = False
    notes: list[str] = field(default_factory=list)
    _specs: dict[tuple[str, int], tuple[ArgSpec, ...]] = field(default_factory=dict, repr=False)
    _started: bool = field(default=True, repr=False)
    _leader: int = field(default=0, repr=False)
    _unnamed: int = field(default=0, repr=False)

    def start_at_exec_of(self, pid: int) -> None:
        """Ignore PID's calls until its first execve/execveat (the recorder's own
        set-up between attaching and exec is not the command's)."""
        self._started = False
        self._leader = pid

    def specs(self, abi: str, nr: int) -> tuple[ArgSpec, ...]:
        key = (abi, nr)
        got = self._specs.get(key)
        if got is None:
            name = syscall_name(abi, nr)
            got = () if name is None or (abi, name) in NOT_IN_REGISTERS \
                else self.args.get(name, ())
            self._specs[key] = got
        return got

    def add(self, arch: int, nr: int, args: tuple[int, ...] | list[int], pid: int) -> None:
        abi, num = abi_of(arch, nr)
        if not self._started:
            if pid != self._leader or syscall_name(abi, num) not in ("execve", "execveat"):
                self.skipped_before_exec += 1
                return
            self._started = True
        self.events += 1
        self.tasks.add(pid)
        key = (abi, num)
        if key not in self.calls and syscall_name(abi, num) is None:
            self._unnamed += 1
            if self._unnamed > MAX_UNNAMED:
                self.unnamed_dropped += 1
                return  # gets the default action (ENOSYS) anyway: nothing to allow
        self.calls[key] += 1
        specs = self.specs(abi, num)
        if specs and key not in self.overflowed:
            combo = tuple(args[s.index] & (0xFFFFFFFF if s.bits == 32 else 0xFFFFFFFFFFFFFFFF)
                          for s in specs)
            seen = self.values.setdefault(key, Counter())
            if combo in seen or len(seen) < MAX_TUPLES:
                seen[combo] += 1
            else:
                self.overflowed.add(key)

    # --- views ---

    def abis(self) -> list[str]:
        return sorted({abi for abi, _ in self.calls})

    def named(self) -> dict[str, dict[str, int]]:
        """{abi: {syscall: count}} for the calls with a name."""
        out: dict[str, dict[str, int]] = {}
        for (abi, num), count in sorted(self.calls.items()):
            name = syscall_name(abi, num)
            if name is not None:
                out.setdefault(abi, {})[name] = count
        return out

    def unnamed(self) -> list[tuple[str, int, int]]:
        """[(abi, number, count)] of the calls no table names."""
        return [(abi, num, count) for (abi, num), count in sorted(self.calls.items())
                if syscall_name(abi, num) is None]

    def summary(self) -> dict[str, object]:
        """The `--json` summary."""
        arg_values: dict[str, dict[str, list[dict[str, object]]]] = {}
        for (abi, num), combos in sorted(self.values.items()):
            name = syscall_name(abi, num) or str(num)
            specs = self.specs(abi, num)
            arg_values.setdefault(abi, {})[name] = [
                {"args": {f"{s.index}:{s.label}": hex(v)
                          for s, v in zip(specs, combo, strict=True)},
                 "count": count}
                for combo, count in sorted(combos.items())]
        return {
            "backend": self.backend,
            "exit_status": self.exit_status,
            "timed_out": self.timed_out,
            "events": self.events,
            "lost": self.lost,
            "tasks": len(self.tasks),
            "abis": self.abis(),
            "syscalls": self.named(),
            "unnamed": [{"abi": a, "nr": n, "count": c} for a, n, c in self.unnamed()],
            "unnamed_not_kept": self.unnamed_dropped,
            "arg_values": arg_values,
            "notes": list(self.notes),
        }
