"""Static checks and disassembly of seccomp BPF programs.

``check(obj, program=None) -> Report`` predicts what the kernel's verifier
will refuse for BPF_PROG_TYPE_SECCOMP (../shared/DESIGN-NOTES.md, the
contract) and which helper tier the program needs; ``disasm(obj,
program=None) -> str`` prints a readable listing.

What the checker verifies, with the kernel's own message where there is one:

* encoding: known opcodes (the kernel's instruction table), reserved fields,
  register numbers, writes to r10, ld_imm64 pairs, division by a zero
  constant, shift amounts; ``BPF_LD_[ABS|IND]`` (socket filters only);
* control flow (check_subprogs/check_cfg): jumps inside their subprogram,
  jumps into the middle of an ld_imm64, the last instruction of every
  subprogram an exit or jump, unreachable instructions, back-edges (loops:
  CAP_BPF), BPF-to-BPF calls (CAP_BPF), recursion, call depth, the combined
  stack size;
* the context: a forward data-flow analysis follows which registers may hold
  the context pointer (r1 at entry, through moves, constant additions,
  8-byte spills and fills of the stack, and arguments of subprograms).  A
  store through it is refused; a load must be 1, 2, 4 or 8 bytes, naturally
  aligned, inside the 64 bytes of struct seccomp_data, through the unmoved
  pointer (the kernel refuses "dereference of modified ctx ptr");
* the stack: constant frame-pointer accesses inside the 512 bytes;
* map values: dereferencing a bpf_map_lookup_elem() result that may be NULL;
* helpers: known ids, available to seccomp programs in some tier, GPL-only
  helpers need a GPL-compatible license; kfunc calls are refused;
* size: 4096 instructions without CAP_BPF, 1,000,000 with it;
* maps: types the contract allows, sane sizes;
* with ``unprivileged=True`` the rules of a loader without CAP_BPF: no loops,
  no subprograms, no tracing-tier helpers, no pointer comparisons, no
  pointers returned or stored into maps.

What it does not prove (and says so in ``Report.notes`` when it matters):
value ranges (the kernel tracks them and may refuse an access this checker
lets through, e.g. a variable index into a map value), loop termination, and
the verifier's complexity limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import contract
from .contract import Tier
from .elf import BpfObject, Program, Reloc, SourceLine
from .insn import (
    ALU_NAMES,
    BPF_ADD,
    BPF_ALU,
    BPF_ALU64,
    BPF_AND,
    BPF_ARSH,
    BPF_ATOMIC,
    BPF_CALL,
    BPF_CMPXCHG,
    BPF_DIV,
    BPF_DW,
    BPF_END,
    BPF_EXIT,
    BPF_FETCH,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JLE,
    BPF_JLT,
    BPF_JMP,
    BPF_JMP32,
    BPF_JNE,
    BPF_JSET,
    BPF_JSGE,
    BPF_JSGT,
    BPF_JSLE,
    BPF_JSLT,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_LSH,
    BPF_MEM,
    BPF_MEMSX,
    BPF_MOD,
    BPF_MOV,
    BPF_MUL,
    BPF_NEG,
    BPF_OR,
    BPF_PSEUDO_CALL,
    BPF_PSEUDO_KFUNC_CALL,
    BPF_RSH,
    BPF_ST,
    BPF_STX,
    BPF_SUB,
    BPF_X,
    BPF_XCHG,
    BPF_XOR,
    SIZE_BYTES,
    Insn,
)

BPF_PSEUDO_FUNC = 4
MAX_CALL_FRAMES = 8
BPF_JCOND = 0xE0

GPL_COMPATIBLE = {
    "GPL",
    "GPL v2",
    "GPL and additional rights",
    "Dual BSD/GPL",
    "Dual MIT/GPL",
    "Dual MPL/GPL",
}

#: Helpers the kernel marks gpl_only (6.12) among those a seccomp program can reach.
GPL_ONLY_HELPERS = frozenset(
    contract.HELPER_IDS[n]
    for n in (
        "probe_read_user", "probe_read_user_str", "probe_read_kernel",
        "probe_read_kernel_str", "trace_printk", "trace_vprintk", "get_current_task",
        "get_current_task_btf", "snprintf_btf", "task_pt_regs", "timer_init",
        "timer_set_callback", "timer_start", "timer_cancel", "spin_lock", "spin_unlock",
        "kptr_xchg",
    )
)  # fmt: skip

# --- the kernel's opcode table (kernel/bpf/core.c BPF_INSN_MAP) -----------------


def _valid_opcodes() -> frozenset[int]:
    ops: set[int] = set()
    alu_ops = [BPF_ADD, BPF_SUB, BPF_AND, BPF_OR, BPF_LSH, BPF_RSH, BPF_XOR, BPF_MUL,
               BPF_MOV, BPF_ARSH, BPF_DIV, BPF_MOD]  # fmt: skip
    for cls in (BPF_ALU, BPF_ALU64):
        for op in alu_ops:
            ops.add(cls | op | BPF_X)
            ops.add(cls | op | BPF_K)
        ops.add(cls | BPF_NEG)
    ops.add(BPF_ALU | BPF_END | BPF_K)  # to_le
    ops.add(BPF_ALU | BPF_END | BPF_X)  # to_be
    ops.add(BPF_ALU64 | BPF_END | BPF_K)  # bswap
    ops.add(BPF_JMP | BPF_CALL)
    ops.add(BPF_JMP | BPF_EXIT)
    jmp_ops = [BPF_JEQ, BPF_JNE, BPF_JGT, BPF_JLT, BPF_JGE, BPF_JLE, BPF_JSGT, BPF_JSLT,
               BPF_JSGE, BPF_JSLE, BPF_JSET]  # fmt: skip
    for cls in (BPF_JMP, BPF_JMP32):
        for op in jmp_ops:
            ops.add(cls | op | BPF_X)
            ops.add(cls | op | BPF_K)
        ops.add(cls | BPF_JA)
    for size in SIZE_BYTES:
        ops.add(BPF_STX | BPF_MEM | size)
        ops.add(BPF_ST | BPF_MEM | size)
        ops.add(BPF_LDX | BPF_MEM | size)
    ops.add(BPF_STX | BPF_ATOMIC | 0x00)
    ops.add(BPF_STX | BPF_ATOMIC | BPF_DW)
    for size in (0x10, 0x08, 0x00):
        ops.add(BPF_LDX | BPF_MEMSX | size)
    ops.add(BPF_LD | 0x00 | BPF_DW)  # ld_imm64
    for size in (0x10, 0x08, 0x00):  # cBPF carry-over, rewritten for socket filters
        ops.add(BPF_LD | 0x20 | size)
        ops.add(BPF_LD | 0x40 | size)
    ops.add(BPF_JMP | BPF_JCOND)
    return frozenset(ops)


VALID_OPCODES = _valid_opcodes()

_ATOMIC_OPS = {
    BPF_ADD, BPF_AND, BPF_OR, BPF_XOR,
    BPF_ADD | BPF_FETCH, BPF_AND | BPF_FETCH, BPF_OR | BPF_FETCH, BPF_XOR | BPF_FETCH,
    BPF_XCHG, BPF_CMPXCHG,
}  # fmt: skip


# --- report ---------------------------------------------------------------------


@dataclass
class Problem:
    """Something the kernel will refuse (or would refuse for this loader)."""

    insn: int | None  # index into Program.insns; None for whole-program problems
    line: SourceLine | None
    message: str
    fix: str
    code: str = ""  # short stable identifier, e.g. "ctx-store"

    def where(self, path: str) -> str:
        text = path
        if self.insn is not None:
            text += f":insn {self.insn}"
            if self.line is not None:
                text += f" ({self.line})"
        return text

    def render(self, path: str) -> str:
        text = f"{self.where(path)}: {self.message}"
        if self.fix:
            text += f"; {self.fix}"
        return text

    def __str__(self) -> str:
        where = ""
        if self.insn is not None:
            where = f"insn {self.insn}" + (f" ({self.line})" if self.line is not None else "")
            where += ": "
        return where + self.message + (f"; {self.fix}" if self.fix else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "insn": self.insn,
            "line": None
            if self.line is None
            else {
                "file": self.line.file,
                "line": self.line.line,
                "col": self.line.col,
                "text": self.line.text,
            },
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass
class HelperUse:
    id: int
    name: str
    tier: Tier | None  # None: not available to seccomp programs at any tier
    insns: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "tier": None if self.tier is None else self.tier.name,
            "insns": self.insns,
        }


@dataclass
class Report:
    """The checker's verdict on one program.

    Stable attributes (the loader predicts privileges from them):
    ``helpers``, ``maps``, ``tier``, ``needs_cap_bpf``, ``problems``,
    ``loadable``.

    ``tier`` is what the program needs to work fully: PTRACE when it reads
    user memory (it loads at EXTENDED, but reads of non-dumpable tasks then
    fail with -EPERM unless the loader has CAP_SYS_PTRACE); ``load_tier`` is
    the lowest tier at which the kernel accepts it.  ``needs_cap_bpf``
    covers the verifier's reasons (subprograms, loops, more than 4096
    instructions), listed in ``cap_bpf_reasons``; the TRACING tier
    additionally needs CAP_BPF and CAP_PERFMON.
    """

    path: str
    program: str
    section: str
    insn_count: int
    helpers: list[HelperUse]
    maps: list[str]  # names of the maps and global sections the program uses
    tier: Tier
    load_tier: Tier
    needs_cap_bpf: bool
    cap_bpf_reasons: list[str]
    problems: list[Problem]
    notes: list[str]
    unprivileged: bool = False
    license: str | None = None
    stack_depth: int = 0
    #: likely mistakes the kernel accepts (e.g. the 64-bit argument trap)
    warnings: list[str] = field(default_factory=list)
    #: map or global section -> the first instruction referring to it and its
    #: source line: what raised the tier (a const table that landed in .rodata)
    map_refs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def loadable(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "program": self.program,
            "section": self.section,
            "insn_count": self.insn_count,
            "license": self.license,
            "loadable": self.loadable,
            "tier": self.tier.name,
            "load_tier": self.load_tier.name,
            "needs_cap_bpf": self.needs_cap_bpf,
            "cap_bpf_reasons": self.cap_bpf_reasons,
            "unprivileged": self.unprivileged,
            "stack_depth": self.stack_depth,
            "helpers": [h.to_dict() for h in self.helpers],
            "maps": self.maps,
            "problems": [p.to_dict() for p in self.problems],
            "notes": self.notes,
            "warnings": self.warnings,
            "map_refs": self.map_refs,
        }


# --- abstract values --------------------------------------------------------------
#
# A register's abstract value is a frozenset of possibilities (path-insensitive
# may-analysis).  Possibilities:
#   ("uninit",)  ("scalar",)  ("top",)
#   ("ctx", off|None)            pointer into struct seccomp_data
#   ("fp", off|None)             pointer into a stack frame
#   ("map", name)                a map (ld_imm64 with a map relocation)
#   ("mapval", name, off|None)   pointer into a map value / global section
#   ("mvn", name, id)            map value or NULL (lookup result, id = call insn)
#   ("func", target)             subprogram address (ld_imm64 pseudo func)

Val = frozenset
UNINIT: Val = frozenset({("uninit",)})
SCALAR: Val = frozenset({("scalar",)})
TOP: Val = frozenset({("top",)})
POINTER_KINDS = {"ctx", "fp", "fpc", "map", "mapval", "mvn", "func"}
_MAX_OFFSETS = 4
_MAX_POSS = 12


def _norm(v: Iterable[tuple]) -> Val:
    s = set(v)
    if ("top",) in s:
        return TOP
    by_kind: dict[tuple, list[tuple]] = {}
    for p in s:
        if p[0] in ("ctx", "fp", "fpc"):
            by_kind.setdefault((p[0],), []).append(p)
        elif p[0] == "mapval":
            by_kind.setdefault(("mapval", p[1]), []).append(p)
    for key, group in by_kind.items():
        if len(group) > _MAX_OFFSETS or any(g[-1] is None for g in group):
            for g in group:
                s.discard(g)
            s.add(key + (None,))
    if len(s) > _MAX_POSS:
        return TOP
    return frozenset(s)


def _join(a: Val, b: Val) -> Val:
    if a == b:
        return a
    return _norm(a | b)


def _is_pointer(p: tuple) -> bool:
    return p[0] in POINTER_KINDS


def _add_const(v: Val, delta: int | None) -> Val:
    out = set()
    for p in v:
        if p[0] in ("ctx", "fp", "fpc"):
            off = p[1]
            out.add((p[0], None if off is None or delta is None else off + delta))
        elif p[0] == "mapval":
            off = p[2]
            out.add(("mapval", p[1], None if off is None or delta is None else off + delta))
        elif p[0] == "uninit":
            out.add(("uninit",))
        elif p[0] in ("scalar", "top"):
            out.add(p)
        else:  # arithmetic on map pointers, maybe-NULL values, functions: refused
            out.add(("scalar",))
    return _norm(out)


@dataclass(frozen=True)
class _State:
    regs: tuple[Val, ...]
    stack: tuple[tuple[int, Val], ...]  # spilled 8-byte slots of the own frame

    def reg(self, r: int) -> Val:
        return self.regs[r] if 0 <= r < len(self.regs) else TOP

    def with_reg(self, r: int, v: Val) -> _State:
        if not 0 <= r < 10:
            return self
        regs = list(self.regs)
        regs[r] = v
        return _State(tuple(regs), self.stack)

    def slot(self, off: int) -> Val | None:
        for k, v in self.stack:
            if k == off:
                return v
        return None

    def with_slot(self, off: int, v: Val | None) -> _State:
        items = {k: x for k, x in self.stack if k != off}
        if v is not None:
            items[off] = v
        return _State(self.regs, tuple(sorted(items.items())))

    def join(self, other: _State) -> _State:
        regs = tuple(_join(a, b) for a, b in zip(self.regs, other.regs, strict=True))
        mine, theirs = dict(self.stack), dict(other.stack)
        keys = set(mine) | set(theirs)
        stack = tuple(sorted((k, _join(mine.get(k, SCALAR), theirs.get(k, SCALAR))) for k in keys))
        return _State(regs, stack)

    def map_all(self, fn) -> _State:  # type: ignore[no-untyped-def]
        return _State(
            tuple(_norm(fn(v)) for v in self.regs),
            tuple((k, _norm(fn(v))) for k, v in self.stack),
        )


def _entry_state(args: list[Val] | None) -> _State:
    regs = [UNINIT] * 11
    if args is None:
        regs[1] = frozenset({("ctx", 0)})
    else:
        for i, v in enumerate(args, start=1):
            # the caller's stack pointers point into another frame
            regs[i] = frozenset(("fpc",) + p[1:] if p[0] == "fp" else p for p in v)
    regs[10] = frozenset({("fp", 0)})
    return _State(tuple(regs), ())


# --- structure ----------------------------------------------------------------------


def _jump_target(i: int, ins: Insn) -> int | None:
    """The branch target of a jump instruction (not calls/exits), else None."""
    if ins.cls not in (BPF_JMP, BPF_JMP32):
        return None
    if ins.op in (BPF_CALL, BPF_EXIT):
        return None
    if ins.cls == BPF_JMP32 and ins.op == BPF_JA:
        return i + ins.imm + 1
    return i + ins.off + 1


def _is_cond_jump(ins: Insn) -> bool:
    return ins.cls in (BPF_JMP, BPF_JMP32) and ins.op not in (BPF_JA, BPF_CALL, BPF_EXIT)


class _Checker:
    def __init__(self, obj: BpfObject, prog: Program, unprivileged: bool):
        self.obj = obj
        self.prog = prog
        self.insns = prog.insns
        self.n = len(prog.insns)
        self.unprivileged = unprivileged
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.cap_bpf_reasons: list[str] = []
        self.relocs: dict[int, Reloc] = {r.insn: r for r in prog.relocs}
        self.helpers: dict[int, HelperUse] = {}
        self.maps_used: list[str] = []
        self.states: dict[int, _State] = {}
        self.second_slot: set[int] = set()
        self.subprog_starts: list[int] = [0]
        self.stack_depth: dict[int, int] = {}
        self._seen: set[tuple[int | None, str]] = set()
        self.cfg_ok = False  # set once every edge of the control-flow graph is in range

    # --- reporting ------------------------------------------------------------

    def line_for(self, i: int | None) -> SourceLine | None:
        if i is None:
            return None
        lines = self.prog.lines
        start = max((s for s in self.subprog_starts if s <= i), default=0)
        for j in range(i, start - 1, -1):
            if j in lines:
                return lines[j]
        return None

    def problem(self, i: int | None, code: str, message: str, fix: str) -> None:
        key = (i, code)
        if key in self._seen:
            return
        self._seen.add(key)
        self.problems.append(Problem(i, self.line_for(i), message, fix, code))

    def cap_bpf(self, reason: str) -> None:
        if reason not in self.cap_bpf_reasons:
            self.cap_bpf_reasons.append(reason)

    # --- pass 1: encoding -------------------------------------------------------

    def check_encoding(self) -> bool:
        ok = True
        i = 0
        while i < self.n:
            ins = self.insns[i]
            if ins.is_ld_imm64():
                self.second_slot.add(i + 1)
            if not self._check_insn(i, ins):
                ok = False
            i += 2 if ins.is_ld_imm64() else 1
        return ok

    def _bad(self, i: int, message: str, fix: str = "") -> bool:
        self.problem(i, "bad-insn", message, fix or "this is not an instruction clang emits; "
                     "rebuild the object, or fix the hand-written code")  # fmt: skip
        return False

    def _check_insn(self, i: int, ins: Insn) -> bool:
        code = ins.code
        if code not in VALID_OPCODES:
            return self._bad(i, f"unknown opcode {code:#04x}")
        for r, what in ((ins.dst, "destination"), (ins.src, "source")):
            if r > 10 and not (what == "source" and (ins.is_ld_imm64() or ins.is_call())):
                return self._bad(i, f"R{r} is invalid ({what} register)")
        cls = ins.cls
        if cls in (BPF_ALU, BPF_ALU64):
            return self._check_alu(i, ins)
        if cls == BPF_LDX:
            if ins.imm != 0:
                return self._bad(i, "BPF_LDX uses reserved fields")
            if ins.dst == 10:
                return self._bad(i, "frame pointer is read only")
            return True
        if cls == BPF_ST:
            if ins.src != 0:
                return self._bad(i, "BPF_ST uses reserved fields")
            return True
        if cls == BPF_STX:
            if ins.mode == BPF_ATOMIC:
                if ins.imm not in _ATOMIC_OPS:
                    return self._bad(i, f"BPF_ATOMIC uses invalid atomic opcode {ins.imm:#04x}")
                return True
            if ins.imm != 0:
                return self._bad(i, "BPF_STX uses reserved fields")
            return True
        if cls == BPF_LD:
            if ins.is_ld_imm64():
                if i + 1 >= self.n:
                    return self._bad(i, "invalid bpf_ld_imm64 insn: the second half is missing")
                hi = self.insns[i + 1]
                if hi.code or hi.dst or hi.src or hi.off:
                    return self._bad(i, "invalid bpf_ld_imm64 insn: bad second half")
                if ins.off != 0:
                    return self._bad(i, "BPF_LD_IMM64 uses reserved fields")
                if ins.dst == 10:
                    return self._bad(i, "frame pointer is read only")
                if ins.src not in (0, 1, 2, 3, 4, 5, 6):
                    return self._bad(i, f"unrecognized bpf_ld_imm64 insn (src_reg {ins.src})")
                return True
            self.problem(
                i,
                "ld-abs",
                "BPF_LD_[ABS|IND] instructions not allowed for this program type",
                "read the context with ctx->field loads (these are socket-filter instructions)",
            )
            return False
        # jumps
        op = ins.op
        if op == BPF_CALL:
            if (
                ins.source != BPF_K
                or (ins.src != BPF_PSEUDO_KFUNC_CALL and ins.off != 0)
                or ins.src not in (0, BPF_PSEUDO_CALL, BPF_PSEUDO_KFUNC_CALL)
                or ins.dst != 0
                or cls == BPF_JMP32
            ):
                return self._bad(i, "BPF_CALL uses reserved fields")
            return True
        if op == BPF_EXIT:
            if ins.source != BPF_K or ins.imm or ins.src or ins.dst or cls == BPF_JMP32:
                return self._bad(i, "BPF_EXIT uses reserved fields")
            return True
        if op == BPF_JA:
            if (
                ins.source != BPF_K
                or ins.src
                or ins.dst
                or (cls == BPF_JMP and ins.imm != 0)
                or (cls == BPF_JMP32 and ins.off != 0)
            ):
                return self._bad(i, "BPF_JA uses reserved fields")
            return True
        if op == BPF_JCOND:
            return self._bad(i, "may_goto is not supported by this toolchain")
        if ins.source == BPF_X and ins.imm != 0:
            return self._bad(i, "BPF_JMP/JMP32 uses reserved fields")
        if ins.source == BPF_K and ins.src != 0:
            return self._bad(i, "BPF_JMP/JMP32 uses reserved fields")
        return True

    def _check_alu(self, i: int, ins: Insn) -> bool:
        op, cls = ins.op, ins.cls
        if ins.dst == 10:
            return self._bad(i, "frame pointer is read only")
        if op == BPF_NEG:
            if ins.source != BPF_K or ins.src or ins.off or ins.imm:
                return self._bad(i, "BPF_NEG uses reserved fields")
        elif op == BPF_END:
            if ins.src or ins.off or ins.imm not in (16, 32, 64):
                return self._bad(i, "BPF_END uses reserved fields")
        elif op == BPF_MOV:
            if ins.source == BPF_X:
                allowed = (0, 8, 16) if cls == BPF_ALU else (0, 8, 16, 32)
                if ins.off not in allowed or ins.imm:
                    return self._bad(i, "BPF_MOV uses reserved fields")
            elif ins.src or ins.off:
                return self._bad(i, "BPF_MOV uses reserved fields")
        else:
            if ins.off not in (0, 1) or (ins.off == 1 and op not in (BPF_DIV, BPF_MOD)):
                return self._bad(i, "BPF_ALU uses reserved fields")
            if ins.source == BPF_X and ins.imm:
                return self._bad(i, "BPF_ALU uses reserved fields")
            if ins.source == BPF_K and ins.src:
                return self._bad(i, "BPF_ALU uses reserved fields")
            if op in (BPF_DIV, BPF_MOD) and ins.source == BPF_K and ins.imm == 0:
                self.problem(i, "div-zero", "div by zero", "divide by a non-zero constant")
                return False
            if op in (BPF_LSH, BPF_RSH, BPF_ARSH) and ins.source == BPF_K:
                width = 64 if cls == BPF_ALU64 else 32
                if not 0 <= ins.imm < width:
                    self.problem(
                        i, "bad-shift", f"invalid shift {ins.imm}", f"shift by 0..{width - 1}"
                    )
                    return False
        return True

    # --- pass 2: control flow -----------------------------------------------------

    def check_flow(self) -> bool:
        ok = True
        starts = {0}
        for i, ins in enumerate(self.insns):
            if i in self.second_slot:
                continue
            target = None
            if ins.is_pseudo_call():
                target = i + ins.imm + 1
                what = "call"
            elif ins.is_ld_imm64() and ins.src == BPF_PSEUDO_FUNC:
                target = i + ins.imm + 1
                what = "function pointer"
            if target is None:
                continue
            if not 0 <= target < self.n:
                self.problem(
                    i,
                    "jump-range",
                    f"{what} out of range from insn {i} to {target}",
                    "the object is corrupt; rebuild it",
                )
                ok = False
                continue
            starts.add(target)
        self.subprog_starts = sorted(starts)
        if len(self.subprog_starts) > 1:
            self.cap_bpf("BPF-to-BPF calls (subprograms)")
        # jumps stay inside their subprogram; the last insn is exit or ja
        bounds = self.subprog_starts + [self.n]
        for k in range(len(self.subprog_starts)):
            lo, hi = bounds[k], bounds[k + 1]
            for i in range(lo, hi):
                if i in self.second_slot:
                    continue
                ins = self.insns[i]
                t = _jump_target(i, ins)
                if t is not None and not lo <= t < hi:
                    name = self.prog.subprogs.get(lo, f"subprogram at {lo}")
                    self.problem(
                        i,
                        "jump-range",
                        f"jump out of range from insn {i} to {t} ({name} is insns {lo}..{hi - 1})",
                        "jumps must stay inside their function",
                    )
                    ok = False
                elif t is not None and t in self.second_slot:
                    self.problem(
                        i,
                        "jump-range",
                        f"jump into the middle of ldimm64 insn {t - 1}",
                        "the object is corrupt; rebuild it",
                    )
                    ok = False
            last = hi - 1
            if hi > lo:
                li = self.insns[last]
                is_end = li.is_exit() or (li.op == BPF_JA and li.cls in (BPF_JMP, BPF_JMP32))
                if last in self.second_slot or not is_end:
                    name = self.prog.subprogs.get(lo, "the program")
                    self.problem(
                        last,
                        "no-exit",
                        f"last insn is not an exit or jmp (end of {name})",
                        "every function must end with `exit` (return a value)",
                    )
                    ok = False
        if not ok:
            return False
        # check_cfg: DFS from insn 0 following jumps and calls
        succ: dict[int, list[int]] = {}
        for i, ins in enumerate(self.insns):
            if i in self.second_slot:
                continue
            nxt = i + 2 if ins.is_ld_imm64() else i + 1
            out: list[int] = []
            if ins.is_exit():
                pass
            elif ins.cls in (BPF_JMP, BPF_JMP32) and ins.op == BPF_JA:
                out.append(_jump_target(i, ins))  # type: ignore[arg-type]
            elif _is_cond_jump(ins) and ins.op != BPF_JCOND:
                out.extend([nxt, _jump_target(i, ins)])  # type: ignore[list-item]
            elif ins.is_pseudo_call():
                out.extend([nxt, i + ins.imm + 1])
            elif ins.is_ld_imm64() and ins.src == BPF_PSEUDO_FUNC:
                out.extend([nxt, i + ins.imm + 1])
            else:
                out.append(nxt)
            for t in out:
                if not 0 <= t < self.n:
                    self.problem(
                        i,
                        "jump-range",
                        f"jump out of range from insn {i} to {t}",
                        "the program falls off its end; end it with `exit`",
                    )
                    return False
            succ[i] = out
        self.succ = succ
        self.cfg_ok = True
        state: dict[int, int] = {}  # 1 on stack, 2 done
        back_edges: list[tuple[int, int]] = []
        stack: list[tuple[int, int]] = [(0, 0)]
        state[0] = 1
        while stack:
            node, k = stack[-1]
            edges = succ.get(node, [])
            if k < len(edges):
                stack[-1] = (node, k + 1)
                w = edges[k]
                st = state.get(w, 0)
                if st == 0:
                    state[w] = 1
                    stack.append((w, 0))
                elif st == 1:
                    back_edges.append((node, w))
            else:
                state[node] = 2
                stack.pop()
        for i in range(self.n):
            if i not in self.second_slot and i not in state:
                self.problem(
                    i,
                    "unreachable",
                    f"unreachable insn {i}",
                    "remove dead code (the kernel refuses unreachable instructions)",
                )
                ok = False
        self.back_edges = back_edges
        if back_edges:
            desc = ", ".join(f"{t}->{w}" for t, w in back_edges[:4])
            self.cap_bpf(f"loops (back-edges {desc})")
            self.notes.append(
                "the program has loops: the verifier must prove each one terminates "
                "(bounded loop); this checker only refuses loops that exit on a comparison "
                "with a register (a bound it cannot see to be constant)"
            )
            for t, w in back_edges:
                exit_cmp = self._register_bounded_exit(w, t)
                if exit_cmp is not None:
                    self.problem(
                        exit_cmp,
                        "loop-bound",
                        f"the loop from insn {w} to {t} ends on a comparison with a register "
                        f"(insn {exit_cmp}); unless that register is a constant the verifier "
                        f"cannot bound the loop and refuses the program after 1,000,000 "
                        f"instructions (E2BIG)",
                        "bound the loop by a constant as well, e.g. "
                        "`for (i = 0; i < 64 && i < n; i++)`",
                    )
                    ok = False
            if self.unprivileged:
                t, w = back_edges[0]
                self.problem(
                    t,
                    "loop",
                    f"back-edge from insn {t} to {w}: loops need CAP_BPF",
                    "unroll the loop (#pragma unroll with a constant bound) or load with CAP_BPF",
                )
                ok = False
        if len(self.subprog_starts) > 1 and self.unprivileged:
            first = next(
                i
                for i, ins in enumerate(self.insns)
                if i not in self.second_slot
                and (ins.is_pseudo_call() or (ins.is_ld_imm64() and ins.src == BPF_PSEUDO_FUNC))
            )
            self.problem(
                first,
                "subprog",
                "loading/calling other bpf or kernel functions are allowed for CAP_BPF and "
                "CAP_SYS_ADMIN",
                "mark the function `static __always_inline`, or load with CAP_BPF",
            )
        return ok

    def _register_bounded_exit(self, head: int, tail: int) -> int | None:
        """The first conditional jump of the loop HEAD..TAIL (by position) that
        compares two registers and has an edge out of the loop, else None.
        Conservative: a register holding a constant is refused too (documented
        in docs/benchmarks.md among the checker's conservative refusals)."""
        lo, hi = min(head, tail), max(head, tail)
        for i in range(lo, hi + 1):
            ins = self.insns[i]
            if not _is_cond_jump(ins) or ins.source != BPF_X or ins.op == BPF_JCOND:
                continue
            outs = [i + 1, _jump_target(i, ins)]
            if any(o is not None and not lo <= o <= hi for o in outs):
                return i
        return None

    # --- pass 3: instructions, helpers, maps ---------------------------------------

    def check_calls_and_maps(self) -> None:
        license = self.obj.license
        gpl = license in GPL_COMPATIBLE
        for i, ins in enumerate(self.insns):
            if i in self.second_slot:
                continue
            if ins.is_call() and ins.src == BPF_PSEUDO_KFUNC_CALL:
                self.problem(
                    i,
                    "kfunc",
                    f"calling kernel function (kfunc btf_id {ins.imm}) is not allowed for "
                    "seccomp programs",
                    "use only the helpers of the contract",
                )
            elif ins.is_helper_call():
                fid = ins.imm
                name = contract.HELPER_NAMES.get(fid)
                tier = contract.helper_tier(fid) if name else None
                use = self.helpers.setdefault(fid, HelperUse(fid, contract.helper_name(fid), tier))
                use.insns.append(i)
                if name is None or fid == 0:
                    self.problem(
                        i,
                        "unknown-helper",
                        f"invalid func unknown#{fid}",
                        "call only helpers from ebpfseccomp/helpers.h (Linux 6.12 ids)",
                    )
                elif tier is None:
                    self.problem(
                        i,
                        "helper",
                        f"program of this type cannot use helper bpf_{name}#{fid}",
                        "seccomp filters may call map_lookup/update/delete_elem, ktime_get_ns, "
                        "get_prandom_u32, get_current_uid_gid, get_current_pid_tgid, "
                        "probe_read_user(_str)",
                    )
                elif tier == Tier.TRACING and self.unprivileged:
                    self.problem(
                        i,
                        "tracing-helper",
                        f"helper bpf_{name}#{fid} is in the TRACING tier, which needs "
                        "CAP_BPF and CAP_PERFMON",
                        "drop the call (e.g. debug prints) or load with CAP_BPF+CAP_PERFMON",
                    )
                if name is not None and fid in GPL_ONLY_HELPERS and not gpl:
                    self.problem(
                        i,
                        "gpl",
                        f"cannot call GPL-restricted function bpf_{name} from non-GPL "
                        f"compatible program (license {license!r})",
                        'add char LICENSE[] SEC("license") = "GPL";',
                    )
        for r in self.prog.relocs:
            if r.map not in self.maps_used:
                self.maps_used.append(r.map)
            spec = self.obj.maps.get(r.map)
            if spec is None:
                self.problem(r.insn, "map", f"relocation against unknown map {r.map!r}", "")
                continue
            if spec.is_global:
                continue
            if spec.type not in contract.MAP_TYPES:
                allowed = ", ".join(contract.MAP_TYPES.values())
                self.problem(
                    r.insn,
                    "map-type",
                    f"map {r.map!r} has type {spec.type}, which seccomp filters cannot use",
                    f"use one of: {allowed}",
                )
            if spec.max_entries == 0:
                self.problem(r.insn, "map-size", f"map {r.map!r} has max_entries 0",
                             "set __uint(max_entries, N)")  # fmt: skip
            if spec.key_size == 0 or spec.value_size == 0:
                self.problem(r.insn, "map-size", f"map {r.map!r} has a zero key or value size",
                             "declare __type(key, ...) and __type(value, ...)")  # fmt: skip
            if spec.type in (2, 6) and spec.key_size != 4:
                self.problem(r.insn, "map-size",
                             f"array map {r.map!r} needs a 4-byte key, not {spec.key_size}",
                             "use __type(key, __u32)")  # fmt: skip

    # --- pass 4: data flow ----------------------------------------------------------

    def _subprog_of(self, i: int) -> int:
        return max(s for s in self.subprog_starts if s <= i)

    def dataflow(self) -> None:
        starts = self.subprog_starts
        entry_args: dict[int, list[Val] | None] = {0: None}
        returns: dict[int, Val] = {}
        for _round in range(12):
            changed = False
            self.states = {}
            call_args: dict[int, list[Val]] = {}
            new_returns: dict[int, Val] = {}
            for s in starts:
                if s != 0 and s not in entry_args:
                    continue
                self._flow_subprog(s, entry_args.get(s), returns, call_args, new_returns)
            for s, args in call_args.items():
                if entry_args.get(s) != args:
                    entry_args[s] = args
                    changed = True
            if new_returns != returns:
                returns = new_returns
                changed = True
            if not changed:
                break
        else:
            self.notes.append("data flow did not settle; context tracking is approximate")

    def _flow_subprog(
        self,
        start: int,
        args: list[Val] | None,
        returns: dict[int, Val],
        call_args: dict[int, list[Val]],
        new_returns: dict[int, Val],
    ) -> None:
        states = self.states
        states[start] = _entry_state(args)
        work = [start]
        visits: dict[int, int] = {}
        while work:
            i = work.pop()
            visits[i] = visits.get(i, 0) + 1
            if visits[i] > 200:
                continue
            st = states[i]
            ins = self.insns[i]
            for t, out in self._transfer(i, ins, st, returns, call_args, new_returns, start):
                old = states.get(t)
                new = out if old is None else old.join(out)
                if new != old:
                    states[t] = new
                    work.append(t)

    def _transfer(
        self,
        i: int,
        ins: Insn,
        st: _State,
        returns: dict[int, Val],
        call_args: dict[int, list[Val]],
        new_returns: dict[int, Val],
        sub: int,
    ) -> list[tuple[int, _State]]:
        cls = ins.cls
        nxt = i + 2 if ins.is_ld_imm64() else i + 1
        if cls in (BPF_ALU, BPF_ALU64):
            return [(nxt, st.with_reg(ins.dst, self._alu(ins, st)))]
        if cls == BPF_LDX:
            base = st.reg(ins.src)
            v = SCALAR
            if ins.size == BPF_DW and ins.mode == BPF_MEM and base:
                offs = [p[1] + ins.off for p in base if p[0] == "fp" and p[1] is not None]
                if len(offs) == len(base) and all(o % 8 == 0 for o in offs):
                    merged: Val | None = None
                    for o in offs:
                        slot = st.slot(o)
                        got = slot if slot is not None else SCALAR
                        merged = got if merged is None else _join(merged, got)
                    v = merged if merged is not None else SCALAR
            return [(nxt, st.with_reg(ins.dst, v))]
        if cls in (BPF_ST, BPF_STX):
            base = st.reg(ins.dst)
            value = st.reg(ins.src) if cls == BPF_STX else SCALAR
            if ins.mode == BPF_ATOMIC:
                value = SCALAR
                out = st
                if ins.imm & BPF_FETCH:
                    reg = 0 if ins.imm == BPF_CMPXCHG else ins.src
                    out = out.with_reg(reg, SCALAR)
                return [(nxt, out)]
            out = st
            fps = [p for p in base if p[0] == "fp"]
            for p in fps:
                if p[1] is None:
                    continue
                off = p[1] + ins.off
                slot = off - off % 8
                if ins.size == BPF_DW and off % 8 == 0 and len(fps) == len(base):
                    out = out.with_slot(off, value)
                else:
                    out = out.with_slot(slot, None)
            return [(nxt, out)]
        if cls == BPF_LD:
            if ins.is_ld_imm64():
                r = self.relocs.get(i)
                if r is not None and r.kind == "map":
                    v: Val = frozenset({("map", r.map)})
                elif r is not None:
                    v = frozenset({("mapval", r.map, r.offset)})
                elif ins.src == BPF_PSEUDO_FUNC:
                    v = frozenset({("func", i + ins.imm + 1)})
                else:
                    v = SCALAR
                return [(nxt, st.with_reg(ins.dst, v))]
            return [(nxt, st.with_reg(0, SCALAR))]
        # jumps
        if ins.is_exit():
            prev_ret = new_returns.get(sub)
            new_returns[sub] = st.reg(0) if prev_ret is None else _join(prev_ret, st.reg(0))
            return []
        if ins.is_call():
            out = st
            if ins.is_pseudo_call():
                target = i + ins.imm + 1
                args = [st.reg(r) for r in range(1, 6)]
                prev = call_args.get(target)
                call_args[target] = (
                    args if prev is None else [_join(a, b) for a, b in zip(prev, args, strict=True)]
                )
                r0 = returns.get(target, TOP)
            elif ins.src == 0 and ins.imm == contract.HELPER_IDS["map_lookup_elem"]:
                maps = [p[1] for p in st.reg(1) if p[0] == "map"]
                r0 = _norm(("mvn", m, i) for m in maps) if maps else SCALAR
            else:
                r0 = SCALAR
            out = out.with_reg(0, r0)
            for r in range(1, 6):
                out = out.with_reg(r, UNINIT)
            return [(i + 1, out)]
        if ins.op == BPF_JA:
            return [(_jump_target(i, ins), st)]  # type: ignore[list-item]
        target = _jump_target(i, ins)
        assert target is not None
        taken, fall = st, st
        if ins.source == BPF_K and ins.imm == 0 and ins.op in (BPF_JEQ, BPF_JNE):
            ids = {p[2] for p in st.reg(ins.dst) if p[0] == "mvn"}
            if ids:
                null_side, ok_side = (taken, fall) if ins.op == BPF_JEQ else (fall, taken)
                null_side = null_side.map_all(lambda v: _refine(v, ids, False))
                ok_side = ok_side.map_all(lambda v: _refine(v, ids, True))
                taken, fall = (null_side, ok_side) if ins.op == BPF_JEQ else (ok_side, null_side)
        return [(i + 1, fall), (target, taken)]

    def _alu(self, ins: Insn, st: _State) -> Val:
        op = ins.op
        dst = st.reg(ins.dst)
        if op == BPF_MOV:
            if ins.source == BPF_X:
                src = st.reg(ins.src)
                if ins.cls == BPF_ALU64 and ins.off == 0:
                    return src
                return SCALAR
            return SCALAR
        if ins.cls == BPF_ALU64 and op in (BPF_ADD, BPF_SUB) and any(_is_pointer(p) for p in dst):
            if ins.source == BPF_K:
                return _add_const(dst, ins.imm if op == BPF_ADD else -ins.imm)
            src = st.reg(ins.src)
            if any(_is_pointer(p) for p in src):
                return SCALAR  # pointer - pointer
            return _add_const(dst, None)
        if ins.cls == BPF_ALU64 and op == BPF_ADD and ins.source == BPF_X:
            src = st.reg(ins.src)
            if any(_is_pointer(p) for p in src):
                return _add_const(src, None)
        return SCALAR

    # --- pass 5: per-instruction checks on the settled states ----------------------

    # --- pass 4b: stack bytes read before they are written -------------------------

    #: helpers that fill their destination (r1, r2 bytes) on every return
    _FILLS_R1 = frozenset(contract.HELPER_IDS[n] for n in (
        "probe_read_user", "probe_read_user_str", "probe_read", "probe_read_str",
        "probe_read_kernel", "probe_read_kernel_str"))

    def _fp_off(self, st: _State, reg: int) -> int | None:
        """The stack offset REG holds on every path, or None."""
        v = st.reg(reg)
        if len(v) == 1:
            (p,) = v
            if p[0] == "fp" and p[1] is not None:
                return int(p[1])
        return None

    def _const_before(self, i: int, reg: int) -> int | None:
        """REG's value at insn I if its last definition in I's straight-line run
        is a move of a constant (how clang passes a buffer's size), else None."""
        targets = self.jump_targets
        j = i - 1
        while j >= 0 and i - j <= 16:
            ins = self.insns[j]
            if ins.cls in (BPF_JMP, BPF_JMP32):
                return None
            if ins.cls in (BPF_ALU, BPF_ALU64) and ins.dst == reg:
                if ins.op == BPF_MOV and ins.source == BPF_K and ins.off == 0:
                    return ins.imm if ins.cls == BPF_ALU64 else ins.imm & 0xFFFFFFFF
                return None
            if ins.cls in (BPF_LDX, BPF_LD) and ins.dst == reg:
                return None
            if j in targets:
                return None
            j -= 1
        return None

    def check_stack_init(self) -> None:
        """Must-analysis of written stack bytes, per subprogram: a read of bytes not
        written on every path reaches the kernel's "invalid read from stack" (refused
        without CAP_PERFMON; with it, stale data).  Writes through a pointer whose
        stack offset is not known on every path count as no write (conservative)."""
        base = contract.MAX_BPF_STACK
        self.jump_targets = {t for j, ins in enumerate(self.insns)
                             if (t := _jump_target(j, ins)) is not None}

        def bits(off: int, size: int) -> int:
            lo = max(off + base, 0)
            hi = min(off + base + size, base)
            return ((1 << (hi - lo)) - 1) << lo if hi > lo else 0

        found: dict[int, tuple[int, int]] = {}

        def need(i: int, off: int | None, size: int, mask: int) -> None:
            if off is not None and size > 0 and (mask & bits(off, size)) != bits(off, size):
                found.setdefault(i, (off, size))

        for start in self.subprog_starts:
            sub = self._subprog_of(start)
            masks: dict[int, int] = {start: 0}
            work = [start]
            while work:
                i = work.pop()
                mask = masks[i]
                ins = self.insns[i]
                st = self.states.get(i)
                if st is None:
                    continue
                if ins.cls == BPF_LDX and ins.mode in (BPF_MEM, BPF_MEMSX):
                    need(i, self._mem_off(st, ins.src, ins.off), SIZE_BYTES[ins.size], mask)
                elif ins.cls in (BPF_ST, BPF_STX):
                    off = self._mem_off(st, ins.dst, ins.off)
                    if ins.mode == BPF_ATOMIC:
                        need(i, off, SIZE_BYTES[ins.size], mask)
                    elif off is not None:
                        mask |= bits(off, SIZE_BYTES[ins.size])
                elif ins.is_call() and ins.src == 0:
                    mask = self._helper_stack(i, ins.imm, st, mask, need, bits)
                outs = self.succ.get(i, [])
                if ins.is_pseudo_call() or (ins.is_ld_imm64() and ins.src == BPF_PSEUDO_FUNC):
                    outs = [i + 2 if ins.is_ld_imm64() else i + 1]
                for t in outs:
                    if self._subprog_of(t) != sub:
                        continue
                    old = masks.get(t)
                    new = mask if old is None else old & mask
                    if new != old:
                        masks[t] = new
                        work.append(t)
        for i, (off, size) in sorted(found.items()):
            if self.unprivileged:
                self.problem(
                    i,
                    "uninit-stack",
                    f"invalid read from stack off {off} size {size}: bytes not written on "
                    f"every path",
                    "initialise the variable first (e.g. `= {0}`), or load with CAP_PERFMON",
                )
            else:
                self.notes.append(
                    f"insn {i}: reads stack off {off} size {size}, not written on every path: "
                    "the kernel refuses this below the tracing tier (a loader without "
                    "CAP_BPF and CAP_PERFMON, or when the LSM denies helpers); at the "
                    "tracing tier the read sees stale data (the emulator stops there)"
                )

    def _mem_off(self, st: _State, reg: int, insn_off: int) -> int | None:
        off = self._fp_off(st, reg)
        return None if off is None else off + insn_off

    def _helper_stack(self, i: int, func_id: int, st: _State, mask: int,
                      need: Any, bits: Any) -> int:
        name = contract.HELPER_NAMES.get(func_id, "")
        if func_id in self._FILLS_R1:
            off, size = self._fp_off(st, 1), self._const_before(i, 2)
            if off is not None and size is not None:
                mask |= bits(off, size)
            return mask
        if name in ("map_lookup_elem", "map_update_elem", "map_delete_elem"):
            maps = [p[1] for p in st.reg(1) if p[0] == "map"]
            spec = self.obj.maps.get(maps[0]) if len(maps) == 1 else None
            if spec is not None:
                need(i, self._fp_off(st, 2), spec.key_size, mask)
                if name == "map_update_elem":
                    need(i, self._fp_off(st, 3), spec.value_size, mask)
        return mask

    def _ctx_field(self, i: int, ins: Insn) -> str:
        st = self.states.get(i)
        if st is None:
            return ""
        base = st.reg(ins.src)
        if len(base) == 1:
            (p,) = base
            if p[0] == "ctx" and p[1] is not None:
                return contract.seccomp_data_field(p[1] + ins.off, SIZE_BYTES[ins.size])
        return ""

    def check_arg_widths(self) -> None:
        """The arg-width trap: args[] are whole 64-bit registers, and a 32-bit
        int argument such as openat's dirfd usually arrives zero-extended
        (AT_FDCWD is 0x00000000ffffff9c).  A 64-bit comparison of a whole
        argument with a negative constant compares against the sign-extended
        0xffffffffffffff9c and does not match it."""
        origins = _register_origins(self.insns, self._ctx_field)
        for i, ins in enumerate(self.insns):
            if ins.cls != BPF_JMP or not _is_cond_jump(ins) or ins.source != BPF_K:
                continue
            field_ = origins.get(i, {}).get(ins.dst, "")
            if not field_.startswith("args[") or ins.imm >= 0:
                continue
            line = self.line_for(i)
            at = f" ({line.file.rsplit('/', 1)[-1]}:{line.line})" if line else ""
            self.warnings.append(
                f"insn {i}{at}: compares all 64 bits of {field_} with {ins.imm} "
                f"({ins.imm & 0xFFFFFFFFFFFFFFFF:#x}); a 32-bit int argument usually arrives "
                f"as {ins.imm & 0xFFFFFFFF:#010x} in a 64-bit register and will not match: "
                f"compare (int){field_} (or (__u32)) for int arguments"
            )

    def _map_refs(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in sorted(self.prog.relocs, key=lambda r: r.insn):
            if r.map in out or r.map.startswith(".rodata.init."):
                continue
            line = self.line_for(r.insn)
            out[r.map] = {
                "insn": r.insn,
                "symbol": r.symbol or None,
                "source": None if line is None else {
                    "file": line.file, "line": line.line, "text": line.text},
            }
        return out

    @staticmethod
    def _regs_read(ins: Insn) -> list[int]:
        """The registers instruction INS reads (helper arguments aside)."""
        cls = ins.cls
        if cls in (BPF_ALU, BPF_ALU64):
            regs = [] if ins.op == BPF_MOV else [ins.dst]
            if ins.source == BPF_X and ins.op not in (BPF_NEG, BPF_END):
                regs.append(ins.src)
            return regs
        if cls == BPF_LDX:
            return [ins.src]
        if cls == BPF_ST:
            return [ins.dst]
        if cls == BPF_STX:
            return [ins.dst, ins.src] + ([0] if ins.mode == BPF_ATOMIC and
                                         ins.imm == BPF_CMPXCHG else [])
        if _is_cond_jump(ins) and ins.op != BPF_JCOND:
            return [ins.dst] + ([ins.src] if ins.source == BPF_X else [])
        return []

    def check_accesses(self) -> None:
        for i in sorted(self.states):
            st = self.states[i]
            ins = self.insns[i]
            cls = ins.cls
            for r in self._regs_read(ins):
                if ("uninit",) in st.reg(r) and 0 <= r < 10:
                    self.problem(
                        i,
                        "uninit-reg",
                        f"R{r} !read_ok: the register may be read before it is written "
                        f"(helper calls leave R1-R5 unset)",
                        f"set R{r} first on every path",
                    )
            if cls == BPF_LDX:
                self._check_mem(i, ins, st.reg(ins.src), ins.src, write=False)
            elif cls in (BPF_ST, BPF_STX):
                self._check_mem(i, ins, st.reg(ins.dst), ins.dst, write=True)
                if cls == BPF_STX and self.unprivileged:
                    val = st.reg(ins.src)
                    base = st.reg(ins.dst)
                    if any(_is_pointer(p) for p in val) and any(
                        p[0] in ("mapval", "mvn") for p in base
                    ):
                        self.problem(
                            i,
                            "ptr-leak",
                            f"R{ins.src} leaks addr into map",
                            "store values, not pointers, in maps (or load with CAP_BPF)",
                        )
            elif cls in (BPF_ALU, BPF_ALU64):
                self._check_ptr_alu(i, ins, st)
            elif ins.is_exit() and self._subprog_of(i) == 0:
                r0 = st.reg(0)
                if ("uninit",) in r0:
                    self.problem(
                        i,
                        "r0-uninit",
                        "R0 !read_ok: the program may exit without setting a return value "
                        "(on some path)",
                        "return a SECCOMP_RET_* value on every path",
                    )
                elif any(_is_pointer(p) for p in r0):
                    if self.unprivileged:
                        self.problem(
                            i,
                            "ptr-return",
                            "R0 leaks addr as return value",
                            "return a SECCOMP_RET_* value, not a pointer",
                        )
                    else:
                        self.notes.append(
                            f"insn {i}: the program may return a pointer; the kernel allows "
                            "that only with CAP_PERFMON, and the action is then meaningless"
                        )
            elif _is_cond_jump(ins) and ins.source == BPF_X and self.unprivileged:
                if any(_is_pointer(p) for p in st.reg(ins.src)):
                    self.problem(
                        i,
                        "ptr-compare",
                        f"R{ins.src} pointer comparison prohibited",
                        "compare values, not pointers (or load with CAP_BPF)",
                    )
            elif ins.is_call():
                self._check_call_args(i, ins, st)

    def _check_call_args(self, i: int, ins: Insn, st: _State) -> None:
        if ins.is_helper_call() and ins.imm in (1, 2, 3):
            r1 = st.reg(1)
            if not any(p[0] == "map" for p in r1) and ("top",) not in r1:
                name = contract.helper_name(ins.imm)
                self.problem(
                    i,
                    "map-arg",
                    f"R1 of bpf_{name} is not a map",
                    "pass &map_name as the first argument",
                )

    def _check_ptr_alu(self, i: int, ins: Insn, st: _State) -> None:
        if ins.op == BPF_MOV:
            if ins.source == BPF_X and (ins.cls == BPF_ALU or ins.off):
                if any(_is_pointer(p) for p in st.reg(ins.src)) and self.unprivileged:
                    self.problem(i, "ptr-alu", f"R{ins.src} partial copy of pointer",
                                 "copy pointers with 64-bit moves")  # fmt: skip
            return
        dst = st.reg(ins.dst)
        ptrs = [p for p in dst if _is_pointer(p)]
        if not ptrs:
            return
        kinds = sorted({p[0] for p in ptrs})
        desc = "/".join(_KIND_DESC.get(k, k) for k in kinds)
        if ins.cls == BPF_ALU:
            self.problem(i, "ptr-alu", f"R{ins.dst} 32-bit pointer arithmetic prohibited",
                         "do pointer arithmetic in 64 bits")  # fmt: skip
        elif ins.op not in (BPF_ADD, BPF_SUB):
            name = ALU_NAMES.get(ins.op, hex(ins.op))
            if ins.op in (BPF_AND, BPF_OR, BPF_XOR, BPF_LSH, BPF_RSH, BPF_ARSH, BPF_MUL,
                          BPF_DIV, BPF_MOD, BPF_NEG, BPF_END):  # fmt: skip
                self.problem(
                    i,
                    "ptr-alu",
                    f"R{ins.dst} bitwise operator {name} on pointer ({desc}) prohibited",
                    "only add or subtract constants to pointers",
                )
        elif ins.source == BPF_X and ins.op == BPF_ADD and \
                any(_is_pointer(p) for p in st.reg(ins.src)):
            self.problem(i, "ptr-alu", f"R{ins.dst} pointer += pointer prohibited",
                         "add a scalar offset to a pointer, never another pointer")
        elif any(p[0] in ("mvn", "map", "func") for p in ptrs):
            self.problem(
                i,
                "ptr-alu",
                f"R{ins.dst} pointer arithmetic on {desc} prohibited"
                + (", null-check it first" if any(p[0] == "mvn" for p in ptrs) else ""),
                "check the lookup result for NULL before using it",
            )

    def _check_mem(self, i: int, ins: Insn, base: Val, reg: int, write: bool) -> None:
        size = SIZE_BYTES[ins.size]
        for p in sorted(base, key=repr):
            kind = p[0]
            if kind == "ctx":
                self._check_ctx(i, ins, p[1], reg, size, write)
            elif kind in ("fp", "fpc") and p[1] is not None:
                off = p[1] + ins.off
                if off < -contract.MAX_BPF_STACK or off + size > 0:
                    self.problem(
                        i,
                        "stack",
                        f"invalid {'write' if write else 'read'} to stack R{reg} off={off} "
                        f"size={size}",
                        f"keep locals within the {contract.MAX_BPF_STACK}-byte stack",
                    )
                elif kind == "fp":
                    sub = self._subprog_of(i)
                    self.stack_depth[sub] = max(self.stack_depth.get(sub, 0), -off)
            elif kind == "mvn":
                self.problem(
                    i,
                    "null",
                    f"R{reg} invalid mem access 'map_value_or_null': the result of "
                    f"bpf_map_lookup_elem({p[1]}) may be NULL",
                    "test the pointer for NULL before using it",
                )
            elif kind == "map":
                self.problem(
                    i,
                    "map-ptr",
                    f"R{reg} points to map {p[1]!r} itself, not to a value",
                    "use bpf_map_lookup_elem() to get a value pointer",
                )
            elif kind == "mapval" and p[2] is not None:
                spec = self.obj.maps.get(p[1])
                off = p[2] + ins.off
                if spec is not None and (off < 0 or off + size > spec.value_size):
                    self.problem(
                        i,
                        "map-range",
                        f"invalid access to map value, value_size={spec.value_size} "
                        f"off={off} size={size} ({p[1]})",
                        "stay inside the value",
                    )
                elif spec is not None and write and spec.is_global and spec.flags & (1 << 7):
                    self.problem(
                        i,
                        "rodata-write",
                        f"write into map value is not allowed ({p[1]} is read-only)",
                        "do not write to const globals",
                    )
            elif kind == "top" and write:
                self.notes.append(
                    f"insn {i}: cannot tell where R{reg} points; if it can be the context "
                    "pointer the kernel will refuse this store"
                )

    def _check_ctx(
        self, i: int, ins: Insn, reg_off: int | None, reg: int, size: int, write: bool
    ) -> None:
        if write:
            field = ""
            if reg_off is not None:
                field = f" ({contract.seccomp_data_field(reg_off + ins.off, size)})"
            self.problem(
                i,
                "ctx-store",
                f"store to the context{field}: struct seccomp_data is read-only",
                "copy the field into a local variable and change that",
            )
            return
        if reg_off is None:
            self.problem(
                i,
                "ctx-var",
                f"variable ctx access through R{reg} disallowed",
                "read fields with constant offsets (ctx->args[2], not ctx->args[i])",
            )
            return
        if reg_off != 0:
            self.problem(
                i,
                "ctx-modified",
                f"dereference of modified ctx ptr R{reg} off={reg_off} disallowed",
                "read the field through the original context pointer (ctx->field)",
            )
            return
        off = ins.off
        if ins.mode == BPF_MEMSX:
            self.notes.append(
                f"insn {i}: sign-extending context load; the contract allows plain loads"
            )
        if off < 0 or off + size > contract.SECCOMP_DATA_SIZE:
            self.problem(
                i,
                "ctx-range",
                f"invalid bpf_context access off={off} size={size}: outside the "
                f"{contract.SECCOMP_DATA_SIZE}-byte struct seccomp_data",
                "read only nr, arch, instruction_pointer or args[0..5]",
            )
        elif off % size:
            self.problem(
                i,
                "ctx-align",
                f"misaligned context access off={off} size={size}",
                f"read {size}-byte values at offsets that are a multiple of {size}",
            )

    # --- pass 6: stack and call depth --------------------------------------------------

    def check_frames(self) -> None:
        calls: dict[int, set[int]] = {s: set() for s in self.subprog_starts}
        for i, ins in enumerate(self.insns):
            if i in self.second_slot or not ins.is_pseudo_call():
                continue
            calls[self._subprog_of(i)].add(i + ins.imm + 1)

        def frame(s: int) -> int:
            d = self.stack_depth.get(s, 0)
            return (max(d, 1) + 31) // 32 * 32

        worst = 0

        def walk(s: int, path: list[int], depth: int) -> None:
            nonlocal worst
            if s in path:
                names = " -> ".join(self.prog.subprogs.get(x, str(x)) for x in path + [s])
                self.problem(
                    s, "recursion", f"recursive call: {names}", "BPF programs cannot recurse"
                )
                return
            if len(path) + 1 > MAX_CALL_FRAMES:
                self.problem(
                    s,
                    "call-depth",
                    f"the call stack of {len(path) + 1} frames is too deep",
                    f"nest at most {MAX_CALL_FRAMES} calls",
                )
                return
            depth += frame(s)
            worst = max(worst, depth)
            if depth > contract.MAX_BPF_STACK:
                self.problem(
                    s,
                    "stack",
                    f"combined stack size of {len(path) + 1} calls is {depth}. Too large",
                    "use less stack (move big buffers into a map or a global)",
                )
                return
            for t in sorted(calls.get(s, ())):
                walk(t, path + [s], depth)

        walk(0, [], 0)
        self.total_stack = self.stack_depth.get(0, 0)

    # --- driver ------------------------------------------------------------------------

    def run(self) -> Report:
        n = self.n
        if n == 0:
            self.problem(None, "empty", "the program has no instructions", "")
        limit_priv = contract.BPF_COMPLEXITY_LIMIT_INSNS
        limit_unpriv = contract.BPF_MAXINSNS
        if n > limit_priv:
            self.problem(
                None,
                "too-big",
                f"program is {n} instructions; the kernel's limit is {limit_priv}",
                "split the filter or use a map instead of long switch chains",
            )
        elif n > limit_unpriv:
            self.cap_bpf(f"{n} instructions (more than {limit_unpriv})")
            if self.unprivileged:
                self.problem(
                    None,
                    "too-big",
                    f"program is {n} instructions; without CAP_BPF the limit is {limit_unpriv}",
                    "use a hash map for long syscall lists, or load with CAP_BPF",
                )
        if n:
            encoding_ok = self.check_encoding()
            if encoding_ok:
                self.check_flow()
            self.check_calls_and_maps()
            if encoding_ok and self.cfg_ok:
                self.dataflow()
                self.check_accesses()
                self.check_stack_init()
                self.check_arg_widths()
                self.check_frames()
            else:
                self.notes.append(
                    "structural problems stopped the data-flow checks (context, stack, NULL)"
                )
        helpers = sorted(self.helpers.values(), key=lambda h: h.id)
        uses_maps = bool(self.prog.relocs)
        load_tier = Tier.NONE
        if uses_maps or helpers:
            load_tier = Tier.EXTENDED
        if any(h.tier == Tier.TRACING for h in helpers):
            load_tier = Tier.TRACING
        tier = load_tier
        if any(h.id in contract.USER_READ_HELPERS for h in helpers):
            tier = max(tier, Tier.PTRACE)
            self.notes.append(
                "probe_read_user(_str) loads at EXTENDED, but reads of non-dumpable tasks "
                "return -EPERM unless the loader has CAP_SYS_PTRACE; user memory can change "
                "after the check (TOCTOU)"
            )
        if self.obj.license is None:
            self.notes.append('no "license" section')
        return Report(
            path=self.obj.path,
            program=self.prog.name,
            section=self.prog.section,
            insn_count=n,
            helpers=helpers,
            maps=self.maps_used,
            map_refs=self._map_refs(),
            tier=tier,
            load_tier=load_tier,
            needs_cap_bpf=bool(self.cap_bpf_reasons),
            cap_bpf_reasons=self.cap_bpf_reasons,
            problems=sorted(
                self.problems, key=lambda p: (-1 if p.insn is None else p.insn, p.code)
            ),
            notes=list(dict.fromkeys(self.notes)),
            warnings=list(dict.fromkeys(self.warnings)),
            unprivileged=self.unprivileged,
            license=self.obj.license,
            stack_depth=self.stack_depth.get(0, 0),
        )


_KIND_DESC = {
    "ctx": "ctx",
    "fp": "fp",
    "fpc": "fp",
    "map": "map_ptr",
    "mapval": "map_value",
    "mvn": "map_value_or_null",
    "func": "func",
}


def _refine(v: Val, ids: set[int], not_null: bool) -> Val:
    out = set()
    for p in v:
        if p[0] == "mvn" and p[2] in ids:
            out.add(("mapval", p[1], 0) if not_null else ("scalar",))
        else:
            out.add(p)
    return frozenset(out)


def check(obj: BpfObject, program: str | None = None, *, unprivileged: bool = False) -> Report:
    """Check PROGRAM of OBJ against the kernel's rules for seccomp programs.

    With ``unprivileged=True``, also apply the rules for a loader without
    CAP_BPF (no loops, no subprograms, 4096 instructions, no tracing helpers,
    no pointer leaks).  ObjectError if the program is absent or ambiguous.
    """
    prog = obj.program(program)
    return _Checker(obj, prog, unprivileged).run()


# --- disassembler ---------------------------------------------------------------------

_ALU_SYM = {
    BPF_ADD: "+=", BPF_SUB: "-=", BPF_MUL: "*=", BPF_DIV: "/=", BPF_OR: "|=",
    BPF_AND: "&=", BPF_LSH: "<<=", BPF_RSH: ">>=", BPF_MOD: "%=", BPF_XOR: "^=",
    BPF_MOV: "=", BPF_ARSH: "s>>=",
}  # fmt: skip
_JMP_SYM = {
    BPF_JEQ: "==", BPF_JNE: "!=", BPF_JGT: ">", BPF_JGE: ">=", BPF_JLT: "<",
    BPF_JLE: "<=", BPF_JSGT: "s>", BPF_JSGE: "s>=", BPF_JSLT: "s<", BPF_JSLE: "s<=",
    BPF_JSET: "&",
}  # fmt: skip
_SIZE_NAME = {0x00: "u32", 0x08: "u16", 0x10: "u8", 0x18: "u64"}
_ATOMIC_NAME = {BPF_ADD: "add", BPF_AND: "and", BPF_OR: "or", BPF_XOR: "xor"}


def _imm(v: int, bits32: bool = False) -> str:
    if -256 < v < 256:
        return str(v)
    if bits32 and v < 0:
        v &= 0xFFFFFFFF
    return f"-{-v:#x}" if v < 0 else f"{v:#x}"


def _mem(reg: int, off: int, size: int, signed: bool = False) -> str:
    t = _SIZE_NAME[size]
    if signed:
        t = "s" + t[1:]
    sign = "-" if off < 0 else "+"
    return f"*({t} *)(r{reg} {sign} {abs(off)})"


class _Disassembler:
    def __init__(self, obj: BpfObject, prog: Program):
        self.obj = obj
        self.prog = prog
        self.relocs = {r.insn: r for r in prog.relocs}
        checker = _Checker(obj, prog, unprivileged=False)
        self.states: dict[int, _State] = {}
        try:
            if checker.check_encoding():
                checker.check_flow()
            if checker.cfg_ok:
                checker.dataflow()
                self.states = checker.states
        except Exception:  # the listing must never fail because of the analysis
            self.states = {}
        self.origins = self._field_origins()
        self.arch = self._guess_arch()

    # --- seccomp terms: which registers hold nr or arch, what r0 means -----------

    def _field_origins(self) -> dict[int, dict[int, str]]:
        return _register_origins(
            self.prog.insns,
            lambda i, ins: self.ctx_note(i, ins.src, ins.off, SIZE_BYTES[ins.size]))

    def _guess_arch(self) -> str | None:
        """The syscall table to name numbers with: the arch the program compares
        ctx->arch against first (None: unknown, numbers stay numbers)."""
        by_value = {v: k for k, v in contract.AUDIT_ARCH.items()}
        for i, ins in enumerate(self.prog.insns):
            if _is_cond_jump(ins) and ins.source == BPF_K and \
                    self.origins.get(i, {}).get(ins.dst) == "arch":
                name = by_value.get(ins.imm & 0xFFFFFFFF)
                if name in ("x86_64", "aarch64"):
                    return name
        return None

    def seccomp_note(self, i: int, ins: Insn) -> str:
        """'getppid' for a comparison of nr, 'AUDIT_ARCH_X86_64' for one of arch,
        'ERRNO(EPERM)' for an action put in r0."""
        if _is_cond_jump(ins) and ins.source == BPF_K:
            what = self.origins.get(i, {}).get(ins.dst)
            value = ins.imm & 0xFFFFFFFF
            if what == "arch":
                name = {v: k for k, v in contract.AUDIT_ARCH.items()}.get(value)
                return f"AUDIT_ARCH_{name.upper()}" if name else ""
            if what == "nr" and self.arch and ins.op in (BPF_JEQ, BPF_JNE):
                from .syscalls import name as syscall_name

                return syscall_name(value, self.arch) or ""
            return ""
        if ins.cls in (BPF_ALU, BPF_ALU64) and ins.op == BPF_MOV and ins.source == BPF_K \
                and ins.dst == 0:
            return _action_words(ins.imm & 0xFFFFFFFF)
        return ""

    def label(self, t: int) -> str:
        name = self.prog.subprogs.get(t)
        return f"<{name}>" if name else f"<{t}>"

    def ctx_note(self, i: int, reg: int, off: int, size: int) -> str:
        st = self.states.get(i)
        if st is None:
            return ""
        base = st.reg(reg)
        offs = {p[1] for p in base if p[0] == "ctx"}
        if len(offs) == 1 and None not in offs and len(base) == 1:
            (roff,) = offs
            return contract.seccomp_data_field(roff + off, size)
        return ""

    def insn(self, i: int, ins: Insn) -> str:
        cls, op = ins.cls, ins.op
        r = "r" if cls in (BPF_ALU64, BPF_JMP, BPF_LDX, BPF_STX, BPF_ST, BPF_LD) else "w"
        if cls in (BPF_ALU, BPF_ALU64):
            d = f"{r}{ins.dst}"
            if op == BPF_NEG:
                return f"{d} = -{d}"
            if op == BPF_END:
                if cls == BPF_ALU64:
                    return f"r{ins.dst} = bswap{ins.imm} r{ins.dst}"
                kind = "be" if ins.source == BPF_X else "le"
                return f"r{ins.dst} = {kind}{ins.imm} r{ins.dst}"
            sym = _ALU_SYM.get(op)
            if sym is None:
                return f".insn {ins.code:#04x}  ; unknown ALU operation"
            if ins.off == 1 and op in (BPF_DIV, BPF_MOD):
                sym = "s" + sym
            if ins.source == BPF_X:
                if op == BPF_MOV and ins.off in (8, 16, 32):
                    return f"{d} = (s{ins.off}){r}{ins.src}"
                return f"{d} {sym} {r}{ins.src}"
            return f"{d} {sym} {_imm(ins.imm, cls == BPF_ALU)}"
        if cls == BPF_LDX:
            text = f"r{ins.dst} = {_mem(ins.src, ins.off, ins.size, ins.mode == BPF_MEMSX)}"
            note = self.ctx_note(i, ins.src, ins.off, SIZE_BYTES[ins.size])
            return f"{text:<32}; {note}" if note else text
        if cls == BPF_ST:
            return f"{_mem(ins.dst, ins.off, ins.size)} = {_imm(ins.imm)}"
        if cls == BPF_STX:
            target = _mem(ins.dst, ins.off, ins.size)
            if ins.mode == BPF_ATOMIC:
                w = "r" if ins.size == BPF_DW else "w"
                ptr = target[1:]  # "(u64 *)(r1 + 0)"
                base = ins.imm & ~BPF_FETCH
                if ins.imm == BPF_XCHG:
                    return (
                        f"{w}{ins.src} = xchg{'_64' if w == 'r' else '32_32'}({ptr}, {w}{ins.src})"
                    )
                if ins.imm == BPF_CMPXCHG:
                    return (
                        f"{w}0 = cmpxchg{'_64' if w == 'r' else '32_32'}({ptr}, {w}0, {w}{ins.src})"
                    )
                name = _ATOMIC_NAME.get(base, f"op{base:#x}")
                if ins.imm & BPF_FETCH:
                    return f"{w}{ins.src} = atomic_fetch_{name}({ptr}, {w}{ins.src})"
                sym = {"add": "+=", "and": "&=", "or": "|=", "xor": "^="}.get(name, "?=")
                return f"lock {target} {sym} {w}{ins.src}"
            text = f"{target} = r{ins.src}"
            note = self.ctx_note(i, ins.dst, ins.off, SIZE_BYTES[ins.size])
            return f"{text:<32}; {note} (context store!)" if note else text
        if cls == BPF_LD:
            if ins.is_ld_imm64():
                rel = self.relocs.get(i)
                if rel is not None and rel.kind == "map":
                    return f"r{ins.dst} = map[{rel.map}]"
                if rel is not None:
                    sym = f" <{rel.symbol}>" if rel.symbol and rel.symbol != rel.map else ""
                    return f"r{ins.dst} = &{rel.map}+{rel.offset}{sym}"
                if ins.src == BPF_PSEUDO_FUNC:
                    t = i + ins.imm + 1
                    return f"r{ins.dst} = &func {self.label(t)}"
                hi = self.prog.insns[i + 1] if i + 1 < len(self.prog.insns) else None
                value = (ins.imm & 0xFFFFFFFF) | ((hi.imm & 0xFFFFFFFF) << 32 if hi else 0)
                return f"r{ins.dst} = {_imm(value)} ll"
            mode = "abs" if ins.mode == 0x20 else "ind"
            return f"r0 = ld_{mode}_{_SIZE_NAME[ins.size]}(...)  ; socket-filter instruction"
        # jumps
        if op == BPF_EXIT:
            return "exit"
        if op == BPF_CALL:
            if ins.src == BPF_PSEUDO_CALL:
                t = i + ins.imm + 1
                return f"call {ins.imm:+d} {self.label(t)}"
            if ins.src == BPF_PSEUDO_KFUNC_CALL:
                return f"call kfunc#{ins.imm}"
            name = contract.HELPER_NAMES.get(ins.imm)
            return f"call bpf_{name}#{ins.imm}" if name else f"call unknown#{ins.imm}"
        t = _jump_target(i, ins)
        if op == BPF_JA:
            if cls == BPF_JMP32:
                return f"gotol {ins.imm:+d} {self.label(t)}"  # type: ignore[arg-type]
            return f"goto {ins.off:+d} {self.label(t)}"  # type: ignore[arg-type]
        sym = _JMP_SYM.get(op)
        if sym is None:
            return f".insn {ins.code:#04x}  ; unknown jump"
        rhs = f"{r}{ins.src}" if ins.source == BPF_X else _imm(ins.imm, cls == BPF_JMP32)
        return f"if {r}{ins.dst} {sym} {rhs} goto {ins.off:+d} {self.label(t)}"  # type: ignore[arg-type]

    def render(self, show_bytes: bool = False) -> str:
        prog = self.prog
        out = []
        lic = self.obj.license
        out.append(
            f"; {self.obj.path}: program {prog.name} (section {prog.section}), "
            f"{len(prog.insns)} instructions, license {lic!r}"
        )
        used = []
        for r in prog.relocs:
            if r.map not in used:
                used.append(r.map)
        for name in used:
            m = self.obj.maps.get(name)
            if m is None:
                continue
            if m.is_global:
                out.append(f"; global {name}: {m.value_size} bytes")
            else:
                tname = contract.MAP_TYPES.get(m.type, f"type {m.type}")
                out.append(
                    f"; map {name}: {tname}, key {m.key_size} B, value {m.value_size} B, "
                    f"max_entries {m.max_entries}"
                )
        last_line: SourceLine | None = None
        width = len(str(max(len(prog.insns) - 1, 0)))
        i = 0
        insns = prog.insns
        while i < len(insns):
            ins = insns[i]
            if i in prog.subprogs:
                out.append("")
                out.append(f"{prog.subprogs[i]}:")
                last_line = None
            line = prog.lines.get(i)
            if line is not None and (
                last_line is None or (line.file, line.line) != (last_line.file, last_line.line)
            ):
                base = line.file.rsplit("/", 1)[-1]
                text = line.text or ""
                out.append(f"; {text}" + (f"  [{base}:{line.line}]" if base else ""))
                last_line = line
            raw = ""
            nslots = 2 if ins.is_ld_imm64() and i + 1 < len(insns) else 1
            if show_bytes:
                raw = " ".join(f"{b:02x}" for b in ins.encode()) + "  "
                if nslots == 2:
                    raw = raw + " ".join(f"{b:02x}" for b in insns[i + 1].encode()) + "  "
                else:
                    raw = raw + " " * 25
            out.append(f"{i:>{width}}: {raw}{self.text(i, ins)}")
            i += nslots
        return "\n".join(out) + "\n"

    def text(self, i: int, ins: Insn) -> str:
        text = self.insn(i, ins)
        note = self.seccomp_note(i, ins)
        if note and ";" not in text:
            return f"{text:<{max(32, len(text) + 1)}}; {note}"
        return text

    def rows(self) -> list[dict[str, Any]]:
        """The listing as data, for --json."""
        out = []
        i = 0
        insns = self.prog.insns
        while i < len(insns):
            ins = insns[i]
            line = self.prog.lines.get(i)
            out.append({
                "insn": i,
                "text": self.insn(i, ins),
                "note": self.seccomp_note(i, ins) or None,
                "bytes": ins.encode().hex(),
                "subprogram": self.prog.subprogs.get(i),
                "source": None if line is None else {
                    "file": line.file, "line": line.line, "text": line.text},
            })
            i += 2 if ins.is_ld_imm64() and i + 1 < len(insns) else 1
        return out


def _register_origins(insns: list[Insn], field_at: Any) -> dict[int, dict[int, str]]:
    """Per instruction, the registers that hold a whole field of struct
    seccomp_data on every path ("nr", "arch", "args[2]"): loaded from the
    context and only copied since.  FIELD_AT(i, ins) names what the load at I
    reads ("" if not the context)."""
    n = len(insns)
    at: dict[int, dict[int, str]] = {0: {}}
    work = [0]
    seen = 0
    while work and seen < 20 * n + 100:
        seen += 1
        i = work.pop()
        if not 0 <= i < n:
            continue
        regs = dict(at[i])
        ins = insns[i]
        outs: list[int] = []
        nxt = i + 2 if ins.is_ld_imm64() else i + 1
        if ins.cls == BPF_LDX:
            regs.pop(ins.dst, None)
            note = field_at(i, ins)
            if note in ("nr", "arch") or (note.startswith("args[") and note.endswith("]")):
                regs[ins.dst] = note
            outs = [nxt]
        elif ins.cls in (BPF_ALU, BPF_ALU64):
            src = regs.get(ins.src) if ins.source == BPF_X else None
            regs.pop(ins.dst, None)
            # a 32-bit move keeps nr and arch (32-bit fields) but not a whole argument
            if ins.op == BPF_MOV and ins.source == BPF_X and ins.off == 0 and src and \
                    (ins.cls == BPF_ALU64 or not src.startswith("args[")):
                regs[ins.dst] = src
            outs = [nxt]
        elif ins.cls in (BPF_JMP, BPF_JMP32):
            if ins.is_exit():
                outs = []
            elif ins.is_call():
                for r in range(6):
                    regs.pop(r, None)
                outs = [nxt]
            else:
                t = _jump_target(i, ins)
                outs = [t] if ins.op == BPF_JA else [nxt, t]  # type: ignore[list-item]
        else:
            if ins.cls == BPF_LD:
                regs.pop(ins.dst, None)
            outs = [nxt]
        for t in outs:
            if t is None or not 0 <= t < n:
                continue
            old = at.get(t)
            new = regs if old is None else {k: v for k, v in old.items() if regs.get(k) == v}
            if new != old:
                at[t] = new
                work.append(t)
    return at


def _action_words(value: int) -> str:
    """'ERRNO(EPERM)', 'KILL_PROCESS', 'ALLOW' for a seccomp return value, '' if
    VALUE is no known action."""
    import errno as _errno

    full = value & 0xFFFF0000
    try:
        act = contract.Action(full)
    except ValueError:
        return ""
    if act == contract.Action.KILL_THREAD and value != 0:
        return ""
    data = value & 0xFFFF
    if act == contract.Action.ERRNO:
        return f"ERRNO({_errno.errorcode.get(min(data, contract.MAX_ERRNO), data)})"
    if act in contract.ACTIONS_WITH_DATA:
        return f"{act.name}({data})"
    return act.name if data == 0 else f"{act.name} (data {data})"


def disasm(obj: BpfObject, program: str | None = None, *, show_bytes: bool = False) -> str:
    """A readable listing of PROGRAM (every program if None and there are
    several): helper, map and context field names, syscall and action names,
    source lines."""
    if program is None and len(obj.programs) > 1:
        return "\n".join(_Disassembler(obj, p).render(show_bytes) for p in obj.programs)
    return _Disassembler(obj, obj.program(program)).render(show_bytes)


def disasm_data(obj: BpfObject, program: str | None = None) -> list[dict[str, Any]]:
    """The listing of PROGRAM (every program if None) as JSON-ready data."""
    progs = obj.programs if program is None else [obj.program(program)]
    return [{"path": obj.path, "program": p.name, "section": p.section,
             "insns": _Disassembler(obj, p).rows()} for p in progs]
