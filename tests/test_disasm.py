"""The disassembler: mnemonics, names of helpers, maps, globals and context
fields, subprogram labels, source lines."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from asm import (
    ALLOW,
    R_BPF_64_32,
    ObjectBuilder,
    alu,
    alur,
    call,
    call_rel,
    exit_,
    flatten,
    ja,
    jeq,
    jmp,
    ld_imm64,
    ldx,
    mov,
    movr,
    ret,
    simple_object,
    st,
    stx,
)

from ebpfseccomp.cli import main
from ebpfseccomp.elf import load_object_bytes
from ebpfseccomp.insn import (
    BPF_ADD,
    BPF_ALU,
    BPF_ARSH,
    BPF_ATOMIC,
    BPF_B,
    BPF_DW,
    BPF_FETCH,
    BPF_H,
    BPF_JSGT,
    BPF_LSH,
    BPF_STX,
    BPF_W,
    Insn,
)
from ebpfseccomp.inspect import disasm

REPO = Path(__file__).resolve().parent.parent


def listing(data: bytes) -> list[str]:
    text = disasm(load_object_bytes(data, "t.o"))
    return [line.split(": ", 1)[1].strip() for line in text.splitlines() if line[:1] == " "
            or line[:1].isdigit()]  # fmt: skip


def test_context_fields_and_jumps() -> None:
    insns = flatten(
        movr(6, 1),
        ldx(BPF_W, 2, 6, 0),
        ldx(BPF_W, 3, 6, 4),
        ldx(BPF_DW, 4, 6, 32),
        ldx(BPF_DW, 5, 6, 8),
        jeq(2, 0x101, 2),
        ret(ALLOW),
        ret(0x50001),
    )
    out = listing(simple_object(insns))
    assert out[0] == "r6 = r1"
    assert out[1].startswith("r2 = *(u32 *)(r6 + 0)") and out[1].endswith("; nr")
    assert out[2].endswith("; arch")
    assert out[3].endswith("; args[2]")
    assert out[4].endswith("; instruction_pointer")
    assert out[5] == "if r2 == 0x101 goto +2 <8>"
    assert out[6] == "r0 = 0x7fff0000"
    assert out[9] == "exit"


def test_maps_globals_helpers_and_subprogs() -> None:
    b = ObjectBuilder()
    b.add_map("allowed")
    b.add_data(".rodata", bytes(16), {"limit": 8}, readonly=True)
    b.add_program(
        "filt",
        flatten(ld_imm64(1, 0), ld_imm64(2, 0), call(1), call_rel(-1), exit_()),
    )
    b.add_reloc("seccomp", 0, "allowed")
    b.add_reloc("seccomp", 2, "limit")
    b.add_reloc("seccomp", 5, "sub", R_BPF_64_32)
    b.add_subprog("sub", ret(1))
    text = disasm(load_object_bytes(b.build(), "t.o"))
    assert "\n0: r1 = map[allowed]" in text
    assert "\n2: r2 = &.rodata+8 <limit>" in text
    assert "\n4: call bpf_map_lookup_elem#1" in text
    assert "\n5: call +1 <sub>" in text
    assert "\nsub:\n" in text and "\nfilt:\n" in text
    assert "; map allowed: hash, key 4 B, value 8 B, max_entries 16" in text
    assert "; global .rodata: 16 bytes" in text
    # the second slot of ld_imm64 is not listed
    assert "\n1:" not in text and "\n3:" not in text


def test_alu_store_and_atomic_mnemonics() -> None:
    insns = flatten(
        mov(2, -1),
        alu(BPF_LSH, 2, 32),
        alu(BPF_ARSH, 2, 32),
        alur(BPF_ADD, 3, 2),
        Insn(BPF_ALU | 0xB0, 4, 0, 0, -5),  # w4 = -5
        st(BPF_H, 10, -2, 7),
        stx(BPF_B, 10, -3, 4),
        Insn(BPF_STX | BPF_ATOMIC | BPF_DW, 10, 2, -16, 0x00),  # lock add
        Insn(BPF_STX | BPF_ATOMIC | BPF_DW, 10, 2, -16, 0x00 | BPF_FETCH),
        Insn(0xDC, 5, 0, 0, 16),  # be16
        jmp(BPF_JSGT, 2, 3, 0),
        ja(0),
        ld_imm64(7, 0x1122334455667788),
        ret(ALLOW),
    )
    out = listing(simple_object(insns))
    assert out[:5] == ["r2 = -1", "r2 <<= 32", "r2 s>>= 32", "r3 += r2", "w4 = -5"]
    assert out[5] == "*(u16 *)(r10 - 2) = 7"
    assert out[6] == "*(u8 *)(r10 - 3) = r4"
    assert out[7] == "lock *(u64 *)(r10 - 16) += r2"
    assert out[8] == "r2 = atomic_fetch_add((u64 *)(r10 - 16), r2)"
    assert out[9] == "r5 = be16 r5"
    assert out[10] == "if r2 s> 3 goto +0 <11>"
    assert out[11] == "goto +0 <12>"
    assert out[12] == "r7 = 0x1122334455667788 ll"


def test_unknown_opcodes_do_not_break_the_listing() -> None:
    out = listing(simple_object(flatten(Insn(0xFF, 0, 0, 0, 0), call(999), ret(ALLOW))))
    assert "unknown" in out[0]
    assert out[1] == "call unknown#999"


def test_bytes_option() -> None:
    text = disasm(load_object_bytes(simple_object(ret(ALLOW))), show_bytes=True)
    assert "b7 00 00 00 00 00 ff 7f" in text


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")
def test_source_lines_from_btf(tmp_path: Path) -> None:
    from ebpfseccomp.build import build

    src = REPO / "bpf/examples/arch_check.c"
    if not src.exists():
        pytest.skip("example not present")
    obj_path = build(src, tmp_path / "arch_check.o")
    from ebpfseccomp.elf import load_object

    text = disasm(load_object(obj_path))
    assert "[arch_check.c:" in text
    assert "; arch" in text


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "f.o"
    path.write_bytes(simple_object(ret(ALLOW)))
    assert main(["disasm", str(path)]) == 0
    out = capsys.readouterr().out
    assert "filt:" in out and "exit" in out
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"nope")
    assert main(["disasm", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "not an ELF file" in err and "Traceback" not in err
