"""The eBPF instruction encoding: constants, decoding and encoding.

Shared by the ELF reader, the checker, the disassembler, the emulator and the
tests' assembler.  One instruction is 8 bytes (little-endian here: the BPF
target clang emits for x86_64 and aarch64 hosts); BPF_LD|BPF_IMM|BPF_DW takes
two slots, the second holding the upper 32 bits of the immediate.
"""

from __future__ import annotations

import struct
import sys
from itertools import repeat
from typing import NamedTuple

# instruction classes
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_JMP32 = 0x06
BPF_ALU64 = 0x07

# size (load/store)
BPF_W = 0x00
BPF_H = 0x08
BPF_B = 0x10
BPF_DW = 0x18
SIZE_BYTES = {BPF_W: 4, BPF_H: 2, BPF_B: 1, BPF_DW: 8}

# mode (load/store)
BPF_IMM = 0x00
BPF_ABS = 0x20
BPF_IND = 0x40
BPF_MEM = 0x60
BPF_MEMSX = 0x80
BPF_ATOMIC = 0xC0

# source
BPF_K = 0x00
BPF_X = 0x08

# ALU operations
BPF_ADD = 0x00
BPF_SUB = 0x10
BPF_MUL = 0x20
BPF_DIV = 0x30
BPF_OR = 0x40
BPF_AND = 0x50
BPF_LSH = 0x60
BPF_RSH = 0x70
BPF_NEG = 0x80
BPF_MOD = 0x90
BPF_XOR = 0xA0
BPF_MOV = 0xB0
BPF_ARSH = 0xC0
BPF_END = 0xD0

ALU_NAMES = {
    BPF_ADD: "add", BPF_SUB: "sub", BPF_MUL: "mul", BPF_DIV: "div",
    BPF_OR: "or", BPF_AND: "and", BPF_LSH: "lsh", BPF_RSH: "rsh",
    BPF_NEG: "neg", BPF_MOD: "mod", BPF_XOR: "xor", BPF_MOV: "mov",
    BPF_ARSH: "arsh", BPF_END: "end",
}  # fmt: skip

# jump operations
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40
BPF_JNE = 0x50
BPF_JSGT = 0x60
BPF_JSGE = 0x70
BPF_CALL = 0x80
BPF_EXIT = 0x90
BPF_JLT = 0xA0
BPF_JLE = 0xB0
BPF_JSLT = 0xC0
BPF_JSLE = 0xD0

JMP_NAMES = {
    BPF_JA: "ja", BPF_JEQ: "jeq", BPF_JGT: "jgt", BPF_JGE: "jge",
    BPF_JSET: "jset", BPF_JNE: "jne", BPF_JSGT: "jsgt", BPF_JSGE: "jsge",
    BPF_CALL: "call", BPF_EXIT: "exit", BPF_JLT: "jlt", BPF_JLE: "jle",
    BPF_JSLT: "jslt", BPF_JSLE: "jsle",
}  # fmt: skip

# atomic operations (imm of BPF_STX|BPF_ATOMIC)
BPF_FETCH = 0x01
BPF_XCHG = 0xE0 | BPF_FETCH
BPF_CMPXCHG = 0xF0 | BPF_FETCH

# src_reg values with a special meaning
BPF_PSEUDO_MAP_FD = 1  # ld_imm64: imm is a map
BPF_PSEUDO_MAP_VALUE = 2  # ld_imm64: imm is a map, next imm an offset
BPF_PSEUDO_CALL = 1  # call: imm is a pc-relative BPF-to-BPF call
BPF_PSEUDO_KFUNC_CALL = 2

REG_COUNT = 11  # r0..r10, r10 the read-only frame pointer
INSN_SIZE = 8

_INSN = struct.Struct("<BBhi")


class Insn(NamedTuple):
    """One 8-byte eBPF instruction slot (an immutable tuple: cheap to make by
    the million)."""

    code: int
    dst: int
    src: int
    off: int
    imm: int

    @property
    def cls(self) -> int:
        return self.code & 0x07

    @property
    def op(self) -> int:
        """ALU/JMP operation bits."""
        return self.code & 0xF0

    @property
    def source(self) -> int:
        return self.code & 0x08

    @property
    def size(self) -> int:
        """Load/store size bits."""
        return self.code & 0x18

    @property
    def mode(self) -> int:
        return self.code & 0xE0

    def is_ld_imm64(self) -> bool:
        return self.code == (BPF_LD | BPF_IMM | BPF_DW)

    def is_call(self) -> bool:
        return self.code == (BPF_JMP | BPF_CALL)

    def is_helper_call(self) -> bool:
        return self.is_call() and self.src == 0

    def is_pseudo_call(self) -> bool:
        return self.is_call() and self.src == BPF_PSEUDO_CALL

    def is_exit(self) -> bool:
        return self.code == (BPF_JMP | BPF_EXIT)

    def encode(self) -> bytes:
        return _INSN.pack(
            self.code, (self.src & 0xF) << 4 | (self.dst & 0xF), self.off, self.imm
        )


class DecodeError(ValueError):
    """Raised when bytes are not a whole number of instructions."""


def decode(data: bytes) -> list[Insn]:
    """Split DATA into instruction slots (ld_imm64 stays two slots)."""
    if len(data) % INSN_SIZE:
        raise DecodeError(
            f"{len(data)} bytes is not a multiple of the {INSN_SIZE}-byte "
            "instruction size"
        )
    data = bytes(data)
    if sys.byteorder != "little":
        return [tuple.__new__(Insn, (code, regs & 0xF, regs >> 4, off, imm))
                for code, regs, off, imm in _INSN.iter_unpack(data)]
    # field by field in C (strided slices, memoryview casts): a million
    # instructions decode in a fraction of a second
    regs = data[1::8]
    words = memoryview(data)
    fields = zip(data[0::8], regs.translate(_LOW_NIBBLE), regs.translate(_HIGH_NIBBLE),
                 words.cast("h")[1::4], words.cast("i")[1::2], strict=True)
    return list(map(tuple.__new__, repeat(Insn), fields))


_LOW_NIBBLE = bytes(b & 0xF for b in range(256))
_HIGH_NIBBLE = bytes(b >> 4 for b in range(256))


def encode(insns: list[Insn]) -> bytes:
    return b"".join(i.encode() for i in insns)


def ld_imm64_value(lo: Insn, hi: Insn) -> int:
    """The 64-bit immediate of an ld_imm64 pair, as an unsigned integer."""
    return (lo.imm & 0xFFFFFFFF) | ((hi.imm & 0xFFFFFFFF) << 32)
