"""Which helper tier the kernel will grant, predicted before bpf(2) is called.

The kernel decides a seccomp program's tier when it is loaded, in the
loader's context (../shared/DESIGN-NOTES.md, sections 4-6).  This module
mirrors those rules as a pure function:

    predict(Needs.from_program(obj, prog), Credentials, SystemPolicy) -> Prediction

so that the loader can refuse early with a message naming the helper or map
access, the rule and the privilege or sysctl that would allow it, and so that
the loader daemon can apply the same rules to a client's credentials
(`Credentials.from_values`).

The order of the checks is the kernel's, so that the errno predicted for an
object that breaks several rules is the one the kernel answers first:

1. bpf(BPF_PROG_LOAD/BPF_MAP_CREATE) with kernel.unprivileged_bpf_disabled != 0
   and no CAP_BPF/CAP_SYS_ADMIN: EPERM (libbpf creates maps first; same errno);
2. map types that need CAP_BPF even when unprivileged BPF is allowed: EPERM;
3. more than 4096 instructions without CAP_BPF: E2BIG;
4. BPF-to-BPF calls without CAP_BPF: EPERM (verifier, before map references);
5. a map or global-variable reference when the LSM hook denies helpers: EACCES;
6. loops (back-edges) without CAP_BPF: EINVAL;
7. a helper outside the granted tier: EINVAL ("unknown func").
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import contract
from .contract import Tier
from .insn import BPF_CALL, BPF_EXIT, BPF_JMP, BPF_JMP32, BPF_PSEUDO_CALL

CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

CAP_BY_NAME: dict[str, int] = {
    "CAP_SYS_PTRACE": CAP_SYS_PTRACE,
    "CAP_SYS_ADMIN": CAP_SYS_ADMIN,
    "CAP_PERFMON": CAP_PERFMON,
    "CAP_BPF": CAP_BPF,
}

#: Map types an unprivileged loader may create (kernel/bpf/syscall.c, map_create).
UNPRIVILEGED_MAP_TYPES = frozenset({1, 2, 3, 4, 5, 6, 8, 12, 13, 19, 21, 27, 31})
MAP_TYPE_NAMES = {**contract.MAP_TYPES, 7: "stack_trace", 11: "lpm_trie", 22: "queue",
                  23: "stack", 27: "ringbuf"}  # fmt: skip

TIER_WORDS = {
    Tier.NONE: "none (no helpers, no maps: what classic BPF can do)",
    Tier.EXTENDED: "extended (the contract's helpers and maps; user memory of dumpable tasks)",
    Tier.PTRACE: "extended, reading user memory of any task (CAP_SYS_PTRACE)",
    Tier.TRACING: "tracing (extended plus the kernel's base and tracing helpers)",
}


def cap_name(cap: int) -> str:
    for name, value in CAP_BY_NAME.items():
        if value == cap:
            return name
    from .sys import CAP_NAMES

    return CAP_NAMES.get(cap, f"capability {cap}")


def _parse_cap(cap: int | str) -> int:
    if isinstance(cap, int):
        return cap
    text = cap.strip().upper()
    if not text.startswith("CAP_"):
        text = "CAP_" + text
    if text in CAP_BY_NAME:
        return CAP_BY_NAME[text]
    from .sys import CAP_NAMES

    for value, name in CAP_NAMES.items():
        if name == text:
            return value
    raise ValueError(f"unknown capability {cap!r}")


# --- who loads ----------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """The loader's identity as the kernel sees it at load time.

    caps are the effective capabilities in the loader's own user namespace;
    initial_userns says whether that namespace is the initial one.  CAP_BPF,
    CAP_PERFMON and CAP_SYS_ADMIN count for bpf(2) only in the initial user
    namespace (capable()); CAP_SYS_PTRACE counts for the Yama hook in the
    loader's own user namespace (contract, section 6).
    """

    uid: int
    caps: frozenset[int] = frozenset()
    initial_userns: bool = True

    @classmethod
    def from_values(
        cls, uid: int, caps: Iterable[int | str] = (), *, initial_userns: bool = True
    ) -> Credentials:
        """Build credentials from numbers or names ("CAP_BPF", "bpf", 39)."""
        return cls(uid, frozenset(_parse_cap(c) for c in caps), initial_userns)

    @classmethod
    def from_mask(cls, uid: int, effective: int, *, initial_userns: bool = True) -> Credentials:
        caps = frozenset(i for i in range(64) if effective >> i & 1)
        return cls(uid, caps, initial_userns)

    @classmethod
    def current(cls) -> Credentials:
        """The calling thread's effective uid, capabilities and user namespace."""
        from . import sys as _sys

        eff = _sys.capget().effective
        return cls.from_mask(os.geteuid(), eff, initial_userns=in_initial_userns())

    @classmethod
    def of_pid(cls, pid: int) -> Credentials:
        """Another process's credentials, read from /proc/PID/status (racy: use a pidfd)."""
        uid = -1
        eff = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    uid = int(line.split()[2])  # effective
                elif line.startswith("CapEff:"):
                    eff = int(line.split()[1], 16)
        return cls.from_mask(uid, eff, initial_userns=in_initial_userns(pid))

    def has(self, cap: int) -> bool:
        """CAP in the loader's own user namespace (ns_capable(current_user_ns()))."""
        return cap in self.caps

    def capable(self, cap: int) -> bool:
        """CAP in the initial user namespace (the kernel's capable())."""
        return self.initial_userns and cap in self.caps

    @property
    def bpf_capable(self) -> bool:
        return self.capable(CAP_BPF) or self.capable(CAP_SYS_ADMIN)

    @property
    def perfmon_capable(self) -> bool:
        return self.capable(CAP_PERFMON) or self.capable(CAP_SYS_ADMIN)

    def describe(self) -> str:
        names = [cap_name(c) for c in sorted(self.caps) if c in CAP_BY_NAME.values()]
        where = "" if self.initial_userns else " in a child user namespace"
        caps = ", ".join(names) if names else "none of CAP_BPF/PERFMON/SYS_PTRACE/SYS_ADMIN"
        return f"uid {self.uid} with {caps}{where}"


