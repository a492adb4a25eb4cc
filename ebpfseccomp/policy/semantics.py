"""What a selected profile decides, per architecture and syscall, as libseccomp decides it.

`compile(selection)` returns one `ArchPlan` per architecture of the filter:
for every syscall number the profile names there, either one action for the
whole syscall or an ordered list of guarded actions, plus the default.  The
template (render.py) writes exactly this as C; nothing else decides.

The rules below are libseccomp 2.5's, each documented in docs/policies.md
with the place in libseccomp it comes from:

* A name is looked up in the architecture's Linux 6.12 table
  (ebpfseccomp.syscalls, its compat tables for i386, x32 and arm); a name
  the architecture lacks is skipped there.
* On i386 a socket or SysV IPC call is also made through its multiplexer,
  socketcall(2) or ipc(2): the rule is added there too, with its argument 0
  replaced by `a0 == call number` (libseccomp's abi_rule_add).
* A rule whose action is the default action adds nothing (libseccomp refuses
  it with -EACCES and runtimes skip it).
* A rule with no effective comparison applies to the whole syscall.  The
  first such rule wins: later rules of the syscall, with or without
  comparisons, change nothing (db_rule_add keeps an existing whole-syscall
  entry and drops the new one; a whole-syscall rule replaces any earlier
  argument rules).
* Comparisons of one rule are ANDed; rules of one syscall are ORed.  Rules
  with different actions that can match the same call are refused: the
  answer libseccomp gives then depends on the order of its rule tree.
* On a 64-bit ABI an argument is compared as a 64-bit unsigned value (two
  32-bit halves in libseccomp's cBPF, with the high half decisive for the
  order operators).  On a 32-bit ABI (i386, x32, arm) only the low halves of
  argument and value are compared.  MASKED_EQ is `(arg & mask) == (value & mask)`.
* x86_64 with x32 in the filter is one block for AUDIT_ARCH_X86_64: the
  numbers of both tables, anything else the default.  Without x32, numbers
  with X32_SYSCALL_BIT get the bad-architecture action (-1 the default).
* A MASKED_EQ with mask 0 is no comparison at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import syscalls
from .model import ARCHES, Arg, PolicyError, Rule, Selection

#: SCMP_ARCH_* -> (ebpfseccomp arch name, argument width in bits): libseccomp's
#: ARCH_SIZE_64 / ARCH_SIZE_32 (x32 is a 32-bit ABI to libseccomp).
SUPPORTED: dict[str, tuple[str, int]] = {
    "SCMP_ARCH_X86_64": ("x86_64", 64),
    "SCMP_ARCH_AARCH64": ("aarch64", 64),
    "SCMP_ARCH_X86": ("i386", 32),
    "SCMP_ARCH_X32": ("x32", 32),
    "SCMP_ARCH_ARM": ("arm", 32),
}

X32_SYSCALL_BIT = 0x40000000
AUDIT_ARCH_X86_64 = 0xC000003E


def audit_arch(scmp: str) -> int:
    """seccomp_data.arch of an ABI's calls: its AUDIT_ARCH_*, except x32, whose
    calls the kernel reports as AUDIT_ARCH_X86_64 (libseccomp's token_bpf)."""
    return AUDIT_ARCH_X86_64 if scmp == "SCMP_ARCH_X32" else ARCHES[scmp][0]


#: The call numbers of the socket and SysV IPC multiplexers' sub-calls
#: (include/uapi/linux/net.h SYS_*; ipc's SEMOP, SEMGET, ...): libseccomp's
#: __PNR_* pseudo numbers are -100 / -200 minus these.
SOCKET_CALLS: dict[str, int] = {
    "socket": 1, "bind": 2, "connect": 3, "listen": 4, "accept": 5, "getsockname": 6,
    "getpeername": 7, "socketpair": 8, "send": 9, "recv": 10, "sendto": 11,
    "recvfrom": 12, "shutdown": 13, "setsockopt": 14, "getsockopt": 15, "sendmsg": 16,
    "recvmsg": 17, "accept4": 18, "recvmmsg": 19, "sendmmsg": 20}
IPC_CALLS: dict[str, int] = {
    "semop": 1, "semget": 2, "semctl": 3, "semtimedop": 4, "msgsnd": 11, "msgrcv": 12,
    "msgget": 13, "msgctl": 14, "shmat": 21, "shmdt": 22, "shmget": 23, "shmctl": 24}
#: The ABIs with multiplexers libseccomp knows of (among those converted):
#: multiplexer syscall name -> its sub-calls.
MULTIPLEXERS: dict[str, dict[str, dict[str, int]]] = {
    "SCMP_ARCH_X86": {"socketcall": SOCKET_CALLS, "ipc": IPC_CALLS},
}
#: libseccomp's default bad-architecture action: SCMP_ACT_KILL (kill the thread).
BAD_ARCH_ACTION = 0x00000000


@dataclass(frozen=True)
class Cond:
    index: int
    op: str  # EQ NE LT LE GT GE MASKED_EQ (without SCMP_CMP_)
    value: int  # compared value, already reduced to the width (and masked for MASKED_EQ)
    mask: int  # MASKED_EQ only; else the width's all-ones
    width: int

    def holds(self, arg: int) -> bool:
        full = (1 << self.width) - 1
        a = arg & full
        if self.op == "MASKED_EQ":
            return (a & self.mask) == self.value
        return {
            "EQ": a == self.value, "NE": a != self.value, "LT": a < self.value,
            "LE": a <= self.value, "GT": a > self.value, "GE": a >= self.value,
        }[self.op]


@dataclass
class Branch:
    rule: Rule
    conds: tuple[Cond, ...]
    action: int
    via: str = ""  # the profile's name when this is its multiplexed form (i386)


@dataclass
class SyscallPlan:
    nr: int
    name: str
    whole: Branch | None = None  # one action for every call
    branches: list[Branch] = field(default_factory=list)  # else: first match, in order


@dataclass
class ArchPlan:
    scmp: str
    name: str  # ebpfseccomp arch name
    audit: int
    width: int
    syscalls: dict[int, SyscallPlan]
    x32_filter: bool  # x86_64 without x32 in the filter: x32 numbers get the bad-arch action

    def decide(self, nr: int, args: tuple[int, ...], default: int) -> int:
        """This ABI's answer for call NR: its rules, or DEFAULT."""
        sp = self.syscalls.get(nr)
        if sp is None:
            return default
        if sp.whole is not None:
            return sp.whole.action
        for b in sp.branches:
            if all(c.holds(args[c.index]) for c in b.conds):
                return b.action
        return default


@dataclass
class Plan:
    default: int
    bad_arch: int
    arches: list[ArchPlan]
    selection: Selection

    def arch_for(self, arch: int, nr: int) -> ArchPlan | None:
        """The ABI that decides a call: by seccomp_data.arch, and for
        AUDIT_ARCH_X86_64 by X32_SYSCALL_BIT when x32 is in the filter."""
        found = [ap for ap in self.arches if ap.audit == arch]
        if len(found) > 1:  # x86_64 and x32 share AUDIT_ARCH_X86_64
            x32 = (nr & 0xFFFFFFFF) >= X32_SYSCALL_BIT
            found = [ap for ap in found if (ap.name == "x32") == x32]
        return found[0] if found else None

    def decide(self, arch: int, nr: int, args: tuple[int, ...]) -> int:
        """The plan's answer for one call: the reference the C must match."""
        nr &= 0xFFFFFFFF
        ap = self.arch_for(arch, nr)
        if ap is None:
            return self.bad_arch
        if ap.x32_filter and nr >= X32_SYSCALL_BIT:
            return self.default if nr == 0xFFFFFFFF else self.bad_arch
        return ap.decide(nr, args, self.default)


def cond(arg: Arg, width: int) -> Cond | None:
    """libseccomp's meaning of one comparison on an ABI of WIDTH bits; None: always true."""
    full = (1 << width) - 1
    op = arg.op.removeprefix("SCMP_CMP_")
    if op == "MASKED_EQ":
        mask = arg.value & full
        if mask == 0:
            return None  # _db_arg_cmp_need_lo/hi: no node at all
        return Cond(arg.index, op, arg.value_two & mask, mask, width)
    return Cond(arg.index, op, arg.value & full, full, width)


# --- overlap: can two rules match the same call? ---------------------------


def _interval(c: Cond) -> tuple[int, int] | None:
    full = (1 << c.width) - 1
    return {
        "EQ": (c.value, c.value), "LT": (0, c.value - 1), "LE": (0, c.value),
        "GT": (c.value + 1, full), "GE": (c.value, full),
    }.get(c.op)


def _may_intersect(a: Cond, b: Cond) -> bool:
    """False only when no argument value satisfies both (exact except interval x mask)."""
    ia, ib = _interval(a), _interval(b)
    for c in (a, b):
        i = _interval(c)
        if i is not None and i[0] > i[1]:
            return False  # LT 0, GT max: matches nothing
    if a.op == "EQ":
        return b.holds(a.value)
    if b.op == "EQ":
        return a.holds(b.value)
    if ia is not None and ib is not None:
        return max(ia[0], ib[0]) <= min(ia[1], ib[1])
    if a.op == "NE" or b.op == "NE":
        ne, other = (a, b) if a.op == "NE" else (b, a)
        if other.op == "NE":
            return True
        io = _interval(other)
        if io is not None:
            return not (io[0] == io[1] == ne.value)
        # masked set is {value} only when the mask covers the width
        full = (1 << other.width) - 1
        return not (other.mask == full and other.value == ne.value)
    if a.op == "MASKED_EQ" and b.op == "MASKED_EQ":
        return not ((a.value ^ b.value) & a.mask & b.mask)
    m, iv = (a, b) if a.op == "MASKED_EQ" else (b, a)
    lo, hi = _interval(iv)  # type: ignore[misc]
    free = ((1 << m.width) - 1) & ~m.mask
    return not (m.value | free < lo or m.value > hi)


def _may_overlap(x: tuple[Cond, ...], y: tuple[Cond, ...]) -> bool:
    by_index = {c.index: c for c in x}
    return all(_may_intersect(by_index[c.index], c) for c in y if c.index in by_index)


def _check_conflicts(sp: SyscallPlan, arch: str) -> None:
    for i, br in enumerate(sp.branches):
        for other in sp.branches[:i]:
            if other.action != br.action and _may_overlap(other.conds, br.conds):
                via = " (calls it multiplexes: " + ", ".join(
                    dict.fromkeys(b.via for b in (other, br) if b.via)) + ")" \
                    if br.via or other.via else ""
                raise PolicyError(
                    f"{sp.name} on {arch}{via}: this rule ({br.rule.action_name}) and "
                    f"{other.rule.path} ({other.rule.action_name}) can both match the same "
                    "call with different actions; libseccomp's answer then depends on the "
                    "order of its internal rule tree, which ebpfseccomp does not reproduce",
                    path=br.rule.path,
                    hint="make the argument conditions exclusive")


# --- compile ---------------------------------------------------------------


def arch_table(name: str) -> dict[str, int]:
    """Linux 6.12's name -> number table of an ABI (native or compat)."""
    if name in syscalls.COMPAT_ARCHES:
        return syscalls.compat_table(name)
    return syscalls.table(name)


def _targets(scmp: str, table: dict[str, int], name: str,
             args: tuple[Arg, ...]) -> list[tuple[int, str, tuple[Arg, ...], str]]:
    """Where one name of a rule lands on an ABI: (nr, syscall name, args, via).

    On i386 a socket or IPC call lands on its multiplexer first, with argument
    0 replaced by the call number, then on its direct number if the ABI has
    one (libseccomp's abi_rule_add, in that order)."""
    out = []
    for mux_name, calls in MULTIPLEXERS.get(scmp, {}).items():
        if name in calls and mux_name in table:
            call = Arg(index=0, value=calls[name], value_two=0, op="SCMP_CMP_EQ",
                       path=f"{name} via {mux_name}")
            out.append((table[mux_name], mux_name,
                        (call, *(a for a in args if a.index != 0)), name))
    if name in table:
        out.append((table[name], name, args, ""))
    return out


def compile(sel: Selection) -> Plan:  # noqa: A001 - the verb is the point
    default = sel.profile.default_action
    plans: list[ArchPlan] = []
    for scmp in sel.arches:
        name, width = SUPPORTED[scmp]
        table = arch_table(name)
        per: dict[int, SyscallPlan] = {}
        for rule in sel.rules:
            if rule.action == default:
                continue
            for sc in dict.fromkeys(rule.names):
                for nr, sc_name, args, via in _targets(scmp, table, sc, rule.args):
                    conds = sorted((c for c in (cond(a, width) for a in args) if c is not None),
                                   key=lambda c: c.index)
                    sp = per.setdefault(nr, SyscallPlan(nr=nr, name=sc_name))
                    if sp.whole is not None:
                        continue
                    br = Branch(rule=rule, conds=tuple(conds), action=rule.action, via=via)
                    if not conds:
                        # libseccomp has added the argument rules before (or
                        # refused them, -EEXIST): check them before they go.
                        _check_conflicts(sp, name)
                        sp.whole = br
                        sp.branches = []
                        continue
                    sp.branches.append(br)
        for sp in per.values():
            _check_conflicts(sp, name)
        plans.append(ArchPlan(scmp=scmp, name=name, audit=audit_arch(scmp), width=width,
                              syscalls=dict(sorted(per.items())),
                              x32_filter=(scmp == "SCMP_ARCH_X86_64"
                                          and "SCMP_ARCH_X32" not in sel.arches)))
    return Plan(default=default, bad_arch=BAD_ARCH_ACTION, arches=plans, selection=sel)


ORDER_OPS = frozenset({"GT", "GE", "LT", "LE"})


def libseccomp_tree_risk(plan: Plan) -> set[tuple[int, int]]:
    """(AUDIT_ARCH, nr) of syscalls whose rules libseccomp 2.5 may merge wrongly.

    Two argument rules of one syscall that compare the same argument, one of
    them with an order operator (GT, GE, LT, LE): libseccomp's rule tree then
    can drop one rule (`_db_tree_prune` takes the wider rule for redundant)
    or join the chains so that a failed comparison continues into the other
    rule (docs/policies.md, "Where libseccomp's filter is wrong").  The eBPF
    filter follows the profile; `convert` warns about these syscalls.
    """
    risky: set[tuple[int, int]] = set()
    for ap in plan.arches:
        for sp in ap.syscalls.values():
            seen: dict[int, set[str]] = {}
            for br in sp.branches:
                for c in br.conds:
                    seen.setdefault(c.index, set())
            for index in seen:
                ops = [c.op for br in sp.branches for c in br.conds if c.index == index]
                if len(ops) >= 2 and ORDER_OPS.intersection(ops):
                    risky.add((ap.audit, sp.nr))
    return risky
