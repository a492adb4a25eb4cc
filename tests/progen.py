"""Random seccomp programs for the verifier differential test (issue 13).

Each program is a sequence of statements, each a few instructions, over the
shapes that decide a verifier's answer: context loads at valid and invalid
offsets, sizes and alignments (and through a moved context pointer), stack
stores and loads that may read bytes never written, ALU on registers that may
be uninitialised, division by a register, helper calls of every tier (and
ones no seccomp program may call, and kfuncs), forward branches, loops with
a constant bound and with a bound from a syscall argument, pointers stored
to the stack or returned, and an exit with or without r0 set.  No maps: each
program loads with raw bpf(2), with no fd to patch in.

`generate(seed)` is deterministic; `encode(insns)` gives the bytes bpf(2)
takes and `elf(insns)` an object `ebpfseccomp check` reads.
"""

from __future__ import annotations

import random

from asm import (
    add,
    alu,
    alur,
    call,
    exit_,
    jmp,
    jmpr,
    kfunc_call,
    ldx,
    mov,
    movr,
    simple_object,
    st,
    stx,
)

from ebpfseccomp.insn import (
    BPF_ADD,
    BPF_AND,
    BPF_B,
    BPF_DIV,
    BPF_DW,
    BPF_H,
    BPF_JEQ,
    BPF_JGT,
    BPF_JLT,
    BPF_JNE,
    BPF_LSH,
    BPF_W,
    Insn,
)

ALLOW = 0x7FFF0000
SIZES = (BPF_B, BPF_H, BPF_W, BPF_DW)
SIZE_BYTES = {BPF_B: 1, BPF_H: 2, BPF_W: 4, BPF_DW: 8}
#: helpers: ktime_get_ns, get_prandom_u32 (extended), get_smp_processor_id
#: (tracing), skb_load_bytes (never for seccomp), timer_cancel (refused)
HELPERS = (5, 7, 8, 26, 172)


def _ctx_load(rng: random.Random) -> list[Insn]:
    size = rng.choice(SIZES)
    if rng.random() < 0.8:
        width = SIZE_BYTES[size]
        off = rng.randrange(0, 64 // width) * width
    else:
        off = rng.choice([2, 3, 6, 62, 64, 72, -4, -8])
    return [ldx(size, rng.randint(2, 5), 6, off)]


def _moved_ctx_load(rng: random.Random) -> list[Insn]:
    return [movr(2, 6), add(2, rng.choice([8, 16])), ldx(BPF_W, 3, 2, 0)]


def _stack_store(rng: random.Random) -> list[Insn]:
    off = -8 * rng.randint(1, 8)
    if rng.random() < 0.5:
        return [st(rng.choice((BPF_DW, BPF_W)), 10, off, rng.randint(0, 99))]
    return [stx(BPF_DW, 10, off, rng.randint(2, 5))]


def _stack_load(rng: random.Random) -> list[Insn]:
    return [ldx(BPF_DW, rng.randint(2, 5), 10, -8 * rng.randint(1, 8))]


def _alu(rng: random.Random) -> list[Insn]:
    d = rng.randint(2, 5)
    if rng.random() < 0.4:
        return [mov(d, rng.randint(-5, 70))]
    if rng.random() < 0.5:
        return [alu(rng.choice((BPF_ADD, BPF_AND, BPF_LSH)), d, rng.randint(0, 7))]
    return [alur(rng.choice((BPF_ADD, BPF_AND)), d, rng.randint(2, 5))]


def _div(rng: random.Random) -> list[Insn]:
    return [alur(BPF_DIV, rng.randint(2, 5), rng.randint(2, 5))]


def _call(rng: random.Random) -> list[Insn]:
    if rng.random() < 0.08:
        return [kfunc_call(rng.randint(1, 100))]
    return [call(rng.choice(HELPERS))]


def _pointer(rng: random.Random) -> list[Insn]:
    """A stack pointer spilled to the stack, or left in a register."""
    d = rng.randint(2, 5)
    out = [movr(d, 10), add(d, -8 * rng.randint(1, 8))]
    if rng.random() < 0.5:
        out.append(stx(BPF_DW, 10, -8 * rng.randint(1, 8), d))
    return out


def _loop(rng: random.Random) -> list[Insn]:
    """r7 = 0; do r7 += 1; while (r7 < bound): bound a constant or an argument."""
    if rng.random() < 0.5:
        return [mov(7, 0), add(7, 1), jmp(BPF_JLT, 7, rng.randint(2, 20), -2)]
    return [mov(7, 0), ldx(BPF_DW, 8, 6, 16), add(7, 1), jmpr(BPF_JGT, 8, 7, -2)]


STATEMENTS = (
    (_ctx_load, 5), (_moved_ctx_load, 1), (_stack_store, 4), (_stack_load, 3),
    (_alu, 5), (_div, 1), (_call, 2), (_pointer, 1), (_loop, 1),
)


def generate(seed: int) -> list[Insn]:
    rng = random.Random(seed)
    funcs = [f for f, w in STATEMENTS for _ in range(w)]
    stmts: list[list[Insn]] = [[movr(6, 1)]]
    if rng.random() < 0.7:  # most programs start from defined registers
        stmts.append([mov(r, 0) for r in range(2, 6)])
    for _ in range(rng.randint(2, 12)):
        stmts.append(rng.choice(funcs)(rng))
    # forward branches: skip some following statements
    out: list[Insn] = []
    for k, stmt in enumerate(stmts):
        if k > 1 and rng.random() < 0.2:
            skip = sum(len(s) for s in stmts[k : k + rng.randint(1, 3)])
            op = rng.choice((BPF_JEQ, BPF_JNE, BPF_JGT))
            out.append(jmp(op, rng.randint(2, 5), rng.randint(0, 64), skip))
        out.extend(stmt)
    end = rng.random()
    if end < 0.75:
        out.append(mov(0, ALLOW if rng.random() < 0.7 else 0x50001))
    elif end < 0.85:
        out.append(movr(0, 10))  # a pointer as the return value
    out.append(exit_())
    return out


def encode(insns: list[Insn]) -> bytes:
    return b"".join(i.encode() for i in insns)


def elf(insns: list[Insn]) -> bytes:
    return simple_object(insns)