def in_initial_userns(pid: int | str = "self") -> bool:
    """True when PID's user namespace is the initial one (its uid_map maps all ids)."""
    try:
        with open(f"/proc/{pid}/uid_map") as f:
            rows = [line.split() for line in f if line.strip()]
    except OSError:
        return True
    return rows == [["0", "0", "4294967295"]]


# --- what the system allows ---------------------------------------------------------


@dataclass(frozen=True)
class SystemPolicy:
    """The sysctls that decide loading and tiers.

    ptrace_scope is None when Yama is not active (no /proc/sys/kernel/yama):
    then no LSM implements the seccomp_extended hook and helpers are allowed.
    """

    ptrace_scope: int | None = 1
    unprivileged_bpf_disabled: int = 2

    @classmethod
    def current(cls) -> SystemPolicy:
        return cls(_read_int(contract.YAMA_PTRACE_SCOPE), _read_int(
            contract.UNPRIVILEGED_BPF_DISABLED) or 0)

    def describe(self) -> str:
        scope = "Yama inactive" if self.ptrace_scope is None else (
            f"kernel.yama.ptrace_scope={self.ptrace_scope}")
        return f"{scope}, kernel.unprivileged_bpf_disabled={self.unprivileged_bpf_disabled}"


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


# --- what the object needs --------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    """Where an object first uses something: instruction index and source line."""

    insn: int | None = None
    source: str | None = None  # "file.c:12: text"

    def __str__(self) -> str:
        parts = []
        if self.insn is not None:
            parts.append(f"insn {self.insn}")
        if self.source:
            parts.append(self.source)
        return ", ".join(parts)


