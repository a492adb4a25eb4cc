"""A classic BPF interpreter for seccomp programs (what kernel/bpf/core.c's cBPF path
and net/core/filter.c's seccomp checks allow): the reference side of the
differential test, running libseccomp's output.

`run(insns, nr, arch, args, ip=0) -> int` returns the program's 32-bit verdict.
Loads read `struct seccomp_data` (little-endian: nr, arch, ip, args[6]);
the kernel's checker only lets seccomp programs load aligned 32-bit words,
and that is all this interpreter accepts.
"""

from __future__ import annotations

import struct

from ..errors import EmulationError

# opcode classes and fields (linux/bpf_common.h)
LD, LDX, ST, STX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, ABS, IMM, MEM, LEN = 0x00, 0x20, 0x00, 0x60, 0x80
K, X = 0x00, 0x08
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
A_RET = 0x10
TAX, TXA = 0x00, 0x80

_M32 = 0xFFFFFFFF


def seccomp_data(nr: int, arch: int, args: tuple[int, ...], ip: int = 0) -> bytes:
    return struct.pack("<II Q 6Q", nr & _M32, arch & _M32, ip, *(a & (2**64 - 1) for a in args))


def run(insns: list[tuple[int, int, int, int]], nr: int, arch: int,
        args: tuple[int, ...] = (0,) * 6, ip: int = 0) -> int:
    data = seccomp_data(nr, arch, args, ip)
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(insns)
    while pc < n:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == RET:
            return (a if code & 0x18 == A_RET else k) & _M32
        if cls == LD:
            mode = code & 0xE0
            if mode == ABS and code & 0x18 == W:
                if k % 4 or k + 4 > len(data):
                    raise EmulationError(f"cBPF load at offset {k} of seccomp_data at insn {pc - 1}")
                a = struct.unpack_from("<I", data, k)[0]
            elif mode == IMM:
                a = k
            elif mode == MEM:
                a = mem[k]
            elif mode == LEN:
                a = len(data)
            else:
                raise EmulationError(f"cBPF opcode 0x{code:02x} not allowed in seccomp at insn {pc - 1}")
        elif cls == LDX:
            mode = code & 0xE0
            if mode == IMM:
                x = k
            elif mode == MEM:
                x = mem[k]
            elif mode == LEN:
                x = len(data)
            else:
                raise EmulationError(f"cBPF opcode 0x{code:02x} not allowed in seccomp at insn {pc - 1}")
        elif cls == ST:
            mem[k] = a
        elif cls == STX:
            mem[k] = x
        elif cls == ALU:
            op = code & 0xF0
            src = x if code & X else k
            if op == 0x00:
                a = (a + src) & _M32
            elif op == 0x10:
                a = (a - src) & _M32
            elif op == 0x20:
                a = (a * src) & _M32
            elif op == 0x30:
                if src == 0:
                    return 0  # division by zero ends the program with 0
                a = a // src
            elif op == 0x40:
                a |= src
            elif op == 0x50:
                a &= src
            elif op == 0x60:
                a = (a << src) & _M32 if src < 32 else 0
            elif op == 0x70:
                a = a >> src if src < 32 else 0
            elif op == 0x80:
                a = (-a) & _M32
            elif op == 0x90:
                if src == 0:
                    return 0
                a = a % src
            elif op == 0xA0:
                a ^= src
            else:
                raise EmulationError(f"cBPF ALU opcode 0x{code:02x} at insn {pc - 1}")
        elif cls == JMP:
            op = code & 0xF0
            if op == JA:
                pc += k
                continue
            src = x if code & X else k
            if op == JEQ:
                cond = a == src
            elif op == JGT:
                cond = a > src
            elif op == JGE:
                cond = a >= src
            elif op == JSET:
                cond = bool(a & src)
            else:
                raise EmulationError(f"cBPF jump opcode 0x{code:02x} at insn {pc - 1}")
            pc += jt if cond else jf
        elif cls == MISC:
            if code & 0xF8 == TXA:
                a = x
            else:
                x = a
        else:  # pragma: no cover - all eight classes handled
            raise EmulationError(f"cBPF opcode 0x{code:02x} at insn {pc - 1}")
    raise EmulationError("cBPF program ran off its end")
