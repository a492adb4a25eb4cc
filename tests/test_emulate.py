"""The emulator on hand-built programs: every instruction class, maps, globals,
helpers, BPF-to-BPF calls, the errors it must raise, and the CLI."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from asm import (
    ALLOW,
    ObjectBuilder,
    add,
    alu,
    alur,
    call,
    call_rel,
    exit_,
    flatten,
    ja,
    jeq,
    jmp,
    jne,
    kfunc_call,
    ld_imm64,
    ldx,
    mov,
    movr,
    ret,
    st,
    stx,
)

from ebpfseccomp import insn as I
from ebpfseccomp.analysis.emulator import (
    CTX_ADDR,
    Emulator,
    Environment,
    HelperCall,
    SyscallInput,
)
from ebpfseccomp.cli import main
from ebpfseccomp.contract import HELPER_IDS, Action
from ebpfseccomp.elf import BpfObject, MapSpec, Program, Reloc, SourceLine, load_object
from ebpfseccomp.errors import EmulationError

H = HELPER_IDS
M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


def prog_obj(
    insns: list[I.Insn],
    maps: list[MapSpec] = (),  # type: ignore[assignment]
    relocs: list[Reloc] = (),  # type: ignore[assignment]
    lines: dict[int, SourceLine] | None = None,
) -> BpfObject:
    p = Program("filt", "seccomp", list(insns), list(relocs), {0: "filt"}, lines or {})
    return BpfObject("test.o", "GPL", [p], {m.name: m for m in maps})


def hash_spec(name: str = "m", key: int = 4, value: int = 8, n: int = 4, type_: int = 1) -> MapSpec:
    return MapSpec(name, type_, key, value, n, 0, None, False)


def run(insns: list[I.Insn], inp: SyscallInput | None = None, **kw: object) -> int:
    """R0 (64 bits) after running INSNS."""
    emu = Emulator(prog_obj(insns, **kw))  # type: ignore[arg-type]
    return emu.run(inp or SyscallInput(0)).r0


def raw(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> I.Insn:
    return I.Insn(code, dst, src, off, imm)


def s32(v: int) -> int:
    v &= M32
    return v - (1 << 32) if v >> 31 else v


# --- ALU ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op,a,b,want64,want32",
    [
        (I.BPF_ADD, M64, 2, 1, 1),
        (I.BPF_SUB, 0, 1, M64, M32),
        (I.BPF_MUL, 1 << 40, 1 << 30, 0, 0),
        (I.BPF_DIV, 100, 7, 14, 14),
        (I.BPF_DIV, 100, 0, 0, 0),
        (I.BPF_MOD, 100, 7, 2, 2),
        (I.BPF_MOD, (1 << 40) | 5, 0, (1 << 40) | 5, 5),
        (I.BPF_OR, 0xF0, 0x0F, 0xFF, 0xFF),
        (I.BPF_AND, M64, 0x1234, 0x1234, 0x1234),
        (I.BPF_XOR, M64, 1, M64 - 1, M32 - 1),
        (I.BPF_LSH, 1, 65, 2, 2),  # register shifts are masked to 63 / 31
        (I.BPF_RSH, 1 << 63, 63, 1, 0),
        (I.BPF_ARSH, 1 << 63, 60, M64 - 7, 0),
        (I.BPF_ARSH, 0x80000000, 4, 0x08000000, 0xF8000000),
    ],
)
def test_alu_register(op: int, a: int, b: int, want64: int, want32: int) -> None:
    for cls, want in ((I.BPF_ALU64, want64), (I.BPF_ALU, want32)):
        insns = flatten(ld_imm64(0, a), ld_imm64(1, b), alur(op, 0, 1, cls=cls), exit_())
        assert run(insns) == want, (hex(op), cls)


def test_alu32_zero_extends_and_k_sign_extends() -> None:
    # ALU32 results are zero-extended into the 64-bit register
    assert run(flatten(ld_imm64(0, M64), alu(I.BPF_ADD, 0, 0, cls=I.BPF_ALU), exit_())) == M32
    # ALU64 immediates are sign-extended; ALU32 ones are taken as u32
    assert run(flatten(mov(0, 0), alu(I.BPF_ADD, 0, -1), exit_())) == M64
    assert run(flatten(mov(0, -1), exit_())) == M64
    assert run(flatten(raw(I.BPF_ALU | I.BPF_MOV | I.BPF_K, 0, imm=-1), exit_())) == M32
    # neg
    assert run(flatten(mov(0, 5), raw(I.BPF_ALU64 | I.BPF_NEG), exit_())) == M64 - 4
    assert run(flatten(mov(0, 5), raw(I.BPF_ALU | I.BPF_NEG), exit_())) == M32 - 4


def test_shift_immediates() -> None:
    assert run(flatten(mov(0, 1), alu(I.BPF_LSH, 0, 63), exit_())) == 1 << 63
    assert run(flatten(mov(0, -16), alu(I.BPF_ARSH, 0, 2), exit_())) == M64 - 3
    assert run(flatten(mov(0, -16), alu(I.BPF_RSH, 0, 28, cls=I.BPF_ALU), exit_())) == 0xF


def test_signed_div_mod() -> None:
    sdiv = I.BPF_ALU64 | I.BPF_DIV | I.BPF_X
    smod = I.BPF_ALU64 | I.BPF_MOD | I.BPF_X

    def go(code: int, a: int, b: int) -> int:
        return run(flatten(ld_imm64(0, a), ld_imm64(1, b), raw(code, 0, 1, off=1), exit_()))

    assert go(sdiv, -7 & M64, 2) == -3 & M64  # truncates toward zero
    assert go(smod, -7 & M64, 2) == -1 & M64  # sign of the dividend
    assert go(sdiv, 7, -2 & M64) == -3 & M64
    assert go(smod, 7, -2 & M64) == 1
    assert go(sdiv, 1 << 63, M64) == 1 << 63  # LLONG_MIN / -1
    assert go(smod, 1 << 63, M64) == 0
    assert go(sdiv, 5, 0) == 0
    assert go(smod, 5, 0) == 5
    # 32-bit forms
    sdiv32 = I.BPF_ALU | I.BPF_DIV | I.BPF_X
    smod32 = I.BPF_ALU | I.BPF_MOD | I.BPF_X
    assert go(sdiv32, 0x80000000, M32) == 0x80000000
    assert go(smod32, (1 << 40) | 0xFFFFFFF9, 2) == 0xFFFFFFFF  # -7 % 2 == -1
    assert go(smod32, (1 << 40) | 5, 0) == 5  # x % 0 == x, zero-extended
    # immediate forms
    assert run(flatten(mov(0, -9), raw(I.BPF_ALU64 | I.BPF_DIV | I.BPF_K, 0, 0, 1, -1),
                       exit_())) == 9
    assert run(flatten(mov(0, -9), raw(I.BPF_ALU64 | I.BPF_MOD | I.BPF_K, 0, 0, 1, 4),
                       exit_())) == -1 & M64


def test_movsx() -> None:
    mov64x = I.BPF_ALU64 | I.BPF_MOV | I.BPF_X
    mov32x = I.BPF_ALU | I.BPF_MOV | I.BPF_X
    base = ld_imm64(1, 0x1234_5678_9ABC_DEF0)
    assert run(flatten(base, raw(mov64x, 0, 1, 8), exit_())) == (-0x10) & M64
    assert run(flatten(base, raw(mov64x, 0, 1, 16), exit_())) == 0xFFFF_FFFF_FFFF_DEF0
    assert run(flatten(base, raw(mov64x, 0, 1, 32), exit_())) == 0xFFFF_FFFF_9ABC_DEF0
    assert run(flatten(base, raw(mov32x, 0, 1, 8), exit_())) == 0xFFFF_FFF0
    assert run(flatten(base, raw(mov32x, 0, 1, 0), exit_())) == 0x9ABC_DEF0


def test_byte_swaps() -> None:
    v = ld_imm64(0, 0x0102_0304_0506_0708)
    to_le = I.BPF_ALU | I.BPF_END | I.BPF_K
    to_be = I.BPF_ALU | I.BPF_END | I.BPF_X
    bswap = I.BPF_ALU64 | I.BPF_END | I.BPF_K
    assert run(flatten(v, raw(to_le, 0, imm=16), exit_())) == 0x0708
    assert run(flatten(v, raw(to_le, 0, imm=32), exit_())) == 0x0506_0708
    assert run(flatten(v, raw(to_le, 0, imm=64), exit_())) == 0x0102_0304_0506_0708
    assert run(flatten(v, raw(to_be, 0, imm=16), exit_())) == 0x0807
    assert run(flatten(v, raw(to_be, 0, imm=32), exit_())) == 0x0807_0605
    assert run(flatten(v, raw(to_be, 0, imm=64), exit_())) == 0x0807_0605_0403_0201
    assert run(flatten(v, raw(bswap, 0, imm=16), exit_())) == 0x0807
    assert run(flatten(v, raw(bswap, 0, imm=64), exit_())) == 0x0807_0605_0403_0201


# --- jumps ----------------------------------------------------------------------------


def test_jumps_64_and_32() -> None:
    # r1 = 0x1_0000_0005: JMP sees the full value, JMP32 only the low half
    prog = flatten(
        ld_imm64(1, 0x1_0000_0005),
        raw(I.BPF_JMP32 | I.BPF_JEQ | I.BPF_K, 1, 0, 2, 5),  # taken
        ret(1),
        jeq(1, 5, 2),  # not taken (64-bit compare)
        ret(2),
    )
    assert run(prog) == 2
    # signed compares: -1 < 0 signed, > 0 unsigned
    prog = flatten(mov(1, -1), jmp(I.BPF_JSLT, 1, 0, 2), ret(1), jmp(I.BPF_JGT, 1, 0, 2), ret(2),
                   ret(3))
    assert run(prog) == 3
    # jset and register compare
    prog = flatten(mov(1, 6), mov(2, 6), jmp(I.BPF_JSET, 1, 1, 3), raw(0x5D, 1, 2, 2), ret(4),
                   ret(5), ret(6))
    assert run(prog) == 4  # jset not taken (6 & 1 == 0), jne r1, r2 not taken


def test_gotol_and_ja() -> None:
    prog = flatten(raw(I.BPF_JMP32 | I.BPF_JA, imm=2), ret(1), ja(2), ret(2), ret(3))
    # gotol +2 -> insn 3 (ja +2) -> insn 6 (ret 3)
    assert run(prog) == 3


def test_ld_imm64_plain() -> None:
    assert run(flatten(ld_imm64(0, 0xDEAD_BEEF_CAFE_F00D), exit_())) == 0xDEAD_BEEF_CAFE_F00D


# --- memory ---------------------------------------------------------------------------


def test_context_loads_every_width() -> None:
    inp = SyscallInput(257, "x86_64", (1, 0x1122_3344_5566_7788, 3), ip=0xABCD)
    assert run(flatten(ldx(I.BPF_W, 0, 1, 0), exit_()), inp) == 257
    assert run(flatten(ldx(I.BPF_W, 0, 1, 4), exit_()), inp) == 0xC000003E
    assert run(flatten(ldx(I.BPF_DW, 0, 1, 8), exit_()), inp) == 0xABCD
    assert run(flatten(ldx(I.BPF_DW, 0, 1, 24), exit_()), inp) == 0x1122_3344_5566_7788
    assert run(flatten(ldx(I.BPF_W, 0, 1, 28), exit_()), inp) == 0x1122_3344
    assert run(flatten(ldx(I.BPF_H, 0, 1, 24), exit_()), inp) == 0x7788
    assert run(flatten(ldx(I.BPF_B, 0, 1, 31), exit_()), inp) == 0x11
    assert run(flatten(ldx(I.BPF_W, 0, 1, 4), exit_()), SyscallInput(0, "aarch64")) == 0xC00000B7
    # nr is an int: -1 reads back as 0xffffffff
    assert run(flatten(ldx(I.BPF_W, 0, 1, 0), exit_()), SyscallInput(-1)) == M32


def test_stack_stores_and_loads() -> None:
    prog = flatten(
        ld_imm64(2, 0x1122_3344_5566_7788),
        stx(I.BPF_DW, 10, -8, 2),
        st(I.BPF_W, 10, -16, -2),  # imm stores truncate to the width
        st(I.BPF_H, 10, -12, 0x1234),
        st(I.BPF_B, 10, -10, 0x99),
        st(I.BPF_B, 10, -9, 0),  # fp-16..-9 all written: the DW load below may read them
        ldx(I.BPF_B, 3, 10, -7),  # 0x77
        ldx(I.BPF_H, 4, 10, -2),  # 0x1122
        ldx(I.BPF_W, 5, 10, -16),  # 0xfffffffe
        ldx(I.BPF_DW, 6, 10, -16),
        movr(0, 3),
        alur(I.BPF_ADD, 0, 4),
        alur(I.BPF_ADD, 0, 5),
        exit_(),
    )
    emu = Emulator(prog_obj(prog))
    res = emu.run(SyscallInput(0))
    assert res.r0 == 0x77 + 0x1122 + 0xFFFF_FFFE


def test_uninitialised_stack_read_stops() -> None:
    """A byte of the stack never written in this run: the kernel refuses the
    read without CAP_PERFMON and reads stale data with it, so the emulator stops
    with an error naming the slot, instead of answering with a zero."""
    partial = flatten(st(I.BPF_W, 10, -8, 1), ldx(I.BPF_DW, 0, 10, -8), exit_())
    with pytest.raises(EmulationError, match=r"fp-8 .*never written"):
        run(partial)
    # a later run starts with nothing written again
    full = flatten(st(I.BPF_DW, 10, -8, 1), ldx(I.BPF_DW, 0, 10, -8), exit_())
    assert run(full) == 1


def test_sign_extending_loads() -> None:
    prog = lambda size, off: flatten(  # noqa: E731
        ld_imm64(2, 0x8081_8283_8485_8687), stx(I.BPF_DW, 10, -8, 2),
        raw(I.BPF_LDX | I.BPF_MEMSX | size, 0, 10, off), exit_())
    assert run(prog(I.BPF_B, -8)) == 0xFFFF_FFFF_FFFF_FF87
    assert run(prog(I.BPF_H, -8)) == 0xFFFF_FFFF_FFFF_8687
    assert run(prog(I.BPF_W, -8)) == 0xFFFF_FFFF_8485_8687


def _atomic(size: int, imm: int, init: int, operand: int, r0: int = 0) -> tuple[int, int, int]:
    """(memory after, src register after, r0 after) of one atomic op."""
    prog = flatten(
        ld_imm64(2, init), stx(I.BPF_DW, 10, -8, 2),
        ld_imm64(3, operand), ld_imm64(0, r0),
        raw(I.BPF_STX | I.BPF_ATOMIC | size, 10, 3, -8, imm),
        ldx(I.BPF_DW, 4, 10, -8),
        stx(I.BPF_DW, 10, -16, 3), stx(I.BPF_DW, 10, -24, 0),
        movr(0, 4), exit_(),
    )  # fmt: skip
    emu = Emulator(prog_obj(prog))
    res = emu.run(SyscallInput(0))
    stack = emu._stacks[0]
    src = struct.unpack_from("<Q", stack, 512 - 16)[0]
    r0 = struct.unpack_from("<Q", stack, 512 - 24)[0]
    return res.r0, src, r0


def test_atomics() -> None:
    W, DW = I.BPF_W, I.BPF_DW
    F = I.BPF_FETCH
    assert _atomic(DW, I.BPF_ADD, 5, 7) == (12, 7, 0)
    assert _atomic(DW, I.BPF_ADD | F, 5, 7) == (12, 5, 0)
    assert _atomic(W, I.BPF_ADD | F, (9 << 32) | M32, 1) == (9 << 32, M32, 0)
    assert _atomic(DW, I.BPF_OR | F, 0xF0, 0x0F) == (0xFF, 0xF0, 0)
    assert _atomic(DW, I.BPF_AND, 0xF0, 0x3C) == (0x30, 0x3C, 0)
    assert _atomic(W, I.BPF_XOR | F, 0xFF, 0x0F) == (0xF0, 0xFF, 0)
    assert _atomic(DW, I.BPF_XCHG, 1, 2) == (2, 1, 0)
    assert _atomic(W, I.BPF_XCHG, (3 << 32) | 1, 2) == ((3 << 32) | 2, 1, 0)
    # cmpxchg: swap when r0 equals memory; r0 gets the old value either way
    assert _atomic(DW, I.BPF_CMPXCHG, 10, 20, r0=10) == (20, 20, 10)
    assert _atomic(DW, I.BPF_CMPXCHG, 10, 20, r0=11) == (10, 20, 10)
    assert _atomic(W, I.BPF_CMPXCHG, (1 << 32) | 10, 20, r0=(7 << 32) | 10) == (
        (1 << 32) | 20, 20, 10)


# --- maps and globals -------------------------------------------------------------------


def _map_prog(helper: int, flags: int = 0) -> list[I.Insn]:
    """key = args[0] (u32), value = args[1] (u64); call HELPER; return r0."""
    return flatten(
        ldx(I.BPF_W, 2, 1, 16), stx(I.BPF_W, 10, -4, 2),
        ldx(I.BPF_DW, 3, 1, 24), stx(I.BPF_DW, 10, -16, 3),
        ld_imm64(1, 0),
        movr(2, 10), add(2, -4),
        movr(3, 10), add(3, -16),
        mov(4, flags),
        call(helper),
        exit_(),
    )  # fmt: skip


MAP_RELOC = [Reloc(insn=4, kind="map", map="m", offset=0, symbol="m")]


def test_hash_map_update_lookup_delete_and_errors() -> None:
    spec = hash_spec(n=2)
    upd = {f: Emulator(prog_obj(_map_prog(H["map_update_elem"], f), [spec], MAP_RELOC))
           for f in (0, 1, 2, 7)}
    # one emulator: programs of an object share maps only within one Emulator
    emu = upd[0]
    assert emu.run(SyscallInput(0, args=(1, 100))).r0 == 0
    assert emu.maps["m"].lookup(1) == (100).to_bytes(8, "little")
    assert emu.run(SyscallInput(0, args=(2, 200))).r0 == 0
    assert emu.run(SyscallInput(0, args=(3, 300))).r0 == -7 & M64  # E2BIG: full
    assert emu.run(SyscallInput(0, args=(2, 201))).r0 == 0  # replace works when full
    noexist, exist, bad = upd[1], upd[2], upd[7]
    assert noexist.run(SyscallInput(0, args=(1, 1))).r0 == 0
    assert noexist.run(SyscallInput(0, args=(1, 1))).r0 == -17 & M64  # EEXIST
    assert exist.run(SyscallInput(0, args=(1, 1))).r0 == -2 & M64  # ENOENT
    assert bad.run(SyscallInput(0, args=(1, 1))).r0 == -22 & M64  # EINVAL
    dele = Emulator(prog_obj(_map_prog(H["map_delete_elem"]), [spec], MAP_RELOC))
    assert dele.run(SyscallInput(0, args=(1,))).r0 == -2 & M64
    dele.maps["m"].update(1, 5)
    assert dele.run(SyscallInput(0, args=(1,))).r0 == 0
    assert dele.maps["m"].lookup(1) is None
    assert dict(emu.maps["m"].items()) == {
        (1).to_bytes(4, "little"): (100).to_bytes(8, "little"),
        (2).to_bytes(4, "little"): (201).to_bytes(8, "little"),
    }


def test_lookup_returns_a_pointer_into_the_value() -> None:
    # v = lookup(args[0]); if (!v) return 0; *v += 1; return *v
    prog = flatten(
        ldx(I.BPF_W, 2, 1, 16), stx(I.BPF_W, 10, -4, 2),
        ld_imm64(1, 0), movr(2, 10), add(2, -4),
        call(H["map_lookup_elem"]),
        jne(0, 0, 2), mov(0, 0), exit_(),
        ldx(I.BPF_DW, 1, 0, 0), add(1, 1), stx(I.BPF_DW, 0, 0, 1),
        ldx(I.BPF_DW, 0, 0, 0), exit_(),
    )  # fmt: skip
    relocs = [Reloc(insn=2, kind="map", map="m", offset=0, symbol="m")]
    for type_ in (1, 5, 9, 10):
        emu = Emulator(prog_obj(prog, [hash_spec(type_=type_)], relocs))
        assert emu.run(SyscallInput(0, args=(7,))).r0 == 0
        emu.maps["m"].update(7, 40)
        assert emu.run(SyscallInput(0, args=(7,))).r0 == 41
        assert emu.run(SyscallInput(0, args=(7,))).r0 == 42
        assert emu.maps["m"].lookup(7) == (42).to_bytes(8, "little")
    # arrays: every index below max_entries exists, zero-filled
    for type_ in (2, 6):
        emu = Emulator(prog_obj(prog, [hash_spec(type_=type_)], relocs))
        assert emu.run(SyscallInput(0, args=(3,))).r0 == 1
        assert emu.run(SyscallInput(0, args=(3,))).r0 == 2
        assert emu.run(SyscallInput(0, args=(4,))).r0 == 0  # out of range: NULL
        assert emu.maps["m"].lookup(3) == (2).to_bytes(8, "little")
        assert emu.maps["m"].lookup(9) is None
        with pytest.raises(EmulationError, match="EEXIST"):
            emu.maps["m"].update(1, 1, flags=1)
        with pytest.raises(EmulationError, match="EINVAL"):
            emu.maps["m"].delete(1)


def test_value_pointer_bounds() -> None:
    prog = flatten(
        st(I.BPF_W, 10, -4, 1), ld_imm64(1, 0), movr(2, 10), add(2, -4),
        call(H["map_lookup_elem"]), jne(0, 0, 1), exit_(),
        ldx(I.BPF_DW, 0, 0, 4), exit_(),
    )  # fmt: skip
    relocs = [Reloc(insn=1, kind="map", map="m", offset=0, symbol="m")]
    emu = Emulator(prog_obj(prog, [hash_spec()], relocs))
    emu.maps["m"].update(1, 0)
    with pytest.raises(EmulationError, match=r"offset 4 of a map value \(8 bytes\) at insn 8"):
        emu.run(SyscallInput(0))


def test_lru_evicts_least_recently_used() -> None:
    lookup = flatten(
        ldx(I.BPF_W, 2, 1, 16), stx(I.BPF_W, 10, -4, 2),
        ld_imm64(1, 0), movr(2, 10), add(2, -4), call(H["map_lookup_elem"]), exit_(),
    )  # fmt: skip
    spec = hash_spec(n=2, type_=9)
    relocs = [Reloc(insn=2, kind="map", map="m", offset=0, symbol="m")]
    emu = Emulator(prog_obj(lookup, [spec], relocs))
    m = emu.maps["m"]
    m.update(1, 1)
    m.update(2, 2)
    emu.run(SyscallInput(0, args=(1,)))  # 1 is now more recent than 2
    m.update(3, 3)  # evicts 2
    assert m.lookup(2) is None and m.lookup(1) is not None and m.lookup(3) is not None
    assert len(m) == 2


def test_globals_persist_across_runs() -> None:
    # counter in .bss (offset 4), initial value from the section
    prog = flatten(
        ld_imm64(1, 0), ldx(I.BPF_W, 0, 1, 0), add(0, 1), stx(I.BPF_W, 1, 0, 0), exit_(),
    )
    bss = MapSpec(".data", 2, 4, 8, 1, 0, (10).to_bytes(4, "little") * 2, True)
    relocs = [Reloc(insn=0, kind="global", map=".data", offset=4, symbol="count")]
    emu = Emulator(prog_obj(prog, [bss], relocs))
    assert [emu.run(SyscallInput(0)).r0 for _ in range(3)] == [11, 12, 13]
    assert emu.maps[".data"].lookup(0) == (10).to_bytes(4, "little") + (13).to_bytes(4, "little")


def test_rodata_is_read_only_for_the_program() -> None:
    prog = flatten(ld_imm64(1, 0), st(I.BPF_W, 1, 0, 1), ret(0))
    ro = MapSpec(".rodata", 2, 4, 4, 1, 0x80, bytes(4), True)
    relocs = [Reloc(insn=0, kind="global", map=".rodata", offset=0, symbol="x")]
    with pytest.raises(EmulationError, match="read-only global .rodata at insn 2"):
        Emulator(prog_obj(prog, [ro], relocs)).run(SyscallInput(0))


def test_map_init_section() -> None:
    entries = b"".join(struct.pack("<II", k, v) for k, v in ((1, 10), (2, 20), (1, 11)))
    specs = [hash_spec(value=4), MapSpec(".rodata.init.m", 2, 4, len(entries), 1, 0x80,
                                         entries, True)]
    emu = Emulator(prog_obj(ret(0), specs))
    assert emu.maps["m"].lookup(1) == (11).to_bytes(4, "little")  # later entry wins
    assert emu.maps["m"].lookup(2) == (20).to_bytes(4, "little")
    bad = [hash_spec(value=3), specs[1]]
    with pytest.raises(EmulationError, match="not a multiple"):
        Emulator(prog_obj(ret(0), bad))


def test_unsupported_map_type() -> None:
    with pytest.raises(EmulationError, match="type 22"):  # queue (ringbuf is modelled)
        Emulator(prog_obj(ret(0), [hash_spec(type_=22)]))


def test_emumap_api_sizes() -> None:
    emu = Emulator(prog_obj(ret(0), [hash_spec()]))
    m = emu.maps["m"]
    with pytest.raises(EmulationError, match="key is 2 bytes"):
        m.update(b"ab", 1)
    with pytest.raises(EmulationError, match="does not fit"):
        m.update(1 << 32, 1)
    m.update(b"\x01\0\0\0", b"\xff" * 8)
    assert m.lookup(1) == b"\xff" * 8
    with pytest.raises(EmulationError, match="ENOENT"):
        m.delete(2)


# --- helpers ----------------------------------------------------------------------------


def _helper_ret(helper: int, env: Environment | None = None,
                inp: SyscallInput | None = None) -> tuple[int, Emulator]:
    emu = Emulator(prog_obj(flatten(call(helper), exit_())), env=env)
    return emu.run(inp or SyscallInput(0)).r0, emu


def test_time_random_ids() -> None:
    env = Environment(time_ns=5000, ktime_step_ns=10, seed=3, pid=7, tgid=8, uid=1, gid=2)
    emu = Emulator(prog_obj(flatten(call(H["ktime_get_ns"]), exit_())), env=env)
    assert [emu.run(SyscallInput(0)).r0 for _ in range(3)] == [5000, 5010, 5020]
    assert emu.run(SyscallInput(0, time_ns=99)).r0 == 99
    a = [_helper_ret(H["get_prandom_u32"], Environment(seed=3))[0] for _ in range(2)]
    b = _helper_ret(H["get_prandom_u32"], Environment(seed=4))[0]
    assert a[0] == a[1] and a[0] != b and 0 <= a[0] <= M32
    assert _helper_ret(H["get_current_pid_tgid"], env)[0] == (8 << 32) | 7
    assert _helper_ret(H["get_current_uid_gid"], env)[0] == (2 << 32) | 1
    # per-call overrides; pid without tgid means a thread-group leader
    inp = SyscallInput(0, pid=50, uid=1000, gid=1001)
    assert _helper_ret(H["get_current_pid_tgid"], env, inp)[0] == (50 << 32) | 50
    assert _helper_ret(H["get_current_uid_gid"], env, inp)[0] == (1001 << 32) | 1000
    r, emu = _helper_ret(H["get_current_uid_gid"], env)
    assert emu.run(SyscallInput(0)).helper_calls == [
        HelperCall(0, "get_current_uid_gid", (2 << 32) | 1)
    ]


def _read_prog(helper: int, size: int) -> list[I.Insn]:
    """ret = HELPER(fp-64, SIZE, args[0]); store ret at fp-72; return ret."""
    return flatten(
        ldx(I.BPF_DW, 3, 1, 16), movr(1, 10), add(1, -64), mov(2, size),
        call(helper), stx(I.BPF_DW, 10, -72, 0), exit_(),
    )  # fmt: skip


def _read(helper: int, size: int, addr: int, env: Environment) -> tuple[int, bytes]:
    emu = Emulator(prog_obj(_read_prog(helper, size)), env=env)
    emu._stacks[0][448:512] = b"\xaa" * 64  # run() zeroes the stack first
    r0 = emu.run(SyscallInput(0, args=(addr,))).r0
    return (r0 - (1 << 64) if r0 >> 63 else r0), bytes(emu._stacks[0][448 : 448 + size])


def test_probe_read_user() -> None:
    env = Environment(memory={0x1000: b"hello world\0", 0x100C: b"more"})
    pr = H["probe_read_user"]
    assert _read(pr, 5, 0x1000, env) == (0, b"hello")
    assert _read(pr, 16, 0x1000, env) == (0, b"hello world\0more")  # adjacent regions
    assert _read(pr, 17, 0x1000, env) == (-14, bytes(17))  # runs into unmapped: EFAULT
    assert _read(pr, 4, 0x2000, env) == (-14, bytes(4))
    assert _read(pr, 0, 0x2000, env) == (0, b"")
    env.dumpable = False
    assert _read(pr, 5, 0x1000, env) == (-1, bytes(5))  # EPERM, zeroed
    env.ptrace_reads = True
    assert _read(pr, 5, 0x1000, env) == (0, b"hello")


def test_probe_read_user_str() -> None:
    env = Environment(memory={0x1000: b"/etc/passwd\0", 0x2000: b"\0", 0x3000: b"abc"})
    prs = H["probe_read_user_str"]
    assert _read(prs, 16, 0x1000, env) == (12, b"/etc/passwd\0" + bytes(4))
    assert _read(prs, 12, 0x1000, env) == (12, b"/etc/passwd\0")
    assert _read(prs, 5, 0x1000, env) == (5, b"/etc\0")  # truncated, NUL-terminated
    assert _read(prs, 8, 0x2000, env) == (0, bytes(8))  # "" gives 0 (strncpy_from_user)
    assert _read(prs, 8, 0x3000, env) == (-14, bytes(8))  # no NUL before unmapped
    assert _read(prs, 3, 0x3000, env) == (3, b"ab\0")
    env.dumpable = False
    assert _read(prs, 8, 0x1000, env) == (-1, bytes(8))


def test_memory_per_call() -> None:
    prog = _read_prog(H["probe_read_user_str"], 8)
    emu = Emulator(prog_obj(prog))
    assert emu.run(SyscallInput(0, args=(0x10,), memory={0x10: b"x\0"})).r0 == 2
    assert emu.run(SyscallInput(0, args=(0x10,))).r0 == -14 & M64


def test_helpers_clobber_r1_to_r5() -> None:
    prog = flatten(mov(1, 1), mov(5, 5), mov(6, 6), call(H["ktime_get_ns"]),
                   movr(0, 5), alur(I.BPF_ADD, 0, 6), exit_())
    assert run(prog) == 6


def test_helper_argument_checks() -> None:
    # r1 is not a map
    with pytest.raises(EmulationError, match="helper map_lookup_elem at insn 1: r1"):
        run(flatten(mov(1, 0), call(H["map_lookup_elem"]), exit_()))
    # key pointer into the context
    prog = flatten(movr(2, 1), ld_imm64(1, 0), call(H["map_lookup_elem"]), exit_())
    relocs = [Reloc(insn=1, kind="map", map="m", offset=0, symbol="m")]
    with pytest.raises(EmulationError, match="key"):
        run(prog, maps=[hash_spec()], relocs=relocs)


# --- BPF-to-BPF calls --------------------------------------------------------------------


def test_bpf_to_bpf_call_saves_r6_r9_and_has_its_own_frame() -> None:
    prog = flatten(
        mov(6, 60), mov(9, 90), st(I.BPF_DW, 10, -8, 7),
        mov(1, 3),
        call_rel(6),  # -> sub at 11
        alur(I.BPF_ADD, 0, 6), alur(I.BPF_ADD, 0, 9),
        ldx(I.BPF_DW, 1, 10, -8), alur(I.BPF_ADD, 0, 1),
        exit_(),
        ret(0)[0],  # padding, never reached
        # sub(r1): clobbers r6, r9 and its own fp-8; returns r1 * 2
        mov(6, 0), mov(9, 0), st(I.BPF_DW, 10, -8, 1000),
        movr(0, 1), alu(I.BPF_MUL, 0, 2), exit_(),
    )  # fmt: skip
    assert run(prog) == 6 + 60 + 90 + 7


def test_call_depth_limit() -> None:
    prog = flatten(call_rel(-1), exit_())  # calls itself forever
    with pytest.raises(EmulationError, match="more than 8 frames"):
        run(prog)


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "insns,pattern",
    [
        (flatten(call(H["trace_printk"]), exit_()),
         r"unsupported helper trace_printk \(#6\) called at insn 0"),
        (flatten(mov(1, 0), call(H["tail_call"]), exit_()), r"unsupported helper tail_call"),
        (flatten(mov(0, 0), kfunc_call(7), exit_()),
         r"unsupported instruction 0x85 at insn 1: kfunc call"),
        (flatten(raw(0xFF), exit_()), r"unsupported instruction 0xff at insn 0"),
        (flatten(raw(I.BPF_LD | I.BPF_ABS | I.BPF_W, imm=0), exit_()),
         r"insn 0: legacy packet load"),
        (flatten(mov(0, 1), alu(I.BPF_DIV, 0, 0), exit_()), r"insn 1: division by a zero"),
        (flatten(mov(0, 1), alu(I.BPF_LSH, 0, 64), exit_()), r"insn 1: shift by 64"),
        (flatten(ldx(I.BPF_DW, 0, 10, 0), exit_()),
         r"load of 8 bytes at offset 512 of the stack of frame 0 \(512 bytes\) at insn 0"),
        (flatten(st(I.BPF_W, 1, 0, 1), ret(0)), r"store to the context .* at insn 0"),
        (flatten(ldx(I.BPF_W, 0, 1, 64), exit_()), r"context offset 64 at insn 0"),
        (flatten(ldx(I.BPF_W, 0, 1, 2), exit_()), r"misaligned 4-byte context load"),
        (flatten(mov(2, 0), ldx(I.BPF_W, 0, 2, 0), exit_()),
         r"address 0x0 at insn 1: not a pointer"),
        (flatten(mov(0, 0), ja(-1)), r"instruction budget of 1000000 exhausted"),
        (flatten(mov(0, 0)), r"runs off the end of the program after insn 0"),
        (flatten(ja(5), exit_()), r"the jump at insn 0 to insn 6 leaves the program"),
        (flatten(ld_imm64(1, 0, src=1), exit_()), r"without a relocation"),
    ],
)
def test_errors(insns: list[I.Insn], pattern: str) -> None:
    with pytest.raises(EmulationError, match=pattern):
        run(insns)


def test_unsupported_code_is_only_an_error_when_reached() -> None:
    prog = flatten(ja(1), call(H["trace_printk"]), ret(ALLOW))
    assert run(prog) == ALLOW


def test_errors_name_the_source_line() -> None:
    lines = {1: SourceLine("f.c", 12, 3, "  return *p;")}
    with pytest.raises(EmulationError, match=r"at insn 1 \(f.c:12: return \*p;\)"):
        run(flatten(mov(2, 0), ldx(I.BPF_W, 0, 2, 0), exit_()), lines=lines)


def test_budget_is_settable_and_counts_exactly() -> None:
    prog = flatten(mov(1, 10), add(1, -1), jne(1, 0, -2), ret(ALLOW))
    emu = Emulator(prog_obj(prog))
    assert emu.run(SyscallInput(0)).insns_executed == 1 + 10 * 2 + 2
    with pytest.raises(EmulationError, match="budget of 20"):
        Emulator(prog_obj(prog), env=Environment(budget=20)).run(SyscallInput(0))


def test_verdict_is_low_32_bits() -> None:
    res = Emulator(prog_obj(flatten(ld_imm64(0, (5 << 32) | 0x50000 | 13), exit_()))).run(
        SyscallInput(0)
    )
    assert res.verdict.action == Action.ERRNO and res.verdict.data == 13
    assert str(res.verdict) == "ERRNO(13)"


def test_ctx_pointer_and_program_choice() -> None:
    assert run(flatten(movr(0, 1), exit_())) == CTX_ADDR
    p1 = Program("a", "seccomp/a", ret(1), [], {0: "a"}, {})
    p2 = Program("b", "seccomp/b", ret(2), [], {0: "b"}, {})
    obj = BpfObject("t.o", "GPL", [p1, p2], {})
    assert Emulator(obj, "b").run(SyscallInput(0)).r0 == 2
    with pytest.raises(Exception, match="choose one"):
        Emulator(obj)


# --- through an ELF object and the CLI --------------------------------------------------


def _write_counter_object(path: Path) -> Path:
    """A filter keeping a per-syscall counter in a hash map (via the ELF writer):
    the third call of a syscall number fails with ERRNO(count)."""
    b = ObjectBuilder()
    code = flatten(
        ldx(I.BPF_W, 2, 1, 0), stx(I.BPF_W, 10, -4, 2),  # key = nr
        st(I.BPF_DW, 10, -16, 1),  # value = 1
        ld_imm64(1, 0), movr(2, 10), add(2, -4),
        call(H["map_lookup_elem"]),
        jeq(0, 0, 6),
        ldx(I.BPF_DW, 1, 0, 0), add(1, 1), stx(I.BPF_DW, 0, 0, 1),
        jmp(I.BPF_JGT, 1, 2, 12),
        ret(ALLOW),
        # first call: insert 1
        ld_imm64(1, 0), movr(2, 10), add(2, -4), movr(3, 10), add(3, -16), mov(4, 0),
        call(H["map_update_elem"]),
        ret(ALLOW),
        # count > 2: ERRNO(count)
        movr(0, 1), alu(I.BPF_OR, 0, 0x50000), exit_(),
    )  # fmt: skip
    b.add_program("counter", code)
    b.add_map("counts", map_type=1, key_size=4, value_size=8, max_entries=64)
    b.add_reloc("seccomp", 3, "counts")
    b.add_reloc("seccomp", 15, "counts")
    return b.write(path)


def test_cli_single_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj = _write_counter_object(tmp_path / "c.o")
    assert load_object(obj).program().name == "counter"
    assert main(["emulate", str(obj), "--syscall", "getpid"]) == 0
    assert capsys.readouterr().out == "ALLOW\n"
    assert main(["emulate", str(obj), "--syscall", "39", "--map", "counts:39=5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "ERRNO" and out["data"] == 6 and out["value"] == 0x50006
    assert out["insns"] > 0 and out["syscall"] == 39
    assert main(["emulate", str(obj), "--syscall", "getpid", "--arch", "aarch64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["syscall"] == 172


def test_cli_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj = _write_counter_object(tmp_path / "c.o")
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        '{"syscall": "getpid"}\n'
        '{"syscall": 39, "args": [1, "0x10"], "pid": 10, "uid": 1000}\n'
        "\n"
        '{"syscall": "getpid", "arch": "x86_64", "time": 5, "mem": {"0x1000": "x"}}\n'
        '{"syscall": "read"}\n'
    )
    assert main(["emulate", str(obj), "--trace", str(trace)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["verdict"] for x in lines] == ["ALLOW", "ALLOW", "ERRNO(3)", "ALLOW"]


@pytest.mark.parametrize(
    "line,message",
    [
        ("not json", "line 2: not valid JSON"),
        ('{"args": [1]}', 'line 2: missing "syscall"'),
        ('{"syscall": "nosuch"}', "line 2: unknown syscall 'nosuch'"),
        ('{"syscall": 1, "args": [1,2,3,4,5,6,7]}', "line 2: args must be a list"),
        ('{"syscall": 1, "foo": 1}', "line 2: unknown key 'foo'"),
        ('{"syscall": 1, "pid": "x"}', "line 2: bad pid"),
    ],
)
def test_cli_trace_bad_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    obj = _write_counter_object(tmp_path / "c.o")
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"syscall": 0}\n' + line + "\n")
    assert main(["emulate", str(obj), "--trace", str(trace)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (["--syscall", "1", "--arg", "6=1"], 2, "argument index"),
        (["--syscall", "1", "--arg", "1=zz"], 2, "bad value of argument 1"),
        (["--syscall", "nosuch"], 2, "unknown syscall"),
        ([], 2, "give --syscall"),
        (["--syscall", "1", "--map", "nomap:1=1"], 2, "no map 'nomap'"),
        (["--syscall", "1", "--map", "counts:1"], 2, "NAME:KEY=VALUE"),
        (["--syscall", "1", "--arch", "sparc"], 2, "unknown architecture"),
    ],
)
def test_cli_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    obj = _write_counter_object(tmp_path / "c.o")
    assert main(["emulate", str(obj), *argv]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_object_and_emulation_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"not an elf")
    assert main(["emulate", str(bad), "--syscall", "1"]) == 1
    b = ObjectBuilder()
    b.add_program("f", flatten(call(H["trace_printk"]), exit_()))
    obj = b.write(tmp_path / "h.o")
    assert main(["emulate", str(obj), "--syscall", "1"]) == 1
    assert "unsupported helper trace_printk" in capsys.readouterr().err


def test_cli_values_and_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # return args[0] + (first byte of the string at args[1])
    b = ObjectBuilder()
    b.add_program("f", flatten(
        ldx(I.BPF_DW, 6, 1, 16), ldx(I.BPF_DW, 3, 1, 24),
        movr(1, 10), add(1, -8), mov(2, 8), call(H["probe_read_user_str"]),
        ldx(I.BPF_B, 0, 10, -8), alur(I.BPF_ADD, 0, 6), exit_(),
    ))  # fmt: skip
    obj = b.write(tmp_path / "m.o")
    argv = ["emulate", str(obj), "--syscall", "0", "--arg", "0=-1", "--arg", "1=0x1000",
            "--mem", "0x1000=A", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["value"] == (0xFFFFFFFF + ord("A")) & M32
    assert main([*argv, "--not-dumpable"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == M32