@dataclass
class Needs:
    """What a program uses that privilege decides."""

    helpers: dict[int, Use] = field(default_factory=dict)  # helper id -> first call
    maps: dict[str, Use] = field(default_factory=dict)  # map name -> first reference
    map_types: dict[str, int] = field(default_factory=dict)  # every map the object creates
    globals_: set[str] = field(default_factory=set)  # names of global-variable maps
    insn_count: int = 0
    calls: Use | None = None  # first BPF-to-BPF call
    loop: Use | None = None  # first back-edge

    @classmethod
    def from_program(cls, obj: object, program: object) -> Needs:
        """From an elf.BpfObject and one of its elf.Program (exact, instruction by instruction)."""
        insns = list(program.insns)  # type: ignore[attr-defined]
        lines = getattr(program, "lines", {}) or {}

        starts = sorted(lines)

        def use(i: int) -> Use:
            # line info marks where a statement starts: take the closest one at or before i
            line = lines.get(i)
            if line is None and starts:
                import bisect

                k = bisect.bisect_right(starts, i) - 1
                line = lines[starts[k]] if k >= 0 else None
            src = None
            if line is not None:
                text = getattr(line, "text", "").strip()
                src = f"{line}: {text}" if text else str(line)
            return Use(i, src)

        needs = cls(insn_count=len(insns))
        skip = False
        for i, ins in enumerate(insns):
            if skip:
                skip = False
                continue
            if ins.code == 0x18:  # ld_imm64 takes two slots
                skip = True
                continue
            cls_ = ins.code & 0x07
            if cls_ not in (BPF_JMP, BPF_JMP32):
                continue
            op = ins.code & 0xF0
            if op == BPF_CALL and cls_ == BPF_JMP:
                if ins.src == BPF_PSEUDO_CALL:
                    needs.calls = needs.calls or use(i)
                elif ins.src == 0:
                    needs.helpers.setdefault(ins.imm, use(i))
                continue
            if op == BPF_EXIT:
                continue
            off = ins.imm if (cls_ == BPF_JMP32 and op == 0) else ins.off
            if off < 0 and needs.loop is None:
                needs.loop = use(i)
        for r in getattr(program, "relocs", []):
            needs.maps.setdefault(r.map, use(r.insn))
        for name, spec in (getattr(obj, "maps", {}) or {}).items():
            needs.map_types[name] = spec.type
            if getattr(spec, "is_global", False):
                needs.globals_.add(name)
        return needs

    @property
    def tier(self) -> Tier:
        """The lowest tier in which every helper and map access of the object is allowed."""
        tier = Tier.EXTENDED if (self.maps or self.helpers) else Tier.NONE
        for hid in self.helpers:
            t = contract.helper_tier(hid)
            if t is not None and t > tier:
                tier = t
        return tier


# --- the prediction ------------------------------------------------------------------------


@dataclass
class Prediction:
    """Will the load succeed, and with which tier?

    tier is the tier the kernel grants this loader (also when the load fails:
    it is what the loader would get); needed is the tier the object needs.
    errno is the error the kernel will answer first, None when ok.
    """

    ok: bool
    tier: Tier
    reasons: list[str] = field(default_factory=list)
    errno: int | None = None
    needed: Tier = Tier.NONE
    reads_any_task: bool = False  # probe_read_user* also reads non-dumpable tasks

    @property
    def message(self) -> str:
        if self.ok:
            return f"loads with tier {self.tier.name.lower()}"
        return " ".join(self.reasons)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "tier": self.tier.name.lower(),
            "needed": self.needed.name.lower(),
            "reads_any_task": self.reads_any_task,
            "errno": _errno.errorcode.get(self.errno, self.errno) if self.errno else None,
            "reasons": list(self.reasons),
        }


