"""Random seccomp eBPF programs for the action-cache soundness tests.

`generate(rng)` makes one straight-line-with-forward-jumps program that reads
nr, arch, the instruction pointer and the arguments, computes with ALU ops
(64 and 32 bit, immediates and registers, divisions, shifts, byte swaps,
sign extensions), spills to and fills from the stack through r10 and through
a moved stack pointer, calls helpers without maps (clock, random, uid), and
returns constant or computed actions.  Most jumps compare nr or values
derived from it with syscall numbers, so that many syscalls are decided
without the unknown data, and some are not.

The programs are meant to pass the verifier when loaded by root: every
register is written before any path reads it (all scalars are set in the
prologue and again after each helper call), stack slots are initialised in
the prologue, jumps only go forward to unit boundaries, and pointers never
meet arithmetic other than a constant offset.  The VM test counts the ones
the verifier refuses anyway.
"""

from __future__ import annotations

import random

from ebpfseccomp import insn as I
from ebpfseccomp.elf import BpfObject, Program

SECCOMP_DATA_FIELDS = [(0, 4), (4, 4), (8, 8)] + [(16 + 8 * n, 8) for n in range(6)]
CTX = 6  # the context, saved from r1 (callee-saved)
SCALARS = [0, 2, 3, 4, 5, 7, 8, 9]
CLOBBERED = [0, 1, 2, 3, 4, 5]
SLOTS = [-8, -16, -24, -32, -40]
HELPERS = [5, 7, 15]  # ktime_get_ns, get_prandom_u32, get_current_uid_gid
ACTIONS = [
    0x7FFF0000,  # ALLOW
    0x7FFF0000,
    0x7FFF0000,
    0x7FFF0007,  # ALLOW with data
    0x00050001,  # ERRNO(1)
    0x80000000,  # KILL_PROCESS
    0x7FFC0000,  # LOG
    0x00030002,  # TRAP
]
NRS = [0, 1, 2, 3, 5, 9, 39, 59, 60, 102, 110, 186, 231, 257, 300, 335, 400, 462, 463]

ALU_OPS = [I.BPF_ADD, I.BPF_SUB, I.BPF_MUL, I.BPF_OR, I.BPF_AND, I.BPF_XOR, I.BPF_LSH,
           I.BPF_RSH, I.BPF_ARSH, I.BPF_DIV, I.BPF_MOD, I.BPF_MOV]  # fmt: skip
JMP_OPS = [I.BPF_JEQ, I.BPF_JNE, I.BPF_JGT, I.BPF_JGE, I.BPF_JLT, I.BPF_JLE,
           I.BPF_JSGT, I.BPF_JSGE, I.BPF_JSLT, I.BPF_JSLE, I.BPF_JSET]  # fmt: skip


