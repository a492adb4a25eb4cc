"""Fuzzing the ELF reader: mutated and truncated objects either load or raise
ObjectError -- never anything else -- and the CLI answers them with exit
status 1 and one clear line, no traceback."""

from __future__ import annotations

import functools
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from asm import (
    ALLOW,
    R_BPF_64_32,
    ObjectBuilder,
    call,
    call_rel,
    flatten,
    ld_imm64,
    ldx,
    ret,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebpfseccomp.analysis.checker import check
from ebpfseccomp.analysis.disasm import disasm
from ebpfseccomp.cli import main
from ebpfseccomp.elf import load_object_bytes
from ebpfseccomp.errors import ObjectError
from ebpfseccomp.insn import BPF_W

CLANG_SRC = r"""
#define SEC(n) __attribute__((section(n), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
struct seccomp_data { int nr; unsigned int arch; unsigned long long ip;
                      unsigned long long args[6]; };
static long (*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
struct { __uint(type, 1); __uint(max_entries, 8); __type(key, int);
         __type(value, long); } m SEC(".maps");
int g;
static __attribute__((noinline)) int sub(int x) { return x + g; }
SEC("seccomp") int f(struct seccomp_data *ctx)
{
    int k = ctx->nr;
    if (bpf_map_lookup_elem(&m, &k)) return 0x7fff0000;
    return sub(k) > 3 ? 0 : 0x50001;
}
char L[] SEC("license") = "GPL";
"""


@functools.cache
def hand_made() -> bytes:
    b = ObjectBuilder()
    b.add_map("m")
    b.add_data(".bss", bytes(8), {"g": 0}, nobits=True)
    b.add_data(".rodata", b"12345678", {"c": 4}, readonly=True)
    b.add_program(
        "filt",
        flatten(ldx(BPF_W, 2, 1, 0), ld_imm64(1, 0), ld_imm64(3, 0), ld_imm64(6, 0),
                call(1), call_rel(-1), ldx(BPF_W, 0, 6, 0), ret(ALLOW)),
    )  # fmt: skip
    b.add_reloc("seccomp", 1, "m")
    b.add_reloc("seccomp", 3, "g")
    b.add_reloc("seccomp", 5, "c")
    b.add_reloc("seccomp", 8, "sub", R_BPF_64_32)
    b.add_subprog("sub", flatten(ret(3)))
    return b.build()


@functools.cache
def clang_made() -> bytes | None:
    clang = shutil.which("clang")
    if clang is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "f.c"
        src.write_text(CLANG_SRC)
        out = Path(d) / "f.o"
        subprocess.run([clang, "-O2", "-g", "-target", "bpf", "-c", str(src), "-o", str(out)],
                       check=True)  # fmt: skip
        return out.read_bytes()


def regions(data: bytes) -> list[tuple[int, int]]:
    """Interesting byte ranges: the ELF header, section headers and every section."""
    out = [(0, 64)]
    shoff = struct.unpack_from("<Q", data, 40)[0]
    shnum = struct.unpack_from("<H", data, 60)[0]
    out.append((shoff, shnum * 64))
    for i in range(shnum):
        _n, typ, _f, _a, off, size = struct.unpack_from("<IIQQQQ", data, shoff + 64 * i)
        if typ not in (0, 8) and size:
            out.append((off, min(size, 4096)))
    return out


def base_objects() -> list[bytes]:
    objs = [hand_made()]
    c = clang_made()
    if c is not None:
        objs.append(c)
    return objs


INTERESTING = [0, 1, 7, 8, 0x10, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    objs = base_objects()
    data = bytearray(objs[draw(st.integers(0, len(objs) - 1))])
    regs = regions(bytes(data))
    for _ in range(draw(st.integers(1, 6))):
        start, size = regs[draw(st.integers(0, len(regs) - 1))]
        pos = start + draw(st.integers(0, max(size - 1, 0)))
        if pos >= len(data):
            continue
        kind = draw(st.integers(0, 2))
        if kind == 0:
            data[pos] = draw(st.integers(0, 255))
        elif kind == 1:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        else:
            width = draw(st.sampled_from([2, 4, 8]))
            if pos + width <= len(data):
                value = draw(st.sampled_from(INTERESTING)) & ((1 << (8 * width)) - 1)
                data[pos : pos + width] = value.to_bytes(width, "little")
    if draw(st.booleans()) and draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def exercise(blob: bytes) -> None:
    try:
        obj = load_object_bytes(blob, "fuzz.o")
    except ObjectError as exc:
        text = exc.render()
        assert text.startswith("fuzz.o: ") and "\n" not in text
        return
    for prog in obj.programs:
        check(obj, prog.name)
        check(obj, prog.name, unprivileged=True)
        disasm(obj, prog.name)


def test_base_objects_are_valid() -> None:
    for data in base_objects():
        obj = load_object_bytes(data)
        assert check(obj).loadable


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_load_or_raise_object_error(blob: bytes) -> None:
    exercise(blob)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000), st.randoms(use_true_random=False))
def test_truncations(cut: int, rnd: object) -> None:
    for data in base_objects():
        exercise(data[: cut % (len(data) + 1)])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_with_elf_magic(tail: bytes) -> None:
    exercise(b"\x7fELF\x02\x01\x01\x00" + tail)
    exercise(tail)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutated())
def test_cli_on_mutations(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "fuzz.o"
    path.write_bytes(blob)
    for cmd in ("check", "disasm"):
        try:
            rc = main([cmd, str(path)])
        except SystemExit as exc:  # pragma: no cover - argparse only
            rc = int(exc.code or 0)
        assert rc in (0, 1)


@pytest.mark.parametrize("cut", [0, 50, 200])
def test_cli_subprocess_no_traceback(tmp_path: Path, cut: int) -> None:
    data = bytearray(hand_made())
    data[18] = 62 if cut == 200 else data[18]  # one wrong machine, the rest truncated
    path = tmp_path / "bad.o"
    path.write_bytes(bytes(data[:cut]) if cut != 200 else bytes(data))
    proc = subprocess.run([sys.executable, "-m", "ebpfseccomp", "check", str(path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]