def hook_allows(creds: Credentials, policy: SystemPolicy) -> tuple[bool, str]:
    """The Yama seccomp_extended hook: (allowed, the rule that decided)."""
    scope = policy.ptrace_scope
    if scope is None:
        return True, "Yama is not active, so no LSM restricts eBPF seccomp helpers"
    if scope in (0, 1):
        return True, f"kernel.yama.ptrace_scope={scope} allows eBPF seccomp helpers"
    if scope == 2:
        if creds.has(CAP_SYS_PTRACE):
            return True, "kernel.yama.ptrace_scope=2 allows eBPF helpers with CAP_SYS_PTRACE"
        return False, "kernel.yama.ptrace_scope=2 allows eBPF helpers only with CAP_SYS_PTRACE"
    return False, f"kernel.yama.ptrace_scope={scope} allows no eBPF seccomp helpers to anyone"


def reads_any_task(creds: Credentials) -> bool:
    """Will the kernel let this loader's programs read non-dumpable tasks?

    Decided by the kernel at each read with the loader's credentials kept in
    the program: CAP_SYS_PTRACE over the user namespace of the task's mm.
    Predicted for any task only when the loader has it in the initial user
    namespace; CAP_SYS_PTRACE in a namespace the loader created opens no task
    whose mm belongs to an ancestor (a setuid or unreadable program).
    """
    return creds.capable(CAP_SYS_PTRACE)


def granted_tier(creds: Credentials, policy: SystemPolicy) -> Tier:
    """The tier the kernel would grant a program this loader loads."""
    allowed, _ = hook_allows(creds, policy)
    if not allowed:
        return Tier.NONE
    if creds.bpf_capable and creds.perfmon_capable:
        return Tier.TRACING
    if reads_any_task(creds):
        return Tier.PTRACE
    return Tier.EXTENDED


