"""What a selected profile decides, per architecture and syscall, as libseccomp decides it.

`compile(selection)` returns one `ArchPlan` per architecture of the filter:
for every syscall number the profile names there, either one action for the
whole syscall or an ordered list of guarded actions, plus the default.  The
template (render.py) writes exactly this as C; nothing else decides.

The rules below are libseccomp 2.5's, each documented in docs/policies.md
with the place in libseccomp it comes from:

* A name is looked up in the architecture's Linux 6.12 table
  (ebpfseccomp.syscalls); a name the architecture lacks is skipped there.
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
  order operators).  MASKED_EQ is `(arg & mask) == (value & mask)`.
* A MASKED_EQ with mask 0 is no comparison at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import syscalls
from .model import ARCHES, Arg, PolicyError, Rule, Selection

#: SCMP_ARCH_* -> (ebpfseccomp arch name, argument width in bits).
SUPPORTED: dict[str, tuple[str, int]] = {
    "SCMP_ARCH_X86_64": ("x86_64", 64),
    "SCMP_ARCH_AARCH64": ("aarch64", 64),
}

X32_SYSCALL_BIT = 0x40000000
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


@dataclass
class Plan:
    default: int
    bad_arch: int
    arches: list[ArchPlan]
    selection: Selection

    def decide(self, arch: int, nr: int, args: tuple[int, ...]) -> int:
        """The plan's answer for one call: the reference the C must match."""
        for ap in self.arches:
            if ap.audit != arch:
                continue
            nr &= 0xFFFFFFFF
            if ap.x32_filter and nr >= X32_SYSCALL_BIT:
                return self.default if nr == 0xFFFFFFFF else self.bad_arch
            sp = ap.syscalls.get(nr)
            if sp is None:
                return self.default
            if sp.whole is not None:
                return sp.whole.action
            for b in sp.branches:
                if all(c.holds(args[c.index]) for c in b.conds):
                    return b.action
            return self.default
        return self.bad_arch


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
                raise PolicyError(
                    f"{sp.name} on {arch}: this rule ({br.rule.action_name}) and "
                    f"{other.rule.path} ({other.rule.action_name}) can both match the same "
                    "call with different actions; libseccomp's answer then depends on the "
                    "order of its internal rule tree, which ebpfseccomp does not reproduce",
                    path=br.rule.path,
                    hint="make the argument conditions exclusive")


# --- compile ---------------------------------------------------------------


def compile(sel: Selection) -> Plan:  # noqa: A001 - the verb is the point
    default = sel.profile.default_action
    plans: list[ArchPlan] = []
    for scmp in sel.arches:
        name, width = SUPPORTED[scmp]
        table = syscalls.table(name)
        per: dict[int, SyscallPlan] = {}
        for rule in sel.rules:
            if rule.action == default:
                continue
            conds: list[Cond] = []
            for a in rule.args:
                c = cond(a, width)
                if c is not None:
                    conds.append(c)
            conds.sort(key=lambda c: c.index)
            for sc in dict.fromkeys(rule.names):
                nr = table.get(sc)
                if nr is None:
                    continue
                sp = per.setdefault(nr, SyscallPlan(nr=nr, name=sc))
                if sp.whole is not None:
                    continue
                br = Branch(rule=rule, conds=tuple(conds), action=rule.action)
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
        plans.append(ArchPlan(scmp=scmp, name=name, audit=ARCHES[scmp][0], width=width,
                              syscalls=dict(sorted(per.items())),
                              x32_filter=(scmp == "SCMP_ARCH_X86_64")))
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
