"""ebpfseccomp.analysis.cacheability: which syscalls the kernel's action cache serves.

The expectations mirror the kernel selftests of kernel-patches/0011 (section
"the action cache for eBPF filters"); tests/vm/test_cache.py compares the
analysis with the kernel itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asm import (
    ALLOW,
    alu,
    alur,
    call,
    exit_,
    flatten,
    ja,
    jeq,
    jmp,
    jne,
    ld_imm64,
    ldx,
    mov,
    movr,
    ret,
    simple_object,
    st,
    stx,
)

from ebpfseccomp.analysis import cacheability as C
from ebpfseccomp.build import build
from ebpfseccomp.cli import main
from ebpfseccomp.elf import load_object
from ebpfseccomp.insn import (
    BPF_ADD,
    BPF_ALU,
    BPF_AND,
    BPF_ATOMIC,
    BPF_DIV,
    BPF_DW,
    BPF_H,
    BPF_JGE,
    BPF_JSET,
    BPF_LSH,
    BPF_OR,
    BPF_RSH,
    BPF_STX,
    BPF_W,
    Insn,
)

ERRNO = 0x00050001
URETPROBE = 335
ALLOWED = [0, 1, 3, 39, 110, 186, 231]


def cached(insns: list[Insn], arch: str = "x86_64") -> set[int]:
    return set(C.analyze(insns, [arch])[0].cached) - C.EXCEPTIONS[arch]


def outcome(insns: list[Insn], nr: int) -> C.Outcome:
    return C.analyze_syscall(insns, nr, "x86_64")


def jump_chain(nrs: list[int]) -> list[Insn]:
    n = len(nrs)
    return flatten(
        ldx(BPF_W, 2, 1, 0),
        [jeq(2, nr, n - i - 1 + 2) for i, nr in enumerate(nrs)],
        ret(ERRNO),
        ret(ALLOW),
    )


def if_chain(nrs: list[int]) -> list[Insn]:
    return flatten(
        ldx(BPF_W, 2, 1, 0),
        [i for nr in nrs for i in flatten(jne(2, nr, 2), ret(ALLOW))],
        ret(ERRNO),
    )


def bitmask(nrs: list[int]) -> list[Insn]:
    words = [0, 0, 0, 0]
    for nr in nrs:
        words[nr // 64] |= 1 << (nr % 64)
    out: list[Insn] = []
    for i, w in enumerate(words):
        out += ld_imm64(3, w)
        out.append(stx(BPF_DW, 10, -32 + 8 * i, 3))
    return flatten(
        out,
        ldx(BPF_W, 2, 1, 0),
        jmp(BPF_JGE, 2, 256, 12),
        movr(4, 2),
        alu(BPF_RSH, 4, 6),
        ldx(BPF_DW, 3, 10, -32),
        jne(4, 1, 1),
        ldx(BPF_DW, 3, 10, -24),
        jne(4, 2, 1),
        ldx(BPF_DW, 3, 10, -16),
        jne(4, 3, 1),
        ldx(BPF_DW, 3, 10, -8),
        alu(BPF_AND, 2, 63, cls=BPF_ALU),
        alur(BPF_RSH, 3, 2),
        jmp(BPF_JSET, 3, 1, 2),
        ret(ERRNO),
        ret(ALLOW),
    )


@pytest.mark.parametrize("form", [jump_chain, if_chain, bitmask])
def test_allowlist_forms_cache_exactly_the_allowed(form) -> None:  # type: ignore[no-untyped-def]
    assert cached(form(ALLOWED)) == set(ALLOWED)


def test_uretprobe_is_the_kernels_exception() -> None:
    prog = ret(ERRNO)
    assert C.analyze(prog, ["x86_64"])[0].cached == [URETPROBE]
    assert C.analyze(prog, ["i386"])[0].cached == []


GETPPID_HEAD = flatten(ldx(BPF_W, 6, 1, 0), jeq(6, 110, 2), ret(ALLOW))


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (flatten(ldx(BPF_DW, 2, 1, 16), jeq(2, 0, 2), ret(ERRNO), ret(ALLOW)), "branch on args[0]"),
        (flatten(ldx(BPF_DW, 2, 1, 8), jne(2, 0, 2), ret(ERRNO), ret(ALLOW)),
         "branch on instruction_pointer"),
        (flatten(ldx(BPF_W, 0, 1, 16), alu(BPF_OR, 0, ALLOW, cls=BPF_ALU), exit_()), "returns"),
        (flatten(call(5), ret(ALLOW)), "call of bpf_ktime_get_ns"),
        (flatten(mov(2, 5000), alu(BPF_ADD, 2, -1), jne(2, 0, -2), ret(ALLOW)), "steps"),
        (flatten(ld_imm64(1, 0, src=1), ldx(BPF_DW, 0, 1, 0), exit_()), "load through the address"),
        (flatten(movr(2, 10), alu(BPF_ADD, 2, -8), st(BPF_DW, 2, 0, 1),
                 Insn(BPF_STX | BPF_ATOMIC | BPF_DW, 10, 2, -8, BPF_ADD), ret(ALLOW)), "atomic"),
        (flatten(ld_imm64(2, 0x1000), st(BPF_W, 2, 0, 1), ret(ALLOW)), "store outside the stack"),
        (flatten(ldx(BPF_DW, 2, 10, -8), jeq(2, 0, 2), ret(ERRNO), ret(ALLOW)),
         "branch on a stack slot"),
        (flatten(movr(2, 1), jeq(2, 0, 0), ret(ALLOW)), "branch on a pointer"),
    ],
)
def test_getppid_not_cached(tail: list[Insn], reason: str) -> None:
    prog = GETPPID_HEAD + tail
    c = cached(prog)
    assert 110 not in c
    assert 39 in c
    o = outcome(prog, 110)
    assert not o.cached and reason in o.reason, o
    assert o.insn is not None and o.insn >= len(GETPPID_HEAD)


def test_stack_and_arithmetic_are_followed() -> None:
    prog = flatten(
        ldx(BPF_W, 2, 1, 0),
        stx(BPF_DW, 10, -16, 2),
        ldx(BPF_H, 3, 10, -16),
        ldx(BPF_H, 4, 10, -14),
        alu(BPF_LSH, 4, 16),
        alur(BPF_OR, 3, 4),
        movr(5, 10),
        alu(BPF_ADD, 5, -8),
        stx(BPF_DW, 5, 0, 3),
        ldx(BPF_DW, 6, 10, -8),
        jeq(6, 39, 4),
        jeq(6, 0, 3),
        jeq(6, 1, 2),
        ret(ERRNO),
        ret(ALLOW),
    )
    assert cached(prog) == {0, 1, 39}


def test_partial_store_keeps_a_known_slot_known() -> None:
    prog = flatten(
        st(BPF_DW, 10, -8, 0),
        ldx(BPF_W, 2, 1, 0),
        stx(BPF_W, 10, -8, 2),
        ldx(BPF_DW, 3, 10, -8),
        jeq(3, 39, 2),
        ret(ERRNO),
        ret(ALLOW),
    )
    assert cached(prog) == {39}


def test_arch_decides_per_arch() -> None:
    prog = flatten(
        ldx(BPF_W, 2, 1, 0),
        ldx(BPF_W, 3, 1, 4),
        Insn(0x06 | 0x50, 3, 0, 2, 0x40000003),  # jne32 arch, AUDIT_ARCH_I386
        jeq(2, 20, 6),
        ja(7),
        Insn(0x06 | 0x50, 3, 0, 6, 0xC000003E - (1 << 32)),  # AUDIT_ARCH_X86_64
        jeq(2, 39, 3),
        jeq(2, 0, 2),
        jeq(2, 1, 1),
        ja(2),
        ret(ALLOW),
        ret(ERRNO),
    )
    assert cached(prog, "x86_64") == {0, 1, 39}
    assert cached(prog, "i386") == {20}


def test_division_by_zero_runs_as_the_verifier_rewrites_it() -> None:
    prog = flatten(ldx(BPF_W, 2, 1, 0), mov(3, 0), alur(BPF_DIV, 2, 3), jeq(2, 0, 2),
                   ret(ERRNO), ret(ALLOW))
    assert len(cached(prog)) == C.NR_COUNT["x86_64"] - 1


def test_check_reports_the_cache(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    obj = tmp_path / "f.o"
    obj.write_bytes(simple_object(GETPPID_HEAD + flatten(call(5), ret(ALLOW))))
    assert main(["check", str(obj)]) == 0
    out = capsys.readouterr().out
    assert "cache x86_64: 462 of 463 syscalls served from the cache" in out
    assert "not cached, insn 4: call of bpf_ktime_get_ns" in out and "getppid" in out
    assert main(["check", "--json", str(obj)]) == 0
    data = json.loads(capsys.readouterr().out)
    x86 = data["cache"]["x86_64"]
    assert len(x86["cached"]) == 462 and 110 not in x86["cached"]
    (nc,) = x86["not_cached"]
    assert x86["nr_count"] == 463
    assert nc["nr"] == 110 and nc["name"] == "getppid" and nc["insn"] == 4
    assert "helper" in nc["reason"]



EXAMPLES = Path(__file__).resolve().parent.parent / "bpf" / "examples"


def _cache_of_source(tmp_path: Path, name: str, source: str | None = None) -> dict[str, set[int]]:
    src = EXAMPLES / f"{name}.c"
    if source is not None:
        src = tmp_path / f"{name}.c"
        src.write_text(source)
        (tmp_path / "allowlist.h").write_text((EXAMPLES / "allowlist.h").read_text())
    obj = load_object(str(build(src, out=tmp_path / f"{name}.o", arch="x86_64")))
    return {c.arch: set(c.cached) for c in C.analyze_program(obj.program(), obj.maps)}


def test_read_only_table_is_read_at_attach(tmp_path: Path) -> None:
    """A .rodata table (frozen, read-only for programs) is as good as a switch."""
    table = _cache_of_source(tmp_path, "allowlist_table")
    switch = _cache_of_source(tmp_path, "allowlist_switch")
    assert table == switch
    assert 39 in table["x86_64"] and 101 not in table["x86_64"]  # getpid, not ptrace


def test_writable_table_is_not_read(tmp_path: Path) -> None:
    """The same table in .data: user space may change it, nothing is cached."""
    src = (EXAMPLES / "allowlist_table.c").read_text()
    assert "static const __u32 actions" in src
    src = src.replace("static const __u32 actions", "__u32 actions")  # .data
    cache = _cache_of_source(tmp_path, "allowlist_table", src)
    assert cache["x86_64"] == set(C.EXCEPTIONS["x86_64"])