def _how_to_allow_hook(policy: SystemPolicy) -> str:
    if policy.ptrace_scope == 2:
        return ("load it with CAP_SYS_PTRACE (e.g. as root), or have an administrator "
                "set kernel.yama.ptrace_scope to 1 or 0")
    return ("kernel.yama.ptrace_scope=3 cannot be lowered until reboot; boot with "
            "ptrace_scope<=2, or rewrite the filter without helpers and maps")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def predict(needs: Needs, creds: Credentials, policy: SystemPolicy) -> Prediction:
    """Predict the kernel's answer to loading a program that NEEDS this, as CREDS under POLICY.

    NEEDS comes from Needs.from_program, the one way to learn what an object
    needs (the loader and the loader daemon both use it, through
    loader.preflight).  Pure: no I/O.  reasons lists every rule the object
    breaks, in the kernel's order; errno is the first one's.
    """
    tier = granted_tier(creds, policy)
    hook_ok, hook_rule = hook_allows(creds, policy)
    reads_any = hook_ok and reads_any_task(creds)
    failures: list[tuple[int, str]] = []
    bpf_cap = creds.bpf_capable
    root_hint = "" if creds.initial_userns else (
        " (capabilities in a child user namespace do not count for bpf(2))")

    # 1. may this loader call bpf(2) to load at all?
    if policy.unprivileged_bpf_disabled != 0 and not bpf_cap:
        fix = ("an administrator can set kernel.unprivileged_bpf_disabled=0"
               if policy.unprivileged_bpf_disabled == 2 else
               "kernel.unprivileged_bpf_disabled=1 stays until reboot")
        failures.append((_errno.EPERM,
            f"kernel.unprivileged_bpf_disabled={policy.unprivileged_bpf_disabled} lets only "
            f"CAP_BPF or CAP_SYS_ADMIN load BPF programs and create maps, and this loader "
            f"({creds.describe()}) has neither{root_hint}. Load as root or with CAP_BPF; "
            f"or attach a program an administrator pinned (ebpfseccomp run --pinned PATH) "
            f"or one the loader daemon hands out (ebpfseccomp run --daemon NAME); {fix}."))
    else:
        # 2. map types that need CAP_BPF regardless of the sysctl
        if not bpf_cap:
            for name, mtype in sorted(needs.map_types.items()):
                if mtype not in UNPRIVILEGED_MAP_TYPES:
                    tname = MAP_TYPE_NAMES.get(mtype, f"type {mtype}")
                    failures.append((_errno.EPERM,
                        f"Map '{name}' is a {tname} map, which only CAP_BPF may create; "
                        f"use a hash or array map, or load with CAP_BPF."))
        # 3. program size
        if needs.insn_count > contract.BPF_MAXINSNS and not bpf_cap:
            failures.append((_errno.E2BIG,
                f"The program has {needs.insn_count} instructions; without CAP_BPF the "
                f"limit is {contract.BPF_MAXINSNS}. Load with CAP_BPF or make it smaller."))
        # 4. BPF-to-BPF calls
        if needs.calls is not None and not bpf_cap:
            failures.append((_errno.EPERM,
                f"The program calls another BPF function ({needs.calls or 'a subprogram'}); "
                f"the verifier allows BPF-to-BPF calls only with CAP_BPF. Mark the function "
                f"static __always_inline, or load with CAP_BPF."))
    # 5. map and global references when the hook denies helpers
    if not hook_ok and needs.maps:
        for name, where in needs.maps.items():
            kind = "global variable" if name in needs.globals_ else "map"
            at = f" at {where}" if str(where) else ""
            what = f"{kind} section '{name}'" if kind == "global variable" else f"map '{name}'"
            failures.append((_errno.EACCES,
                f"The program uses {what}{at}, but {hook_rule}, so it gets no maps or "
                f"global variables (the kernel answers EACCES); {_how_to_allow_hook(policy)}."))
    # 6. loops
    if needs.loop is not None and not bpf_cap:
        failures.append((_errno.EINVAL,
            f"The program has a loop (back-edge at {needs.loop or 'a jump'}); the verifier "
            f"allows bounded loops only with CAP_BPF. Unroll it (#pragma unroll) or load "
            f"with CAP_BPF."))
    # 7. helpers, one sentence per reason
    denied_by_hook: list[str] = []
    tracing_missing: list[str] = []
    never: list[str] = []
    for hid, where in sorted(needs.helpers.items(), key=lambda kv: (kv[1].insn or 0, kv[0])):
        name = f"bpf_{contract.helper_name(hid)}" + (f" ({where})" if str(where) else "")
        if hid in contract.EXTENDED_HELPERS or hid in contract.TRACING_HELPERS:
            if not hook_ok:
                denied_by_hook.append(name)
            elif hid not in contract.EXTENDED_HELPERS and tier != Tier.TRACING:
                tracing_missing.append(name)
        else:
            never.append(name)
    if denied_by_hook:
        failures.append((_errno.EINVAL,
            f"The program calls {_and(denied_by_hook)}, but {hook_rule}; "
            f"{_how_to_allow_hook(policy)}."))
    if tracing_missing:
        missing = [c for c, ok in (("CAP_BPF", creds.bpf_capable),
                                   ("CAP_PERFMON", creds.perfmon_capable)) if not ok]
        failures.append((_errno.EINVAL,
            f"The program calls {_and(tracing_missing)}: tracing helpers, which seccomp "
            f"programs get only when the loader has CAP_BPF and CAP_PERFMON (missing: "
            f"{', '.join(missing)}){root_hint}."))
    if never:
        failures.append((_errno.EINVAL,
            f"The program calls {_and(never)}, which seccomp programs may never call; "
            f"allowed are the contract's helpers (map lookup/update/delete, ktime_get_ns, "
            f"get_prandom_u32, get_current_uid_gid, get_current_pid_tgid, "
            f"probe_read_user, probe_read_user_str)."))

    needed = needs.tier
    if failures:
        return Prediction(False, tier, [m for _, m in failures], failures[0][0], needed,
                          reads_any)
    return Prediction(True, tier, [f"loads with tier {tier.name.lower()}: {hook_rule}."],
                      None, needed, reads_any)
