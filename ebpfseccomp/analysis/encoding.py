"""Pass 1, encoding: every instruction is one the kernel knows (its opcode table,
kernel/bpf/core.c BPF_INSN_MAP), with its reserved fields zero, valid register
numbers, whole ld_imm64 pairs, no division by a zero constant, shifts in range
and no socket-filter BPF_LD_[ABS|IND]."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..insn import (
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
from .cfg import BPF_JCOND

if TYPE_CHECKING:
    from .checker import Checker

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




def check_encoding(ck: Checker) -> bool:
    ok = True
    i = 0
    n, insns = ck.n, ck.insns
    simple = _SIMPLE
    while i < n:
        ins = insns[i]
        code = ins.code
        if code in simple and not ins.src and ins.dst < 10 and (
                code & 0x07 in (BPF_JMP, BPF_JMP32) or not ins.off):
            i += 1  # the common case, valid by construction (what _check_insn accepts)
            continue
        if code == _EXIT and not (ins.dst or ins.src or ins.off or ins.imm):
            i += 1
            continue
        if ins.is_ld_imm64():
            ck.second_slot.add(i + 1)
        if not _check_insn(ck, i, ins):
            ok = False
        i += 2 if ins.is_ld_imm64() else 1
    return ok


_EXIT = BPF_JMP | BPF_EXIT
#: Conditional jumps on a constant, and ALU moves, additions and the like with
#: a constant: with src 0, dst below r10 (and off 0 for the ALU ones) each is
#: valid, whatever its imm.
_SIMPLE = frozenset(
    {cls | op | BPF_K for cls in (BPF_JMP, BPF_JMP32)
     for op in (BPF_JEQ, BPF_JNE, BPF_JGT, BPF_JLT, BPF_JGE, BPF_JLE, BPF_JSGT, BPF_JSLT,
                BPF_JSGE, BPF_JSLE, BPF_JSET)}
    | {cls | op | BPF_K for cls in (BPF_ALU, BPF_ALU64)
       for op in (BPF_ADD, BPF_SUB, BPF_AND, BPF_OR, BPF_XOR, BPF_MUL, BPF_MOV)}
)


def _bad(ck: Checker, i: int, message: str, fix: str = "") -> bool:
    ck.problem(i, "bad-insn", message, fix or "this is not an instruction clang emits; "
                 "rebuild the object, or fix the hand-written code")  # fmt: skip
    return False


def _check_insn(ck: Checker, i: int, ins: Insn) -> bool:
    code = ins.code
    if code not in VALID_OPCODES:
        return _bad(ck, i, f"unknown opcode {code:#04x}")
    for r, what in ((ins.dst, "destination"), (ins.src, "source")):
        if r > 10 and not (what == "source" and (ins.is_ld_imm64() or ins.is_call())):
            return _bad(ck, i, f"R{r} is invalid ({what} register)")
    cls = ins.cls
    if cls in (BPF_ALU, BPF_ALU64):
        return _check_alu(ck, i, ins)
    if cls == BPF_LDX:
        if ins.imm != 0:
            return _bad(ck, i, "BPF_LDX uses reserved fields")
        if ins.dst == 10:
            return _bad(ck, i, "frame pointer is read only")
        return True
    if cls == BPF_ST:
        if ins.src != 0:
            return _bad(ck, i, "BPF_ST uses reserved fields")
        return True
    if cls == BPF_STX:
        if ins.mode == BPF_ATOMIC:
            if ins.imm not in _ATOMIC_OPS:
                return _bad(ck, i, f"BPF_ATOMIC uses invalid atomic opcode {ins.imm:#04x}")
            return True
        if ins.imm != 0:
            return _bad(ck, i, "BPF_STX uses reserved fields")
        return True
    if cls == BPF_LD:
        if ins.is_ld_imm64():
            if i + 1 >= ck.n:
                return _bad(ck, i, "invalid bpf_ld_imm64 insn: the second half is missing")
            hi = ck.insns[i + 1]
            if hi.code or hi.dst or hi.src or hi.off:
                return _bad(ck, i, "invalid bpf_ld_imm64 insn: bad second half")
            if ins.off != 0:
                return _bad(ck, i, "BPF_LD_IMM64 uses reserved fields")
            if ins.dst == 10:
                return _bad(ck, i, "frame pointer is read only")
            if ins.src not in (0, 1, 2, 3, 4, 5, 6):
                return _bad(ck, i, f"unrecognized bpf_ld_imm64 insn (src_reg {ins.src})")
            return True
        ck.problem(
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
            return _bad(ck, i, "BPF_CALL uses reserved fields")
        return True
    if op == BPF_EXIT:
        if ins.source != BPF_K or ins.imm or ins.src or ins.dst or cls == BPF_JMP32:
            return _bad(ck, i, "BPF_EXIT uses reserved fields")
        return True
    if op == BPF_JA:
        if (
            ins.source != BPF_K
            or ins.src
            or ins.dst
            or (cls == BPF_JMP and ins.imm != 0)
            or (cls == BPF_JMP32 and ins.off != 0)
        ):
            return _bad(ck, i, "BPF_JA uses reserved fields")
        return True
    if op == BPF_JCOND:
        return _bad(ck, i, "may_goto is not supported by this toolchain")
    if ins.source == BPF_X and ins.imm != 0:
        return _bad(ck, i, "BPF_JMP/JMP32 uses reserved fields")
    if ins.source == BPF_K and ins.src != 0:
        return _bad(ck, i, "BPF_JMP/JMP32 uses reserved fields")
    return True


def _check_alu(ck: Checker, i: int, ins: Insn) -> bool:
    op, cls = ins.op, ins.cls
    if ins.dst == 10:
        return _bad(ck, i, "frame pointer is read only")
    if op == BPF_NEG:
        if ins.source != BPF_K or ins.src or ins.off or ins.imm:
            return _bad(ck, i, "BPF_NEG uses reserved fields")
    elif op == BPF_END:
        if ins.src or ins.off or ins.imm not in (16, 32, 64):
            return _bad(ck, i, "BPF_END uses reserved fields")
    elif op == BPF_MOV:
        if ins.source == BPF_X:
            allowed = (0, 8, 16) if cls == BPF_ALU else (0, 8, 16, 32)
            if ins.off not in allowed or ins.imm:
                return _bad(ck, i, "BPF_MOV uses reserved fields")
        elif ins.src or ins.off:
            return _bad(ck, i, "BPF_MOV uses reserved fields")
    else:
        if ins.off not in (0, 1) or (ins.off == 1 and op not in (BPF_DIV, BPF_MOD)):
            return _bad(ck, i, "BPF_ALU uses reserved fields")
        if ins.source == BPF_X and ins.imm:
            return _bad(ck, i, "BPF_ALU uses reserved fields")
        if ins.source == BPF_K and ins.src:
            return _bad(ck, i, "BPF_ALU uses reserved fields")
        if op in (BPF_DIV, BPF_MOD) and ins.source == BPF_K and ins.imm == 0:
            ck.problem(i, "div-zero", "div by zero", "divide by a non-zero constant")
            return False
        if op in (BPF_LSH, BPF_RSH, BPF_ARSH) and ins.source == BPF_K:
            width = 64 if cls == BPF_ALU64 else 32
            if not 0 <= ins.imm < width:
                ck.problem(
                    i, "bad-shift", f"invalid shift {ins.imm}", f"shift by 0..{width - 1}"
                )
                return False
    return True

