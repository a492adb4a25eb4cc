"""Which syscalls the kernel's action cache will serve for an eBPF filter.

The patched kernel (kernel-patches/0006) analyses every eBPF filter when it is
attached: for each syscall number of each arch it follows the one path the
program takes with only nr and arch known, and caches the syscall (answers
ALLOW without running any filter) when that path provably returns
SECCOMP_RET_ALLOW without a side effect.  This module is the same analysis,
instruction for instruction, so that `ebpfseccomp check` can say which
syscalls will be cached and, for the others, the first instruction that made
them uncacheable.

Abstract values: a known scalar, a pointer to the context, to the frame or
into a read-only global (.rodata*) with a known offset, or unknown.  The
analysis gives up (not cacheable) on a conditional jump on an unknown value
or a pointer, any call, a load from anything but the context, a tracked
8-byte stack slot or a read-only global, a store outside the stack, an
atomic operation, the address of a map or of a writable global, an unknown
opcode, or more than STEP_BUDGET steps.

Read-only globals: libbpf creates .rodata* as array maps the program cannot
write (BPF_F_RDONLY_PROG) and freezes them after filling them, so at attach
time their bytes are those of the ELF section forever; the kernel reads them
as constants (kernel-patches/0006, seccomp_ebpf_const_mem()).  The kernel
also reads other frozen read-only array maps, through an array lookup the
JIT inlines; this module does not model that (it reports the helper call).

It runs on the instructions of the ELF object; the kernel runs on the
verifier's rewrite of them.  The two agree except where the verifier proves
a branch on an unknown value dead from value ranges and removes it (the
kernel may then cache what this module reports as not cacheable) and on a
branch on the address of a map, a constant for the kernel.  Division by zero
and signed division by -1 are modelled as the verifier's rewrite runs them,
and a division by an unknown register gives up as the rewrite's guard does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .. import insn as I
from .._helper_ids import HELPER_NAMES
from ..contract import AUDIT_ARCH, SECCOMP_RET_ACTION_FULL, Action, Verdict

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF

#: steps per syscall before the kernel gives up (BPF_MAXINSNS)
STEP_BUDGET = 4096
MAX_BPF_STACK = 512
#: bits of the kernel's cache bitmap per arch (NR_syscalls, IA32_NR_syscalls)
NR_COUNT: dict[str, int] = {"x86_64": 463, "i386": 463}
#: syscalls the kernel never filters (the uprobe exception), per arch
EXCEPTIONS: dict[str, frozenset[int]] = {"x86_64": frozenset({335}), "i386": frozenset()}
#: the arches the kernel keeps a cache for on x86_64: native, then compat
CACHE_ARCHES = ("x86_64", "i386")
#: offset of instruction_pointer: nr and arch are the known bytes before it
_KNOWN_CTX_BYTES = 8
_BPF_JCOND = 0xE0
_BPF_NOSPEC = 0xC0
_BPF_PSEUDO_FUNC = 4


class Kind(Enum):
    UNKNOWN = 0
    SCALAR = 1
    CTX = 2
    FP = 3
    ROMEM = 4  # into the bytes of a read-only global


@dataclass(frozen=True)
class Val:
    kind: Kind
    val: int = 0  # scalar (unsigned 64-bit) or pointer offset (signed)
    mem: bytes | None = None  # ROMEM: the global's bytes

    @property
    def is_ptr(self) -> bool:
        return self.kind in (Kind.CTX, Kind.FP, Kind.ROMEM)


UNKNOWN = Val(Kind.UNKNOWN)


def _scalar(v: int) -> Val:
    return Val(Kind.SCALAR, v & M64)


def _sext(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


@dataclass(frozen=True)
class Outcome:
    """The answer for one syscall: cached, or why not (insn index, reason)."""

    cached: bool
    insn: int | None
    reason: str


class _GiveUp(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _div(op: int, dst: int, src: int, bits: int, signed: bool) -> int:
    mask = (1 << bits) - 1
    dst &= mask
    src &= mask
    if src == 0:
        # The verifier's rewrite: x / 0 == 0 and x % 0 == x.
        return 0 if op == I.BPF_DIV else dst
    if signed and _sext(src, bits) == -1:
        # The verifier's rewrite: x s/ -1 == -x and x s% -1 == 0.
        return (-dst) & mask if op == I.BPF_DIV else 0
    if not signed:
        return dst // src if op == I.BPF_DIV else dst % src
    a, b = _sext(dst, bits), _sext(src, bits)
    q = abs(a) // abs(b)
    if (a < 0) != (b < 0):
        q = -q
    return (q if op == I.BPF_DIV else a - q * b) & mask


def _bswap(v: int, bits: int) -> int:
    return int.from_bytes((v & ((1 << bits) - 1)).to_bytes(bits // 8, "little"), "big")


def _alu_scalar(ins: I.Insn, dst: int, src: int) -> int:
    """ALU on known scalars as the kernel runs it; _GiveUp where the kernel does."""
    is64 = ins.cls == I.BPF_ALU64
    bits = 64 if is64 else 32
    mask = (1 << bits) - 1
    op = ins.op
    if not is64:
        dst &= M32
        if op != I.BPF_MOV:
            src &= M32
    if op == I.BPF_ADD:
        r = dst + src
    elif op == I.BPF_SUB:
        r = dst - src
    elif op == I.BPF_MUL:
        r = dst * src
    elif op == I.BPF_OR:
        r = dst | src
    elif op == I.BPF_AND:
        r = dst & src
    elif op == I.BPF_XOR:
        r = dst ^ src
    elif op == I.BPF_NEG:
        r = -dst
    elif op in (I.BPF_LSH, I.BPF_RSH, I.BPF_ARSH):
        if src >= bits:
            raise _GiveUp(f"shift by {src} (out of range)")
        if op == I.BPF_LSH:
            r = dst << src
        elif op == I.BPF_RSH:
            r = dst >> src
        else:
            r = _sext(dst, bits) >> src
    elif op in (I.BPF_DIV, I.BPF_MOD):
        if ins.off not in (0, 1):
            raise _GiveUp("unknown division")
        r = _div(op, dst, src, bits, ins.off == 1)
    elif op == I.BPF_MOV:
        if ins.off == 0:
            r = src
        elif ins.off in (8, 16) or (is64 and ins.off == 32):
            r = _sext(src, ins.off)
        else:
            raise _GiveUp("mov with an address-space or per-cpu offset")
    elif op == I.BPF_END:
        if ins.imm not in (16, 32, 64):
            raise _GiveUp("unknown byte swap")
        if is64 or ins.source == I.BPF_X:  # bswap, or to big-endian on a little-endian host
            return _bswap(dst, ins.imm)
        return dst & ((1 << ins.imm) - 1)
    else:
        raise _GiveUp("unknown ALU operation")
    return r & mask


_COND = {
    I.BPF_JEQ: lambda a, b, sa, sb: a == b,
    I.BPF_JNE: lambda a, b, sa, sb: a != b,
    I.BPF_JGT: lambda a, b, sa, sb: a > b,
    I.BPF_JGE: lambda a, b, sa, sb: a >= b,
    I.BPF_JLT: lambda a, b, sa, sb: a < b,
    I.BPF_JLE: lambda a, b, sa, sb: a <= b,
    I.BPF_JSGT: lambda a, b, sa, sb: sa > sb,
    I.BPF_JSGE: lambda a, b, sa, sb: sa >= sb,
    I.BPF_JSLT: lambda a, b, sa, sb: sa < sb,
    I.BPF_JSLE: lambda a, b, sa, sb: sa <= sb,
    I.BPF_JSET: lambda a, b, sa, sb: bool(a & b),
}

_CTX_FIELDS = ((0, "nr"), (4, "arch"), (8, "instruction_pointer")) + tuple(
    (16 + 8 * n, f"args[{n}]") for n in range(6)
)


def _ctx_field(off: int) -> str:
    name = "ctx"
    for start, n in _CTX_FIELDS:
        if off >= start:
            name = n
    return name


@dataclass
class _State:
    ctx: bytes
    reg: list[Val] = field(default_factory=lambda: [UNKNOWN] * 12)
    slot: list[Val] = field(default_factory=lambda: [UNKNOWN] * (MAX_BPF_STACK // 8))
    # why a register is unknown, for the report: register -> description
    why: dict[int, str] = field(default_factory=dict)


#: ld_imm64 index -> (bytes of the read-only global it points into, offset)
ConstMem = Mapping[int, tuple[bytes, int]]


class _Analysis:
    def __init__(self, insns: Sequence[I.Insn], pointer_imm64: Iterable[int] = (),
                 const_mem: ConstMem | None = None):
        self.insns = insns
        # ld_imm64 slots that are map or global pointers (relocations)
        self.pointer_imm64 = frozenset(pointer_imm64)
        self.const_mem = const_mem or {}

    def run(self, nr: int, audit_arch: int) -> Outcome:
        st = _State(ctx=struct.pack("<iI", _sext(nr & M32, 32), audit_arch & M32))
        st.reg[1] = Val(Kind.CTX, 0)
        st.reg[10] = Val(Kind.FP, 0)
        pc = 0
        for _ in range(STEP_BUDGET):
            if not 0 <= pc < len(self.insns):
                return Outcome(False, None, "jump out of the program")
            ins = self.insns[pc]
            try:
                nxt = self.step(st, pc, ins)
            except _GiveUp as e:
                return Outcome(False, pc, e.reason)
            if nxt is None:
                return self.exit(st, pc)
            pc = nxt
        return Outcome(False, pc, f"more than {STEP_BUDGET} steps (a loop?)")

    def exit(self, st: _State, pc: int) -> Outcome:
        r0 = st.reg[0]
        if r0.kind != Kind.SCALAR:
            why = st.why.get(0, "a value not known from nr and arch")
            return Outcome(False, pc, f"returns {why}")
        if (r0.val & M32 & SECCOMP_RET_ACTION_FULL) == Action.ALLOW:
            return Outcome(True, pc, "returns ALLOW")
        return Outcome(False, pc, f"returns {Verdict(r0.val & M32)}")

    # -- one instruction: the next pc, or None at exit ---------------------------

    def step(self, st: _State, pc: int, ins: I.Insn) -> int | None:
        if ins.dst >= 12 or ins.src >= 12:
            raise _GiveUp("invalid register")
        cls = ins.cls
        if cls in (I.BPF_ALU, I.BPF_ALU64):
            self.alu(st, ins)
            return pc + 1
        if cls == I.BPF_LDX:
            self.ldx(st, ins)
            return pc + 1
        if cls in (I.BPF_ST, I.BPF_STX):
            self.store(st, ins)
            return pc + 1
        if cls == I.BPF_LD:
            self.ld_imm64(st, pc, ins)
            return pc + 2
        if ins.is_exit():
            return None
        return self.jmp(st, pc, ins)

    def set(self, st: _State, r: int, v: Val, why: str = "") -> None:
        st.reg[r] = v
        if v.kind == Kind.UNKNOWN and why:
            st.why[r] = why
        else:
            st.why.pop(r, None)

    def alu(self, st: _State, ins: I.Insn) -> None:
        dst = st.reg[ins.dst]
        op = ins.op
        if ins.source == I.BPF_X and op != I.BPF_END:
            src = st.reg[ins.src]
            src_why = st.why.get(ins.src, "")
        else:
            src, src_why = _scalar(ins.imm), ""
        if op in (I.BPF_DIV, I.BPF_MOD) and src.kind != Kind.SCALAR:
            # The verifier guards a division by a register with a branch on
            # that register (zero, and -1 when signed): the kernel sees that.
            raise _GiveUp(f"division by {src_why or 'a value not known from nr and arch'}")
        if op in (I.BPF_DIV, I.BPF_MOD) and ins.off == 1 and src.kind == Kind.SCALAR:
            # The rewrite sets dst = 0 for x s/ 0 and x s% -1, known or not.
            bits = 64 if ins.cls == I.BPF_ALU64 else 32
            s = _sext(src.val, bits)
            if (op == I.BPF_DIV and s == 0) or (op == I.BPF_MOD and s == -1):
                self.set(st, ins.dst, _scalar(0))
                return
        if src.is_ptr or (dst.is_ptr and op != I.BPF_MOV):
            self.set(st, ins.dst, self.alu_ptr(ins, dst, src), "a value computed from a pointer")
            return
        if src.kind != Kind.SCALAR or (op != I.BPF_MOV and dst.kind != Kind.SCALAR):
            why = src_why if src.kind != Kind.SCALAR else st.why.get(ins.dst, "")
            self.set(st, ins.dst, UNKNOWN, why)
            return
        self.set(st, ins.dst, _scalar(_alu_scalar(ins, dst.val, src.val)))

    @staticmethod
    def alu_ptr(ins: I.Insn, dst: Val, src: Val) -> Val:
        if ins.cls != I.BPF_ALU64 or ins.off:
            return UNKNOWN
        if ins.op == I.BPF_MOV:
            return src
        if ins.op == I.BPF_ADD:
            if dst.is_ptr and src.kind == Kind.SCALAR:
                return Val(dst.kind, _sext(dst.val + src.val, 64), dst.mem)
            if src.is_ptr and dst.kind == Kind.SCALAR:
                return Val(src.kind, _sext(src.val + dst.val, 64), src.mem)
        if ins.op == I.BPF_SUB and dst.is_ptr and src.kind == Kind.SCALAR:
            return Val(dst.kind, _sext(dst.val - src.val, 64), dst.mem)
        return UNKNOWN

    @staticmethod
    def slot_of(base: Val, off: int, size: int) -> tuple[int, int] | None:
        if base.kind != Kind.FP:
            return None
        addr = base.val + off + MAX_BPF_STACK
        if addr < 0 or addr + size > MAX_BPF_STACK:
            return None
        slot, byte = divmod(addr, 8)
        if byte + size > 8:
            return None
        return slot, byte

    def ldx(self, st: _State, ins: I.Insn) -> None:
        if ins.mode not in (I.BPF_MEM, I.BPF_MEMSX):
            raise _GiveUp("load of an unknown kind")
        base = st.reg[ins.src]
        size = I.SIZE_BYTES[ins.size]
        signed = ins.mode == I.BPF_MEMSX
        if base.kind == Kind.CTX:
            off = base.val + ins.off
            if off < 0 or off + size > _KNOWN_CTX_BYTES:
                self.set(st, ins.dst, UNKNOWN, f"{_ctx_field(off)} (not known for the cache)")
                return
            raw = st.ctx[off : off + size]
        elif base.kind == Kind.ROMEM and base.mem is not None:
            off = base.val + ins.off
            if off < 0 or off + size > len(base.mem):
                raise _GiveUp("load outside a read-only global")
            raw = base.mem[off : off + size]
        else:
            where = self.slot_of(base, ins.off, size)
            if where is None:
                what = st.why.get(ins.src, "a pointer other than the context or the stack")
                raise _GiveUp(f"load through {what} (not known when the filter is attached)")
            slot, byte = where
            v = st.slot[slot]
            if size == 8 and not signed:
                self.set(st, ins.dst, v, "a stack slot not known")
                return
            if v.kind != Kind.SCALAR:
                self.set(st, ins.dst, UNKNOWN, "part of a stack slot not known")
                return
            raw = v.val.to_bytes(8, "little")[byte : byte + size]
        val = int.from_bytes(raw, "little")
        if signed:
            val = _sext(val, size * 8)
        self.set(st, ins.dst, _scalar(val))

    def store(self, st: _State, ins: I.Insn) -> None:
        if ins.code == (I.BPF_ST | _BPF_NOSPEC):
            return
        if ins.mode == I.BPF_ATOMIC:
            raise _GiveUp("atomic operation (a side effect)")
        if ins.mode != I.BPF_MEM:
            raise _GiveUp("store of an unknown kind")
        size = I.SIZE_BYTES[ins.size]
        where = self.slot_of(st.reg[ins.dst], ins.off, size)
        if where is None:
            raise _GiveUp("store outside the stack (a side effect)")
        slot, byte = where
        v = st.reg[ins.src] if ins.cls == I.BPF_STX else _scalar(ins.imm)
        if size == 8:
            st.slot[slot] = v
            return
        old = st.slot[slot]
        if v.kind != Kind.SCALAR or old.kind != Kind.SCALAR:
            st.slot[slot] = UNKNOWN
            return
        b = bytearray(old.val.to_bytes(8, "little"))
        b[byte : byte + size] = (v.val & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        st.slot[slot] = _scalar(int.from_bytes(b, "little"))

    def ld_imm64(self, st: _State, pc: int, ins: I.Insn) -> None:
        if not ins.is_ld_imm64() or pc + 1 >= len(self.insns):
            raise _GiveUp("legacy packet load or unknown load")
        if ins.src == _BPF_PSEUDO_FUNC:
            # The only pseudo ld_imm64 the verifier leaves in place: the
            # kernel gives up on it.
            raise _GiveUp("address of a callback (ld_imm64)")
        if pc in self.const_mem:
            # A frozen map the program cannot write: its bytes are known.
            data, off = self.const_mem[pc]
            self.set(st, ins.dst, Val(Kind.ROMEM, off, data))
            return
        if ins.src or pc in self.pointer_imm64:
            # The kernel knows the address, but nothing it points to.
            self.set(st, ins.dst, UNKNOWN, "the address of a map or global")
            return
        self.set(st, ins.dst, _scalar(I.ld_imm64_value(ins, self.insns[pc + 1])))

    def jmp(self, st: _State, pc: int, ins: I.Insn) -> int:
        is64 = ins.cls == I.BPF_JMP
        op = ins.op
        if op == I.BPF_JA:
            return pc + 1 + (ins.off if is64 else ins.imm)
        if ins.is_call():
            if ins.src == I.BPF_PSEUDO_CALL:
                raise _GiveUp("BPF-to-BPF call")
            if ins.src == I.BPF_PSEUDO_KFUNC_CALL:
                raise _GiveUp("kfunc call")
            name = HELPER_NAMES.get(ins.imm, f"#{ins.imm}")
            raise _GiveUp(f"call of bpf_{name} (a helper: side effects, unknown result)")
        if op not in _COND:
            raise _GiveUp("unknown jump (tail call, may_goto, ...)")
        dst = st.reg[ins.dst]
        src = st.reg[ins.src] if ins.source == I.BPF_X else _scalar(ins.imm)
        for r, v in ((ins.dst, dst), (ins.src, src)):
            if v.is_ptr:
                raise _GiveUp("branch on a pointer")
            if v.kind != Kind.SCALAR:
                why = st.why.get(r, "a value not known from nr and arch")
                raise _GiveUp(f"branch on {why}")
        a, b = dst.val, src.val
        bits = 64 if is64 else 32
        if not is64:
            a &= M32
            b &= M32
        taken = _COND[op](a, b, _sext(a, bits), _sext(b, bits))
        return pc + 1 + (ins.off if taken else 0)


def analyze_syscall(
    insns: Sequence[I.Insn], nr: int, arch: str | int = "x86_64", pointer_imm64: Iterable[int] = (),
    const_mem: ConstMem | None = None,
) -> Outcome:
    """Whether the kernel caches syscall NR of ARCH for the program INSNS."""
    name = arch if isinstance(arch, str) else None
    audit = AUDIT_ARCH[arch] if isinstance(arch, str) else arch
    if name is not None and nr in EXCEPTIONS.get(name, frozenset()):
        return Outcome(True, None, "never filtered (the kernel's uprobe exception)")
    return _Analysis(insns, pointer_imm64, const_mem).run(nr, audit)


@dataclass(frozen=True)
class ArchCache:
    """The cache bitmap the kernel will compute for one arch."""

    arch: str
    nr_count: int
    outcomes: tuple[Outcome, ...]  # index: syscall number

    @property
    def cached(self) -> list[int]:
        return [nr for nr, o in enumerate(self.outcomes) if o.cached]

    def to_dict(self, line_for: Any = None) -> dict[str, Any]:
        from ..syscalls import name as syscall_name

        def sname(nr: int) -> str | None:
            return syscall_name(nr, self.arch) if self.arch == "x86_64" else None

        uncached = []
        for nr, o in enumerate(self.outcomes):
            if o.cached:
                continue
            line = line_for(o.insn) if line_for is not None else None
            uncached.append(
                {
                    "nr": nr,
                    "name": sname(nr),
                    "insn": o.insn,
                    "line": str(line) if line is not None else None,
                    "reason": o.reason,
                }
            )
        return {
            "nr_count": self.nr_count,
            "cached": self.cached,
            "cached_names": [sname(nr) for nr in self.cached],
            "not_cached": uncached,
        }


def analyze(
    insns: Sequence[I.Insn],
    arches: Iterable[str] = CACHE_ARCHES,
    pointer_imm64: Iterable[int] = (),
    const_mem: ConstMem | None = None,
) -> list[ArchCache]:
    """The cache of every syscall of every arch the kernel keeps one for."""
    ptrs = frozenset(pointer_imm64)
    out = []
    for arch in arches:
        n = NR_COUNT[arch]
        outcomes = tuple(analyze_syscall(insns, nr, arch, ptrs, const_mem) for nr in range(n))
        out.append(ArchCache(arch, n, outcomes))
    return out


def line_for(prog: Any, i: int | None) -> Any:
    """The source line of instruction I of an elf.Program (the nearest before it)."""
    if i is None:
        return None
    lines = prog.lines
    for j in range(i, -1, -1):
        if j in lines:
            return lines[j]
    return None


def read_only_globals(prog: Any, maps: Mapping[str, Any]) -> dict[int, tuple[bytes, int]]:
    """The ld_imm64 of PROG that point into a read-only global (.rodata*), with
    the global's bytes: what libbpf freezes before the program can be attached."""
    out: dict[int, tuple[bytes, int]] = {}
    for r in prog.relocs:
        spec = maps.get(r.map)
        if (r.kind == "global" and spec is not None and spec.is_global
                and spec.name.startswith(".rodata") and spec.initial is not None):
            out[r.insn] = (bytes(spec.initial), r.offset)
    return out


def analyze_program(prog: Any, maps: Mapping[str, Any],
                    arches: Iterable[str] = CACHE_ARCHES) -> list[ArchCache]:
    """analyze() for an elf.Program: its relocated ld_imm64 are pointers, and
    those into read-only globals (MAPS: the object's) read as constants."""
    return analyze(prog.insns, arches, (r.insn for r in prog.relocs),
                   read_only_globals(prog, maps))
