"""Big programs: the emulator translates only what runs, names the loop that
exhausts its budget, and the checker handles long straight-line code.

(No timing is asserted here; docs/benchmarks.md reports the figures.)
"""

from __future__ import annotations

import pytest
from asm import exit_, flatten, jne, ldx, mov, ret, simple_object

from ebpfseccomp import insn as I
from ebpfseccomp.analysis.checker import check
from ebpfseccomp.analysis.emulator import Emulator, Environment, SyscallInput
from ebpfseccomp.elf import BpfObject, Program, SourceLine, load_object_bytes
from ebpfseccomp.errors import EmulationError

ALLOW = 0x7FFF0000


def _obj(insns: list[I.Insn], lines: dict[int, SourceLine] | None = None) -> BpfObject:
    p = Program("filt", "seccomp", list(insns), [], {0: "filt"}, lines or {})
    return BpfObject("big.o", "GPL", [p], {})


def _chain(blocks: int) -> list[I.Insn]:
    """nr == k -> ERRNO(k & 0xfff) for k < BLOCKS, else ALLOW: 3 insns a block."""
    insns = [ldx(I.BPF_W, 2, 1, 0)]
    for k in range(blocks):
        insns += [jne(2, k, 2), mov(0, 0x50000 | (k & 0xFFF)), exit_()]
    return insns + ret(ALLOW)


def test_budget_names_the_loop_with_its_source_lines() -> None:
    prog = flatten(mov(1, 100), mov(0, 0), I.Insn(I.BPF_ALU64 | I.BPF_ADD | I.BPF_K, 1, 0, 0, -1),
                   jne(1, 0, -2), ret(ALLOW))
    lines = {2: SourceLine("f.c", 6, 5, "  n--;"), 3: SourceLine("f.c", 7, 3, "  while (n);")}
    emu = Emulator(_obj(prog, lines), env=Environment(budget=50))
    with pytest.raises(EmulationError) as err:
        emu.run(SyscallInput(0))
    msg = str(err.value)
    assert "budget of 50 exhausted in the loop from insn 3 (f.c:7: while (n);) " \
           "back to insn 2 (f.c:6: n--;)" in msg, msg


def test_budget_without_a_loop_says_so() -> None:
    prog = flatten(*[mov(0, k) for k in range(40)], exit_())
    with pytest.raises(EmulationError, match=r"budget of 10 exhausted at insn 0 after 0 "
                                             r"instructions without taking a loop"):
        Emulator(_obj(prog), env=Environment(budget=10)).run(SyscallInput(0))


def test_a_big_program_is_translated_only_where_it_runs() -> None:
    blocks = 20_000  # 60,003 instructions, 40,002 basic blocks
    emu = Emulator(_obj(_chain(blocks)))
    res = emu.run(SyscallInput(7))
    assert str(res.verdict) == "ERRNO(7)"
    assert res.insns_executed == 1 + 7 + 3
    translated = emu.source.count("def _b")
    assert 0 < translated < 2 * blocks // 10
    # the far end: the rest is translated on the way, with the exact count
    res = emu.run(SyscallInput(blocks - 1))
    assert str(res.verdict) == f"ERRNO({(blocks - 1) & 0xFFF})"
    assert res.insns_executed == 1 + (blocks - 1) + 3
    res = emu.run(SyscallInput(blocks + 5))
    assert res.verdict.value == ALLOW and res.insns_executed == 1 + blocks + 2


def test_a_path_longer_than_the_budget_is_not_called_a_loop() -> None:
    emu = Emulator(_obj(_chain(5_000)), env=Environment(budget=1_000))
    with pytest.raises(EmulationError, match="without taking a loop"):
        emu.run(SyscallInput(4_999))


def test_check_a_long_program_from_an_object() -> None:
    obj = load_object_bytes(simple_object(_chain(20_000)), "big.o")
    report = check(obj)
    assert report.loadable and report.insn_count == 60_003
    assert report.cap_bpf_reasons == ["60003 instructions (more than 4096)"]
    unpriv = check(obj, unprivileged=True)
    assert [p.code for p in unpriv.problems] == ["too-big"]
