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


def _bad(code: int, pc: int) -> EmulationError:
    return EmulationError(f"cBPF opcode 0x{code:02x} not allowed in seccomp at insn {pc}")


def seccomp_data(nr: int, arch: int, args: tuple[int, ...], ip: int = 0) -> bytes:
    return struct.pack("<II Q 6Q", nr & _M32, arch & _M32, ip, *(a & (2**64 - 1) for a in args))


def _load(code: int, k: int, data: bytes, mem: list[int], pc: int) -> int:
    """The value an LD (into A) or LDX (into X) instruction loads; only LD
    reads seccomp_data (aligned 32-bit words)."""
    mode = code & 0xE0
    if mode == ABS and code & 0x07 == LD and code & 0x18 == W:
        if k % 4 or k + 4 > len(data):
            raise EmulationError(f"cBPF load at offset {k} of seccomp_data, insn {pc}")
        return struct.unpack_from("<I", data, k)[0]
    if mode == IMM:
        return k
    if mode == MEM:
        return mem[k]
    if mode == LEN:
        return len(data)
    raise _bad(code, pc)


def run(insns: list[tuple[int, int, int, int]], nr: int, arch: int,
        args: tuple[int, ...] = (0,) * 6, ip: int = 0, trace: list[int] | None = None) -> int:
    """The verdict; TRACE, if a list, receives the index of every instruction executed."""
    data = seccomp_data(nr, arch, args, ip)
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(insns)
    while pc < n:
        code, jt, jf, k = insns[pc]
        if trace is not None:
            trace.append(pc)
        pc += 1
        cls = code & 0x07
        if cls == RET:
            return (a if code & 0x18 == A_RET else k) & _M32
        if cls == LD:
            a = _load(code, k, data, mem, pc - 1)
        elif cls == LDX:
            x = _load(code, k, data, mem, pc - 1)
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


_JOPS = {JEQ: "jeq", JGT: "jgt", JGE: "jge", JSET: "jset"}
_AOPS = {0x00: "add", 0x10: "sub", 0x20: "mul", 0x30: "div", 0x40: "or", 0x50: "and",
         0x60: "lsh", 0x70: "rsh", 0x80: "neg", 0x90: "mod", 0xA0: "xor"}
_FIELDS = {0: "nr", 4: "arch", 8: "ip_lo", 12: "ip_hi"}


def _field(k: int) -> str:
    if k in _FIELDS:
        return _FIELDS[k]
    if 16 <= k < 64 and k % 4 == 0:
        i, half = divmod(k - 16, 8)
        return f"args[{i}]_{'hi' if half else 'lo'}"
    return f"[{k}]"


def disasm(insns: list[tuple[int, int, int, int]]) -> str:
    """A readable listing of a seccomp cBPF program (seccomp_data fields named)."""
    out = []
    for pc, (code, jt, jf, k) in enumerate(insns):
        cls = code & 0x07
        if cls == RET:
            text = "ret A" if code & 0x18 == A_RET else f"ret 0x{k:08x}"
        elif cls == LD and code & 0xE0 == ABS:
            text = f"ld {_field(k)}"
        elif cls == LD:
            text = f"ld #{k:#x}" if code & 0xE0 == IMM else f"ld M[{k}]"
        elif cls == LDX:
            text = f"ldx #{k:#x}" if code & 0xE0 == IMM else f"ldx M[{k}]"
        elif cls in (ST, STX):
            text = f"{'st' if cls == ST else 'stx'} M[{k}]"
        elif cls == ALU:
            text = f"{_AOPS.get(code & 0xF0, '?')} {'x' if code & X else f'#{k:#x}'}"
        elif cls == JMP and code & 0xF0 == JA:
            text = f"ja {pc + 1 + k}"
        elif cls == JMP:
            src = "x" if code & X else f"#{k:#x}"
            text = f"{_JOPS.get(code & 0xF0, '?')} {src}, {pc + 1 + jt}, {pc + 1 + jf}"
        else:
            text = "txa" if code & 0xF8 == TXA else "tax"
        out.append(f"{pc:4}: {text}")
    return "\n".join(out)


def accumulator_sources(insns: list[tuple[int, int, int, int]]) -> list[set]:
    """For each instruction, what the accumulator may hold when it runs, over all paths.

    A source is the seccomp_data offset last loaded (with any ALU steps since),
    "imm", "mem" or "init".  Seccomp cBPF only jumps forward, so one pass in
    order sees every predecessor first.
    """
    n = len(insns)
    sources: list[set] = [set() for _ in range(n + 1)]
    if n:
        sources[0].add("init")
    for pc, (code, jt, jf, k) in enumerate(insns):
        here = sources[pc]
        cls = code & 0x07
        if cls == RET or not here:
            continue
        if cls == LD:
            mode = code & 0xE0
            after = {("abs", k)} if mode == ABS else {"imm"} if mode == IMM else {"mem"}
        elif cls == ALU:
            after = {(s, code, k) for s in here}
        elif cls == MISC and code & 0xF8 == TXA:
            after = {"x"}
        else:
            after = set(here)
        if cls == JMP:
            targets = [pc + 1 + k] if code & 0xF0 == JA else [pc + 1 + jt, pc + 1 + jf]
        else:
            targets = [pc + 1]
        for t in targets:
            if t < n:
                sources[t] |= after
    return sources[:n]


def ambiguous_jumps(insns: list[tuple[int, int, int, int]]) -> set[int]:
    """Conditional jumps that compare an accumulator loaded from different fields on
    different paths: a generator bug (the comparison means something else on one path)."""
    srcs = accumulator_sources(insns)
    return {pc for pc, (code, _jt, _jf, _k) in enumerate(insns)
            if code & 0x07 == JMP and code & 0xF0 != JA and len(srcs[pc]) > 1}