def _i(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> I.Insn:
    return I.Insn(code, dst, src, off, imm)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


class _Gen:
    def __init__(self, rng: random.Random):
        self.rng = rng
        # units: lists of insns; a jump is (unit index, insn index in unit, target unit)
        self.units: list[list[I.Insn]] = []
        self.jumps: list[tuple[int, int, int]] = []

    def imm(self) -> int:
        return _s32(self._imm())

    def _imm(self) -> int:
        r = self.rng.random()
        if r < 0.4:
            return self.rng.choice(NRS)
        if r < 0.6:
            return self.rng.randint(-4, 64)
        if r < 0.8:
            return self.rng.choice([0x7FFF0000, 0xC000003E, 0x40000003, -1, 0xFFFF, 1 << 20])
        return _s32(self.rng.getrandbits(32))

    def reg(self) -> int:
        return self.rng.choice(SCALARS)

    def unit(self, *insns: I.Insn) -> None:
        self.units.append(list(insns))

    def prologue(self) -> None:
        self.unit(_i(I.BPF_ALU64 | I.BPF_MOV | I.BPF_X, CTX, 1))
        for r in SCALARS:
            self.unit(_i(I.BPF_ALU64 | I.BPF_MOV | I.BPF_K, r, 0, 0, self.imm()))
        for off in SLOTS:
            self.unit(_i(I.BPF_ST | I.BPF_MEM | I.BPF_DW, 10, 0, off, self.imm()))
        # the usual start: nr and arch in registers
        self.unit(_i(I.BPF_LDX | I.BPF_MEM | I.BPF_W, 7, CTX, 0))
        if self.rng.random() < 0.5:
            self.unit(_i(I.BPF_LDX | I.BPF_MEM | I.BPF_W, 8, CTX, 4))

    def ctx_load(self) -> None:
        off, size = self.rng.choice(SECCOMP_DATA_FIELDS)
        sizes = [s for s in (1, 2, 4, 8) if s <= size]
        s = self.rng.choice(sizes)
        off += self.rng.randrange(0, size, s) if s < size else 0
        code = I.BPF_LDX | I.BPF_MEM | {1: I.BPF_B, 2: I.BPF_H, 4: I.BPF_W, 8: I.BPF_DW}[s]
        self.unit(_i(code, self.reg(), CTX, off))

    def alu(self) -> None:
        rng = self.rng
        cls = rng.choice([I.BPF_ALU64, I.BPF_ALU64, I.BPF_ALU])
        op = rng.choice(ALU_OPS)
        dst = self.reg()
        if rng.random() < 0.5:
            imm = self.imm()
            if op in (I.BPF_LSH, I.BPF_RSH, I.BPF_ARSH):
                imm = rng.randrange(0, 64 if cls == I.BPF_ALU64 else 32)
            if op in (I.BPF_DIV, I.BPF_MOD) and imm == 0:
                imm = 3
            off = rng.choice([0, 1]) if op in (I.BPF_DIV, I.BPF_MOD) else 0
            self.unit(_i(cls | op | I.BPF_K, dst, 0, off, imm))
            return
        src = self.reg()
        off = 0
        if op in (I.BPF_DIV, I.BPF_MOD):
            off = rng.choice([0, 1])
        elif op == I.BPF_MOV and rng.random() < 0.3:
            off = rng.choice([8, 16, 32] if cls == I.BPF_ALU64 else [8, 16])
        self.unit(_i(cls | op | I.BPF_X, dst, src, off))

    def special_alu(self) -> None:
        rng = self.rng
        dst = self.reg()
        kind = rng.randrange(3)
        if kind == 0:
            self.unit(_i(rng.choice([I.BPF_ALU64, I.BPF_ALU]) | I.BPF_NEG, dst))
        elif kind == 1:
            cls = rng.choice([I.BPF_ALU, I.BPF_ALU64])
            src = rng.choice([I.BPF_K, I.BPF_X]) if cls == I.BPF_ALU else I.BPF_K
            self.unit(_i(cls | I.BPF_END | src, dst, 0, 0, rng.choice([16, 32, 64])))
        else:
            hi = rng.getrandbits(32)
            lo = self.imm()
            self.unit(_i(I.BPF_LD | I.BPF_IMM | I.BPF_DW, dst, 0, 0, lo), _i(0, 0, 0, 0, _s32(hi)))

    def stack(self) -> None:
        rng = self.rng
        off = rng.choice(SLOTS)
        size = rng.choice([1, 2, 4, 8, 8])
        off += rng.randrange(0, 8, size)
        sz = {1: I.BPF_B, 2: I.BPF_H, 4: I.BPF_W, 8: I.BPF_DW}[size]
        kind = rng.randrange(4)
        if kind == 0:
            self.unit(_i(I.BPF_STX | I.BPF_MEM | sz, 10, self.reg(), off))
        elif kind == 1:
            self.unit(_i(I.BPF_ST | I.BPF_MEM | sz, 10, 0, off, self.imm()))
        elif kind == 2:
            mode = I.BPF_MEMSX if size < 8 and rng.random() < 0.3 else I.BPF_MEM
            self.unit(_i(I.BPF_LDX | mode | sz, self.reg(), 10, off))
        else:
            # through a moved frame pointer, then back to a scalar
            p = rng.choice([2, 3, 4, 5])
            delta = rng.choice([-8, -16, -24])
            o = rng.choice(SLOTS) - delta
            other = rng.choice([r for r in SCALARS if r != p])
            if rng.random() < 0.5:
                access = _i(I.BPF_STX | I.BPF_MEM | I.BPF_DW, p, other, o)
            else:
                access = _i(I.BPF_LDX | I.BPF_MEM | I.BPF_DW, other, p, o)
            self.unit(
                _i(I.BPF_ALU64 | I.BPF_MOV | I.BPF_X, p, 10),
                _i(I.BPF_ALU64 | I.BPF_ADD | I.BPF_K, p, 0, 0, delta),
                access,
                _i(I.BPF_ALU64 | I.BPF_MOV | I.BPF_K, p, 0, 0, self.imm()),
            )

    def call(self) -> None:
        insns = [_i(I.BPF_JMP | I.BPF_CALL, 0, 0, 0, self.rng.choice(HELPERS))]
        insns += [_i(I.BPF_ALU64 | I.BPF_MOV | I.BPF_K, r, 0, 0, self.imm()) for r in (2, 3, 4, 5)]
        self.unit(*insns)

    def ret(self) -> None:
        rng = self.rng
        if rng.random() < 0.8:
            self.unit(
                _i(I.BPF_ALU | I.BPF_MOV | I.BPF_K, 0, 0, 0, _s32(rng.choice(ACTIONS))),
                _i(I.BPF_JMP | I.BPF_EXIT),
            )
        else:
            self.unit(
                _i(I.BPF_ALU64 | I.BPF_MOV | I.BPF_X, 0, self.reg()),
                _i(I.BPF_ALU | I.BPF_AND | I.BPF_K, 0, 0, 0, 0xFFFF),
                _i(I.BPF_ALU | I.BPF_OR | I.BPF_K, 0, 0, 0, _s32(rng.choice(ACTIONS))),
                _i(I.BPF_JMP | I.BPF_EXIT),
            )

    def guarded_ret(self) -> None:
        """A return the verifier sees a way around: a jump over it."""
        self.cond(over=True)
        self.ret()

    def cond(self, over: bool = False) -> None:
        rng = self.rng
        cls = rng.choice([I.BPF_JMP, I.BPF_JMP, I.BPF_JMP32])
        op = rng.choice(JMP_OPS)
        dst = 7 if rng.random() < 0.5 else self.reg()
        if rng.random() < 0.7:
            ins = _i(cls | op | I.BPF_K, dst, 0, 0, self.imm())
        else:
            ins = _i(cls | op | I.BPF_X, dst, self.reg())
        self.unit(ins)
        u = len(self.units) - 1
        self.jumps.append((u, 0, u + 2 if over else -1))

    def body(self, n: int) -> None:
        actions = [
            (self.cond, 30), (self.alu, 25), (self.guarded_ret, 10), (self.ctx_load, 8),
            (self.stack, 12), (self.special_alu, 6), (self.call, 4),
        ]  # fmt: skip
        fns = [f for f, _ in actions]
        weights = [w for _, w in actions]
        for _ in range(n):
            self.rng.choices(fns, weights)[0]()

    def link(self) -> list[I.Insn]:
        starts = []
        pos = 0
        for u in self.units:
            starts.append(pos)
            pos += len(u)
        out: list[I.Insn] = []
        jump_units = {u: t for u, _, t in self.jumps}
        for ui, u in enumerate(self.units):
            for k, ins in enumerate(u):
                if ui in jump_units and k == 0:
                    target = jump_units[ui]
                    if target < 0:
                        target = self.rng.randrange(ui + 1, len(self.units))
                    off = starts[target] - (starts[ui] + 1)
                    ins = I.Insn(ins.code, ins.dst, ins.src, off, ins.imm)
                out.append(ins)
        return out


def generate(rng: random.Random, size: int | None = None) -> list[I.Insn]:
    """One random program (a list of instruction slots)."""
    g = _Gen(rng)
    g.prologue()
    g.body(size if size is not None else rng.randint(4, 30))
    g.ret()
    return g.link()


def as_object(insns: list[I.Insn], name: str = "rand") -> BpfObject:
    """A BpfObject holding INSNS as its only program (for the emulator)."""
    prog = Program(name, "seccomp", list(insns), [], {0: name}, {})
    return BpfObject(f"<{name}>", "GPL", [prog], {})
