"""Property tests: the emulator's ALU and JMP semantics against Python
reference arithmetic written here from the kernel's rules (kernel/bpf/core.c
and the verifier's div/mod fix-ups, Linux 6.12), at 64 and 32 bits, with
register (BPF_X) and immediate (BPF_K) sources."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import pytest
from asm import exit_, flatten, ldx
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpfseccomp import insn as I
from ebpfseccomp.analysis.emulator import Emulator, SyscallInput
from ebpfseccomp.elf import BpfObject, Program

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
EXAMPLES = 120

EDGES64 = [0, 1, 2, 7, 31, 32, 63, 64, M32, 1 << 31, (1 << 31) - 1, 1 << 32, 1 << 63,
           (1 << 63) - 1, M64, M64 - 1, 0xFFFF_FFFF_8000_0000, 0x8000_0000_0000_0001]
EDGES32 = [0, 1, -1, 2, -2, 31, 32, 63, 64, -(1 << 31), (1 << 31) - 1, 0x7FFF, -0x8000]

u64 = st.one_of(st.sampled_from(EDGES64), st.integers(0, M64))
s32imm = st.one_of(st.sampled_from(EDGES32), st.integers(-(1 << 31), (1 << 31) - 1))


def signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


def trunc_div(a: int, b: int) -> int:
    """C division of signed integers (b != 0): rounds toward zero."""
    q = a // b
    if q < 0 and q * b != a:
        q += 1
    return q


def swap_bytes(v: int, nbytes: int) -> int:
    out = 0
    for i in range(nbytes):
        out = (out << 8) | ((v >> (8 * i)) & 0xFF)
    return out


# --- reference semantics --------------------------------------------------------------
# ref(dst, src, off, imm_width) -> new dst; dst and src are the 64-bit register
# values, src already the operand (for BPF_K: imm sign-extended to 64 bits).


def ref_alu(op: str, bits: int, dst: int, src: int) -> int:
    mask = (1 << bits) - 1
    a, b = dst & mask, src & mask
    sa, sb = signed(a, bits), signed(b, bits)
    if op == "add":
        r = a + b
    elif op == "sub":
        r = a - b
    elif op == "mul":
        r = a * b
    elif op == "div":
        r = 0 if b == 0 else a // b
    elif op == "sdiv":
        r = 0 if sb == 0 else trunc_div(sa, sb)
    elif op == "mod":
        r = a if b == 0 else a % b
    elif op == "smod":
        r = a if sb == 0 else sa - trunc_div(sa, sb) * sb
    elif op == "or":
        r = a | b
    elif op == "and":
        r = a & b
    elif op == "xor":
        r = a ^ b
    elif op == "lsh":
        r = a << (b % bits)
    elif op == "rsh":
        r = a >> (b % bits)
    elif op == "arsh":
        r = sa >> (b % bits)
    elif op == "neg":
        r = -a
    elif op == "mov":
        r = b
    elif op.startswith("movsx"):
        width = int(op[5:])
        r = signed(src, width)
    else:
        raise AssertionError(op)
    return r & mask  # ALU32 results are zero-extended


OPS = {
    "add": (I.BPF_ADD, 0), "sub": (I.BPF_SUB, 0), "mul": (I.BPF_MUL, 0),
    "div": (I.BPF_DIV, 0), "sdiv": (I.BPF_DIV, 1), "mod": (I.BPF_MOD, 0),
    "smod": (I.BPF_MOD, 1), "or": (I.BPF_OR, 0), "and": (I.BPF_AND, 0),
    "xor": (I.BPF_XOR, 0), "lsh": (I.BPF_LSH, 0), "rsh": (I.BPF_RSH, 0),
    "arsh": (I.BPF_ARSH, 0), "mov": (I.BPF_MOV, 0),
}  # fmt: skip


def _obj(insns: list[I.Insn]) -> BpfObject:
    return BpfObject("p.o", "GPL", [Program("p", "seccomp", insns, [], {0: "p"}, {})], {})


# r0 = args[0]; r2 = args[1]; <op>; exit
_LOAD = [ldx(I.BPF_DW, 0, 1, 16), ldx(I.BPF_DW, 2, 1, 24)]


@lru_cache(maxsize=4096)
def _emu(insn: I.Insn) -> Emulator:
    return Emulator(_obj(flatten(_LOAD, insn, exit_())))


def run_op(insn: I.Insn, dst: int, src: int = 0) -> int:
    return _emu(insn).run(SyscallInput(0, args=(dst, src))).r0


CLASSES = {64: I.BPF_ALU64, 32: I.BPF_ALU}


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("name", sorted(OPS))
@settings(max_examples=EXAMPLES, deadline=None)
@given(dst=u64, src=u64)
def test_alu_register_source(name: str, bits: int, dst: int, src: int) -> None:
    op, off = OPS[name]
    insn = I.Insn(CLASSES[bits] | op | I.BPF_X, 0, 2, off, 0)
    assert run_op(insn, dst, src) == ref_alu(name, bits, dst, src)


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("name", sorted(OPS))
@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(dst=u64, imm=s32imm)
def test_alu_immediate_source(name: str, bits: int, dst: int, imm: int) -> None:
    op, off = OPS[name]
    if name in ("lsh", "rsh", "arsh"):
        imm %= bits  # the verifier rejects out-of-range immediate shifts
    if name in ("div", "sdiv", "mod", "smod") and imm == 0:
        imm = 3  # and immediate division by zero
    insn = I.Insn(CLASSES[bits] | op | I.BPF_K, 0, 0, off, imm)
    # BPF_K: ALU64 sign-extends imm to 64 bits; ALU takes its 32 bits
    assert run_op(insn, dst) == ref_alu(name, bits, dst, imm & M64)


@pytest.mark.parametrize("bits,width", [(64, 8), (64, 16), (64, 32), (32, 8), (32, 16)])
@settings(max_examples=EXAMPLES, deadline=None)
@given(dst=u64, src=u64)
def test_movsx(bits: int, width: int, dst: int, src: int) -> None:
    insn = I.Insn(CLASSES[bits] | I.BPF_MOV | I.BPF_X, 0, 2, width, 0)
    assert run_op(insn, dst, src) == ref_alu(f"movsx{width}", bits, dst, src)


@pytest.mark.parametrize("bits", [64, 32])
@settings(max_examples=EXAMPLES, deadline=None)
@given(dst=u64)
def test_neg(bits: int, dst: int) -> None:
    insn = I.Insn(CLASSES[bits] | I.BPF_NEG, 0, 0, 0, 0)
    assert run_op(insn, dst) == ref_alu("neg", bits, dst, 0)


@pytest.mark.parametrize(
    "code,width,swap",
    [
        (I.BPF_ALU | I.BPF_END | I.BPF_K, w, False) for w in (16, 32, 64)  # to_le: truncate
    ] + [
        (I.BPF_ALU | I.BPF_END | I.BPF_X, w, True) for w in (16, 32, 64)  # to_be: swap
    ] + [
        (I.BPF_ALU64 | I.BPF_END | I.BPF_K, w, True) for w in (16, 32, 64)  # bswap
    ],
)
@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(dst=u64)
def test_byte_order(code: int, width: int, swap: bool, dst: int) -> None:
    low = dst & ((1 << width) - 1)
    want = swap_bytes(low, width // 8) if swap else low
    assert run_op(I.Insn(code, 0, 0, 0, width), dst) == want


# --- jumps --------------------------------------------------------------------------


def _unsigned(cmp: Callable[[int, int], bool]) -> Callable[[int, int, int], bool]:
    return lambda a, b, bits: cmp(a & ((1 << bits) - 1), b & ((1 << bits) - 1))


def _signed(cmp: Callable[[int, int], bool]) -> Callable[[int, int, int], bool]:
    return lambda a, b, bits: cmp(signed(a, bits), signed(b, bits))


CONDS: dict[str, tuple[int, Callable[[int, int, int], bool]]] = {
    "jeq": (I.BPF_JEQ, _unsigned(lambda a, b: a == b)),
    "jne": (I.BPF_JNE, _unsigned(lambda a, b: a != b)),
    "jgt": (I.BPF_JGT, _unsigned(lambda a, b: a > b)),
    "jge": (I.BPF_JGE, _unsigned(lambda a, b: a >= b)),
    "jlt": (I.BPF_JLT, _unsigned(lambda a, b: a < b)),
    "jle": (I.BPF_JLE, _unsigned(lambda a, b: a <= b)),
    "jset": (I.BPF_JSET, _unsigned(lambda a, b: (a & b) != 0)),
    "jsgt": (I.BPF_JSGT, _signed(lambda a, b: a > b)),
    "jsge": (I.BPF_JSGE, _signed(lambda a, b: a >= b)),
    "jslt": (I.BPF_JSLT, _signed(lambda a, b: a < b)),
    "jsle": (I.BPF_JSLE, _signed(lambda a, b: a <= b)),
}

JCLASSES = {64: I.BPF_JMP, 32: I.BPF_JMP32}


def _jump_emu(insn: I.Insn) -> Emulator:
    # r0 = 0; <jump +1>; exit; r0 = 1; exit  ... with args loaded first
    prog = flatten(
        _LOAD[0], _LOAD[1], ldx(I.BPF_DW, 3, 1, 16),
        I.Insn(I.BPF_ALU64 | I.BPF_MOV | I.BPF_K, 0, 0, 0, 0),
        insn, exit_(),
        I.Insn(I.BPF_ALU64 | I.BPF_MOV | I.BPF_K, 0, 0, 0, 1), exit_(),
    )  # fmt: skip
    return _cached_emu(tuple(prog))


@lru_cache(maxsize=4096)
def _cached_emu(prog: tuple[I.Insn, ...]) -> Emulator:
    return Emulator(_obj(list(prog)))


def taken(insn: I.Insn, a: int, b: int = 0) -> bool:
    # r3 holds a; compare r3 with r2 (X) or imm (K)
    return _jump_emu(insn).run(SyscallInput(0, args=(a, b))).r0 == 1


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("name", sorted(CONDS))
@settings(max_examples=EXAMPLES, deadline=None)
@given(a=u64, b=u64, same=st.booleans())
def test_jump_register_source(name: str, bits: int, a: int, b: int, same: bool) -> None:
    if same:
        b = a  # make equality cases common
    op, ref = CONDS[name]
    insn = I.Insn(JCLASSES[bits] | op | I.BPF_X, 3, 2, 1, 0)
    assert taken(insn, a, b) == ref(a, b, bits)


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("name", sorted(CONDS))
@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(a=u64, imm=s32imm, same=st.booleans())
def test_jump_immediate_source(name: str, bits: int, a: int, imm: int, same: bool) -> None:
    if same:
        a = (a & ~M32 & M64) | (imm & M32) if bits == 32 else imm & M64
    op, ref = CONDS[name]
    insn = I.Insn(JCLASSES[bits] | op | I.BPF_K, 3, 0, 1, imm)
    # the immediate is sign-extended to 64 bits for JMP, used as 32 bits for JMP32
    assert taken(insn, a) == ref(a, imm & M64, bits)


# --- robustness: any instruction stream runs or stops with EmulationError ------------------

VALID_CODES = sorted(
    {cls | op | src for cls in (I.BPF_ALU, I.BPF_ALU64) for op in I.ALU_NAMES
     for src in (I.BPF_K, I.BPF_X)}
    | {cls | op | src for cls in (I.BPF_JMP, I.BPF_JMP32) for op in I.JMP_NAMES
       for src in (I.BPF_K, I.BPF_X)}
    | {I.BPF_LDX | mode | size for mode in (I.BPF_MEM, I.BPF_MEMSX) for size in I.SIZE_BYTES}
    | {I.BPF_ST | I.BPF_MEM | size for size in I.SIZE_BYTES}
    | {I.BPF_STX | mode | size for mode in (I.BPF_MEM, I.BPF_ATOMIC) for size in I.SIZE_BYTES}
    | {I.BPF_LD | I.BPF_IMM | I.BPF_DW}
)

insn_st = st.builds(
    I.Insn,
    code=st.one_of(st.sampled_from(VALID_CODES), st.integers(0, 255)),
    dst=st.one_of(st.integers(0, 10), st.integers(0, 15)),
    src=st.one_of(st.integers(0, 10), st.integers(0, 15)),
    off=st.one_of(st.integers(-4, 4), st.integers(-(1 << 15), (1 << 15) - 1)),
    imm=st.one_of(st.sampled_from([0, 1, 8, 16, 32, 64, -1, 0xE1, 0xF1]), s32imm),
)


@settings(max_examples=400, deadline=None)
@given(prog=st.lists(insn_st, min_size=1, max_size=12), args=st.lists(u64, max_size=6))
def test_random_programs_run_or_fail_clearly(prog: list[I.Insn], args: list[int]) -> None:
    from ebpfseccomp.analysis.emulator import Environment
    from ebpfseccomp.errors import EmulationError

    # r1 = ctx, r2 = a stack pointer: memory instructions have a chance to be valid
    head = [I.Insn(I.BPF_ALU64 | I.BPF_MOV | I.BPF_X, 2, 10, 0, 0),
            I.Insn(I.BPF_ALU64 | I.BPF_ADD | I.BPF_K, 2, 0, 0, -64)]
    try:
        emu = Emulator(_obj(head + prog + [exit_()]), env=Environment(budget=2000))
        res = emu.run(SyscallInput(0, args=tuple(args)))
    except EmulationError as exc:
        assert "Traceback" not in str(exc)
        return
    assert 0 <= res.verdict.value <= M32
    assert res.insns_executed >= 1
