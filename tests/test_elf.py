"""The ELF reader: linking, maps, globals, relocations, line info, and every
kind of bad input it must turn into one clear ObjectError."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from asm import (
    ALLOW,
    R_BPF_64_32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_PROGBITS,
    STB_GLOBAL,
    STT_FUNC,
    ObjectBuilder,
    call,
    call_rel,
    exit_,
    flatten,
    ld_imm64,
    ldx,
    mov,
    ret,
    simple_object,
)

from ebpfseccomp.elf import load_object, load_object_bytes
from ebpfseccomp.errors import ObjectError
from ebpfseccomp.insn import BPF_PSEUDO_CALL, BPF_W

CLANG = shutil.which("clang")

SNIPPET = r"""
#define SEC(n) __attribute__((section(n), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
struct seccomp_data { int nr; unsigned int arch; unsigned long long instruction_pointer;
                      unsigned long long args[6]; };
static long (*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
struct { __uint(type, 1); __uint(max_entries, 64); __type(key, int);
         __type(value, unsigned long long); } allowed SEC(".maps");
int counter;
const volatile int limit = 7;
char pad[3] = "ab";
static __attribute__((noinline)) int twice(int x) { return 2 * x + counter; }
static __attribute__((noinline)) int outer(int x) { return twice(x) + 1; }
SEC("seccomp") int filt(struct seccomp_data *ctx)
{
    int nr = ctx->nr;
    if (bpf_map_lookup_elem(&allowed, &nr)) { counter++; return 0x7fff0000; }
    if (outer(nr) > limit + pad[1]) return 0;
    return 0x50001;
}
char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""


@pytest.fixture(scope="module")
def clang_obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if CLANG is None:
        pytest.skip("clang not installed")
    d = tmp_path_factory.mktemp("clang")
    src = d / "snippet.c"
    src.write_text(SNIPPET)
    out = d / "snippet.o"
    subprocess.run([CLANG, "-O2", "-g", "-target", "bpf", "-c", str(src), "-o", str(out)],
                   check=True)  # fmt: skip
    return out


def _err(data: bytes, path: str = "bad.o") -> str:
    with pytest.raises(ObjectError) as exc:
        load_object_bytes(data, path)
    text = exc.value.render()
    assert text.startswith(f"{path}: ")
    assert "\n" not in text
    return text


# --- objects clang writes --------------------------------------------------------


def test_clang_object_programs_maps_relocs(clang_obj: Path) -> None:
    obj = load_object(clang_obj)
    assert obj.license == "Dual BSD/GPL"
    prog = obj.program()
    assert prog.name == "filt" and prog.section == "seccomp"
    # the two .text subprograms are appended and named
    names = list(prog.subprogs.values())
    assert names[0] == "filt" and set(names[1:]) == {"outer", "twice"}
    assert list(prog.subprogs)[0] == 0
    # every pseudo call lands on a subprogram start
    for i, ins in enumerate(prog.insns):
        if ins.is_pseudo_call():
            assert i + ins.imm + 1 in prog.subprogs
    m = obj.maps["allowed"]
    assert (m.type, m.key_size, m.value_size, m.max_entries, m.is_global) == (1, 4, 8, 64, False)
    assert obj.maps[".rodata"].initial == struct.pack("<i", 7)
    assert obj.maps[".bss"].initial == bytes(obj.maps[".bss"].value_size)
    assert obj.maps[".data"].initial == b"ab\0"
    assert obj.maps[".rodata"].is_global and obj.maps[".rodata"].type == 2
    kinds = {(r.kind, r.map, r.symbol) for r in prog.relocs}
    assert ("map", "allowed", "allowed") in kinds
    assert ("global", ".bss", "counter") in kinds
    assert ("global", ".rodata", "limit") in kinds
    for r in prog.relocs:
        assert prog.insns[r.insn].is_ld_imm64()
    # the relocation inside the .text subprogram is mapped to its linked index
    twice = next(k for k, v in prog.subprogs.items() if v == "twice")
    assert any(r.insn > twice and r.symbol == "counter" for r in prog.relocs)


def test_clang_object_line_info(clang_obj: Path) -> None:
    prog = load_object(clang_obj).program()
    assert prog.lines, "BTF line info expected with -g"
    texts = {ln.text for ln in prog.lines.values()}
    assert any("ctx->nr" in t for t in texts)
    first = prog.lines[0]
    assert first.file.endswith("snippet.c") and first.line > 0
    assert str(first).startswith("snippet.c:")


def test_clang_object_without_btf_has_no_lines(tmp_path: Path) -> None:
    if CLANG is None:
        pytest.skip("clang not installed")
    src = tmp_path / "nobtf.c"
    src.write_text(
        "#define SEC(n) __attribute__((section(n), used))\n"
        'SEC("seccomp") int f(void *ctx) { return 0x7fff0000; }\n'
    )
    out = tmp_path / "nobtf.o"
    subprocess.run([CLANG, "-O2", "-target", "bpf", "-c", str(src), "-o", str(out)], check=True)
    obj = load_object(out)
    assert obj.program().lines == {} and obj.license is None


# --- hand-made objects --------------------------------------------------------------


def test_minimal_object() -> None:
    obj = load_object_bytes(simple_object(ret(ALLOW)))
    prog = obj.program()
    assert prog.name == "filt" and len(prog.insns) == 2 and prog.subprogs == {0: "filt"}
    assert obj.license == "GPL" and obj.maps == {}


def test_section_relative_call_is_linked() -> None:
    b = ObjectBuilder()
    b.add_program("filt", flatten(call_rel(-1), exit_()))
    b.add_subprog("first", ret(1))
    b.add_subprog("second", ret(2))
    # call .text+16 (the second function) the way clang does for static functions
    b.add_reloc("seccomp", 0, ".text", R_BPF_64_32)
    data = bytearray(b.build())
    obj = load_object_bytes(bytes(data))
    prog = obj.program()
    # patch: imm -1 against .text means .text+0; make a second object calling +16
    assert prog.subprogs == {0: "filt", 2: "first"}
    assert prog.insns[0].imm == 1 and prog.insns[0].src == BPF_PSEUDO_CALL

    b2 = ObjectBuilder()
    b2.add_program("filt", flatten(call_rel(1), exit_()))  # .text + (1+1)*8 = second
    b2.add_subprog("first", ret(1))
    b2.add_subprog("second", ret(2))
    b2.add_reloc("seccomp", 0, ".text", R_BPF_64_32)
    prog2 = load_object_bytes(b2.build()).program()
    assert prog2.subprogs == {0: "filt", 2: "second"}
    assert prog2.insns[2].imm == 2  # r0 = 2


def test_transitive_and_shared_subprograms_are_placed_once() -> None:
    b = ObjectBuilder()
    b.add_program("filt", flatten(call_rel(-1), call_rel(-1), exit_()))
    b.add_reloc("seccomp", 0, "a", R_BPF_64_32)
    b.add_reloc("seccomp", 1, "b", R_BPF_64_32)
    b.add_subprog("a", flatten(call_rel(-1), exit_()))  # a calls b
    b.add_subprog("b", ret(7))
    b.add_reloc(".text", 0, "b", R_BPF_64_32)
    prog = load_object_bytes(b.build()).program()
    assert sorted(prog.subprogs.values()) == ["a", "b", "filt"]
    assert len(prog.insns) == 3 + 2 + 2
    for i, ins in enumerate(prog.insns):
        if ins.is_pseudo_call():
            assert prog.subprogs[i + ins.imm + 1] in ("a", "b")


def test_globals_and_btf_maps() -> None:
    b = ObjectBuilder()
    b.add_map("counts", map_type=1, key_size=4, value_size=8, max_entries=100, map_flags=1)
    b.add_data(".rodata", bytes(range(8)), {"cfg": 4}, readonly=True)
    b.add_data(".bss", bytes(16), {"state": 8}, nobits=True)
    b.add_data(".data.extra", b"xyz\0", {"extra": 0})
    insns = flatten(ld_imm64(1, 0), ld_imm64(2, 2), ld_imm64(3, 0), ld_imm64(4, 0), ret(ALLOW))
    b.add_program("filt", insns)
    b.add_reloc("seccomp", 0, "counts")
    b.add_reloc("seccomp", 2, "cfg")  # addend 2 already in the insn: cfg+2 = .rodata+6
    b.add_reloc("seccomp", 4, "state")
    b.add_reloc("seccomp", 6, "extra")
    obj = load_object_bytes(b.build())
    assert obj.maps["counts"].flags == 1 and obj.maps["counts"].max_entries == 100
    assert obj.maps[".data.extra"].initial == b"xyz\0"
    relocs = [(r.insn, r.kind, r.map, r.offset, r.symbol) for r in obj.program().relocs]
    assert relocs == [
        (0, "map", "counts", 0, "counts"),
        (2, "global", ".rodata", 6, "cfg"),
        (4, "global", ".bss", 8, "state"),
        (6, "global", ".data.extra", 0, "extra"),
    ]


def test_program_selection() -> None:
    b = ObjectBuilder()
    b.add_program("one", ret(ALLOW))
    b.add_program("two", ret(0), section="seccomp/two")
    obj = load_object_bytes(b.build(), "multi.o")
    assert [p.name for p in obj.programs] == ["one", "two"]
    with pytest.raises(ObjectError, match=r"2 seccomp programs \(one, two\).*--program NAME"):
        obj.program()
    assert obj.program("two").section == "seccomp/two"
    assert obj.program("seccomp/two").name == "two"
    with pytest.raises(ObjectError, match="no seccomp program named 'three'.*one, two"):
        obj.program("three")


def test_section_without_function_symbols_is_one_program() -> None:
    b = ObjectBuilder()
    b.add_code("", ret(ALLOW), "seccomp")
    prog = load_object_bytes(b.build()).program()
    assert prog.name == "seccomp" and len(prog.insns) == 2


# --- bad input -----------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ObjectError, match="cannot read"):
        load_object(tmp_path / "nope.o")
    with pytest.raises(ObjectError, match="directory"):
        load_object(tmp_path)


def test_not_elf() -> None:
    assert "not an ELF file" in _err(b"hello world, this is text\n")
    assert "empty file" in _err(b"")
    assert "C source" in _err(b'#include <ebpfseccomp/filter.h>\nSEC("seccomp") int f')


def test_wrong_machine() -> None:
    text = _err(ObjectBuilder(machine=62).build())
    assert "ELF for x86-64, not BPF: did you compile with clang -target bpf?" in text
    assert "AArch64" in _err(ObjectBuilder(machine=183).build())


def test_32bit_and_big_endian() -> None:
    data = bytearray(simple_object(ret(ALLOW)))
    data[4] = 1
    assert "32-bit" in _err(bytes(data))
    data = bytearray(simple_object(ret(ALLOW)))
    data[5] = 2
    data[18:20] = struct.pack(">H", 247)
    assert "big-endian" in _err(bytes(data))


def test_not_relocatable() -> None:
    assert "an executable, not a relocatable" in _err(ObjectBuilder(elf_type=2).build())


def test_no_seccomp_program_lists_sections() -> None:
    b = ObjectBuilder()
    b.add_program("sock", ret(0), section="socket")
    b.add_program("x", ret(2), section="xdp")
    text = _err(b.build())
    assert "no seccomp program" in text
    assert "'socket' (a socket filter)" in text and "'xdp' (an XDP program)" in text
    assert 'SEC("seccomp")' in text
    b = ObjectBuilder()
    b.add_subprog("helper", ret(0))
    assert "all code is in .text" in _err(b.build())
    assert "holds no code" in _err(ObjectBuilder().build())


def test_truncated_file() -> None:
    data = simple_object(ret(ALLOW))
    for cut in (10, 63, 64, 100, len(data) // 2, len(data) - 1):
        text = _err(data[:cut])
        assert "truncated" in text or "malformed" in text, text


def test_truncated_section() -> None:
    data = bytearray(simple_object(ret(ALLOW)))
    shoff = struct.unpack_from("<Q", data, 40)[0]
    # section 1 is "seccomp": make it claim far more bytes than the file has
    struct.pack_into("<Q", data, shoff + 64 + 32, 1 << 20)
    text = _err(bytes(data))
    assert "section 'seccomp' is truncated" in text


def test_code_size_not_multiple_of_8() -> None:
    b = ObjectBuilder()
    b.add_program("filt", ret(ALLOW))
    b.add_raw_section("seccomp/odd", b"\x95" + bytes(11), SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR)
    assert "is 12 bytes, not a multiple of 8" in _err(b.build())


def test_function_symbol_outside_section() -> None:
    b = ObjectBuilder()
    b.add_program("filt", ret(ALLOW))
    b.add_symbol("ghost", "seccomp", value=64, size=16, type=STT_FUNC, bind=STB_GLOBAL)
    assert "ghost" in _err(b.build())


def test_reloc_against_undefined_symbol() -> None:
    b = ObjectBuilder()
    b.add_program("filt", flatten(ld_imm64(1, 0), ret(ALLOW)))
    b.add_symbol("some_ksym", None)
    b.add_reloc("seccomp", 0, "some_ksym")
    assert "undefined symbol 'some_ksym'" in _err(b.build())


def test_kfunc_reloc_is_refused() -> None:
    b = ObjectBuilder()
    b.add_program("filt", flatten(call(0), ret(ALLOW)))
    b.add_symbol("bpf_some_kfunc", None, type=STT_FUNC)
    b.add_reloc("seccomp", 0, "bpf_some_kfunc", R_BPF_64_32)
    assert "externs (kfuncs" in _err(b.build())


def test_reloc_on_non_ld_imm64() -> None:
    b = ObjectBuilder()
    b.add_data(".data", bytes(8), {"x": 0})
    b.add_program("filt", flatten(mov(1, 0), ret(ALLOW)))
    b.add_reloc("seccomp", 0, "x")
    assert "non-ld_imm64 instruction" in _err(b.build())


def test_reloc_offset_outside_section() -> None:
    b = ObjectBuilder()
    b.add_data(".data", bytes(8), {"x": 0})
    b.add_program("filt", flatten(ret(ALLOW)))
    b.add_reloc("seccomp", 5, "x")
    assert "outside the section" in _err(b.build())


def test_global_offset_out_of_range() -> None:
    b = ObjectBuilder()
    b.add_data(".data", bytes(8), {"x": 4})
    b.add_program("filt", flatten(ld_imm64(1, 8), ret(ALLOW)))  # x + 8 = .data+12
    b.add_reloc("seccomp", 0, "x")
    assert "points to .data+12, outside the 8-byte section" in _err(b.build())


def test_reloc_symbol_index_out_of_range() -> None:
    b = ObjectBuilder()
    b.add_data(".data", bytes(8), {"x": 0})
    b.add_program("filt", flatten(ld_imm64(1, 0), ret(ALLOW)))
    b.add_reloc("seccomp", 0, "x")
    data = bytearray(b.build())
    rel = data.find(struct.pack("<Q", 0) + b"\x01\x00\x00\x00")  # r_offset 0, type 1
    assert rel > 0
    struct.pack_into("<I", data, rel + 12, 999)
    assert "symbol #999" in _err(bytes(data))


def test_reloc_against_non_data_section() -> None:
    b = ObjectBuilder()
    b.add_raw_section(".comment", b"clang\0", SHT_PROGBITS, 0)
    b.add_symbol("cmt", ".comment", 0)
    b.add_program("filt", flatten(ld_imm64(1, 0), ret(ALLOW)))
    b.add_reloc("seccomp", 0, "cmt")
    assert "neither maps nor global variables" in _err(b.build())


def test_call_reloc_against_data() -> None:
    b = ObjectBuilder()
    b.add_data(".data", bytes(8), {"x": 0})
    b.add_program("filt", flatten(call_rel(-1), ret(ALLOW)))
    b.add_reloc("seccomp", 0, "x", R_BPF_64_32)
    assert "not a function" in _err(b.build())


def test_call_into_middle_of_function() -> None:
    b = ObjectBuilder()
    b.add_program("filt", flatten(call_rel(0), exit_()))  # .text+8: inside `f`
    b.add_subprog("f", flatten(mov(0, 1), mov(0, 2), exit_()))
    b.add_reloc("seccomp", 0, ".text", R_BPF_64_32)
    assert "not the start of a function" in _err(b.build())


def test_maps_without_btf_and_legacy_maps() -> None:
    b = ObjectBuilder()
    b.add_raw_section(".maps", bytes(40), SHT_PROGBITS, SHF_ALLOC)
    b.add_program("filt", ret(ALLOW))
    assert "no BTF" in _err(b.build())
    b = ObjectBuilder()
    b.add_raw_section("maps", bytes(20), SHT_PROGBITS, SHF_ALLOC)
    b.add_program("filt", ret(ALLOW))
    assert 'legacy "maps" section' in _err(b.build())


def test_malformed_btf() -> None:
    b = ObjectBuilder()
    b.add_map("m")
    b.add_program("filt", ret(ALLOW))
    good = b._make_btf()  # noqa: SLF001
    for bad, what in (
        (good[:10], "shorter than the 24-byte header"),
        (b"\x00\x00" + good[2:], "bad magic"),
        (good[:30], "runs past the end"),
    ):
        b.btf = bad
        assert what in _err(b.build())


def test_ldx_helper_object_is_fine() -> None:
    insns = flatten(ldx(BPF_W, 0, 1, 0), exit_())
    assert load_object_bytes(simple_object(insns)).program().insns[0].code == 0x61
