"""`ebpfseccomp build` and ebpfseccomp.build: examples, reproducibility, errors."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ebpfseccomp import cli
from ebpfseccomp.build import HEADER_PREFIX, build, command, include_dir
from ebpfseccomp.errors import BuildError, UsageError

pytestmark = pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "bpf" / "examples").glob("*.c"))
EM_BPF = 247

#: Examples meant for the "none" tier: no maps, no globals, no helper calls.
TIER_NONE = {"allow_all", "deny_all_errno", "arch_check", "allowlist_switch"}

GOOD = """\
#include <ebpfseccomp/filter.h>
SEC("seccomp") int f(struct seccomp_data *ctx)
{
	return ctx->nr == SYS_getpid ? SECCOMP_ERRNO(EPERM) : SECCOMP_ALLOW;
}
SECCOMP_LICENSE("GPL");
"""


def sections(path: Path) -> dict[str, bytes]:
    with path.open("rb") as f:
        elf = ELFFile(f)
        assert elf["e_machine"] == "EM_BPF"
        return {s.name: s.data() for s in elf.iter_sections()}


def helper_calls(code: bytes) -> list[int]:
    calls = []
    for off in range(0, len(code), 8):
        op, regs, _, imm = struct.unpack_from("<BBhi", code, off)
        if op == 0x85 and (regs >> 4) == 0:  # call, src_reg 0: a helper
            calls.append(imm)
    return calls


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(["build", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


# --- the examples ------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("src", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_builds(tmp_path: Path, src: Path, arch: str) -> None:
    out = build(src, out=tmp_path / "f.o", arch=arch)
    assert out == tmp_path / "f.o"
    secs = sections(out)
    assert "seccomp" in secs and len(secs["seccomp"]) % 8 == 0
    assert ".BTF" in secs and ".BTF.ext" in secs, "BTF (from -g) is needed for maps and lines"
    assert secs["license"].rstrip(b"\0") == b"GPL"
    globals_ = [n for n in secs if n.startswith((".data", ".bss", ".rodata", ".maps"))]
    calls = helper_calls(secs["seccomp"])
    if src.stem in TIER_NONE:
        assert globals_ == [] and calls == [], f"{src.stem} must stay in the none tier"
    else:
        assert globals_ or calls
    allowed = {1, 2, 3, 5, 7, 14, 15, 112, 114}
    assert set(calls) <= allowed, "examples call only the contract's helpers"


@pytest.mark.parametrize("src", EXAMPLES, ids=lambda p: p.stem)
def test_struct_reader_agrees_with_pyelftools(tmp_path: Path, src: Path) -> None:
    """ebpfseccomp.elf reads sections, symbols and relocations with struct;
    pyelftools, an independent reader, must see the same records."""
    from ebpfseccomp import elf as elfmod

    out = build(src, out=tmp_path / "f.o")
    data = out.read_bytes()
    secs, syms, rels = elfmod._read_raw(str(out), data)
    with out.open("rb") as f:
        ref = ELFFile(f)
        types = {"SHT_PROGBITS": 1, "SHT_SYMTAB": 2, "SHT_STRTAB": 3, "SHT_NOBITS": 8,
                 "SHT_REL": 9, "SHT_NULL": 0}
        assert [(s.name, s.size, s.data) for s in secs] == [
            (r.name, r["sh_size"], b"" if r["sh_type"] in ("SHT_NOBITS", "SHT_NULL")
             else r.data()) for r in ref.iter_sections()
        ]
        for s, r in zip(secs, ref.iter_sections(), strict=True):
            assert s.type == types.get(r["sh_type"], s.type)  # others: pyelftools' names
        symtab = ref.get_section_by_name(".symtab")
        for mine, r in zip(syms, symtab.iter_symbols(), strict=True):
            assert (mine.value, mine.size, mine.type, mine.bind) == (
                r["st_value"], r["st_size"], r["st_info"]["type"], r["st_info"]["bind"])
            if mine.type != "STT_SECTION":
                assert mine.name == r.name
            shndx = r["st_shndx"]
            assert mine.shndx == (None if shndx == "SHN_UNDEF" else
                                  shndx if isinstance(shndx, int) else -1)
        for rsec in ref.iter_sections():
            if rsec["sh_type"] == "SHT_REL":
                got = [(e.offset, e.sym, e.type) for e in rels[rsec["sh_info"]]]
                assert got == [(e["r_offset"], e["r_info_sym"], e["r_info_type"])
                               for e in rsec.iter_relocations()]


def test_example_headers_say_what_they_enforce() -> None:
    for src in EXAMPLES:
        head = src.read_text()[:3000]
        assert "Enforces:" in head and "Tier:" in head, src.name
        if src.stem == "arg_rules":
            assert "TOCTOU" in head


def test_arch_selects_numbers(tmp_path: Path) -> None:
    x86 = build(EXAMPLES[0].parent / "deny_all_errno.c", out=tmp_path / "x.o", arch="x86_64")
    arm = build(EXAMPLES[0].parent / "deny_all_errno.c", out=tmp_path / "a.o", arch="arm64")
    code_x86, code_arm = sections(x86)["seccomp"], sections(arm)["seccomp"]
    # AUDIT_ARCH_X86_64 / AUDIT_ARCH_AARCH64 (and the exit numbers) differ
    assert code_x86 != code_arm
    assert struct.pack("<I", 0xC000003E) in code_x86 and struct.pack("<I", 0xC00000B7) in code_arm


# --- reproducibility ------------------------------------------------------------


def test_same_input_same_bytes(tmp_path: Path) -> None:
    src = ROOT / "bpf" / "examples" / "arg_rules.c"
    a = build(src, out=tmp_path / "a.o").read_bytes()
    b = build(src, out=tmp_path / "sub.o").read_bytes()
    assert a == b


def test_bytes_do_not_depend_on_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outs = []
    for i, where in enumerate(["one", "two/deeper"]):
        d = tmp_path / where
        d.mkdir(parents=True)
        for name in ("allowlist_hashmap.c", "allowlist.h"):
            shutil.copy(ROOT / "bpf" / "examples" / name, d / name)
        monkeypatch.chdir(d if i else tmp_path)
        outs.append(build(d / "allowlist_hashmap.c", out=tmp_path / f"o{i}.o").read_bytes())
    assert outs[0] == outs[1]
    assert str(tmp_path).encode() not in outs[0]
    assert str(include_dir()).encode() not in outs[0]
    assert HEADER_PREFIX.encode() in outs[0]


def test_btf_line_info_keeps_source_text(tmp_path: Path) -> None:
    src = tmp_path / "f.c"
    src.write_text(GOOD)
    data = build(src).read_bytes()
    assert b"./f.c" in data
    assert b"SECCOMP_ERRNO(EPERM)" in data, "BTF line info quotes the source line"


def test_defines_change_output(tmp_path: Path) -> None:
    src = ROOT / "bpf" / "examples" / "rate_limit.c"
    a = build(src, out=tmp_path / "a.o").read_bytes()
    b = build(src, out=tmp_path / "b.o", defines={"RATE_LIMIT": 1000}).read_bytes()
    assert a != b and struct.pack("<i", 999) in sections(tmp_path / "b.o")["seccomp"]


# --- the Python API ------------------------------------------------------------------


def test_default_output_next_to_source(tmp_path: Path) -> None:
    src = tmp_path / "f.c"
    src.write_text(GOOD)
    assert build(src) == tmp_path / "f.o"
    (tmp_path / "out").mkdir()
    assert build(src, out=tmp_path / "out") == tmp_path / "out" / "f.o"


def test_include_dirs_and_warnings(tmp_path: Path) -> None:
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "mine.h").write_text("#define MY_ERR EACCES\n")
    src = tmp_path / "f.c"
    text = GOOD.replace("EPERM", "MY_ERR").replace("#include", '#include "mine.h"\n#include', 1)
    src.write_text(text + "int g(void) { int x; return 0; }\n")
    warnings: list[str] = []
    build(src, include_dirs=[inc], warnings=warnings)
    assert warnings and "unused variable 'x'" in warnings[0]
    assert str(src) in warnings[0], "diagnostics name the file as the user gave it"


def test_build_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BuildError, match="no such source file"):
        build(tmp_path / "missing.c")
    with pytest.raises(BuildError, match="not a regular file"):
        build(tmp_path)
    src = tmp_path / "f.c"
    src.write_text(GOOD)
    with pytest.raises(BuildError, match="output directory does not exist"):
        build(src, out=tmp_path / "nowhere" / "f.o")
    with pytest.raises(UsageError, match="overwrite the source"):
        build(src, out=src)
    with pytest.raises(UsageError, match="unknown architecture"):
        build(src, arch="sparc")
    with pytest.raises(UsageError, match="bad macro name"):
        build(src, defines={"1BAD": 1})
    with pytest.raises(BuildError, match="include directory does not exist"):
        build(src, include_dirs=[tmp_path / "nope"])
    monkeypatch.setenv("CLANG", "/nonexistent/clang")
    with pytest.raises(BuildError) as info:
        build(src)
    assert "clang not found" in info.value.render()
    assert "Debian package `clang`" in info.value.render()


def test_command_line(tmp_path: Path) -> None:
    src = tmp_path / "f.c"
    src.write_text(GOOD)
    cmd = command(src, arch="aarch64", defines={"X": None, "Y": "2"})
    assert cmd.cwd == tmp_path and cmd.argv[-4:-2] == ["-c", "f.c"]
    for flag in ("-O2", "-g", "bpf", "-mcpu=v3", "-D__TARGET_ARCH_arm64", "-DX", "-DY=2"):
        assert flag in cmd.argv


def test_compile_error_leaves_no_output(tmp_path: Path) -> None:
    src = tmp_path / "bad.c"
    src.write_text("#include <ebpfseccomp/filter.h>\nint f(void) { return nope; }\n")
    with pytest.raises(BuildError) as info:
        build(src)
    text = info.value.render()
    assert f"{src}:2:" in text and "use of undeclared identifier 'nope'" in text
    assert "compilation failed (1 error)" in text
    assert list(tmp_path.iterdir()) == [src]


# --- the CLI ------------------------------------------------------------------------


def test_cli_builds_and_prints_the_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "f.c"
    src.write_text(GOOD)
    status, out, _ = run_cli([str(src), "-o", str(tmp_path / "x.o"), "--arch", "aarch64"], capsys)
    assert status == 0 and out.strip() == str(tmp_path / "x.o")
    status, out, _ = run_cli([str(src), "--json", "-D", "A=1", "-D", "B"], capsys)
    info = json.loads(out)
    assert status == 0 and info["object"] == str(tmp_path / "f.o") and info["size"] > 0
    assert info["arch"] in ("x86_64", "aarch64")


def test_cli_compile_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.c"
    src.write_text("#include <ebpfseccomp/filter.h>\n\nint f(void) { return nope; }\n")
    status, out, err = run_cli([str(src)], capsys)
    assert status == 1 and out == ""
    assert err.startswith("ebpfseccomp build: error: ")
    assert f"{src}:3:" in err


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["/nonexistent/f.c"], 1, "no such source file"),
        ([], 2, "missing SRC.c"),
        (["f.c", "-D", "=1"], 2, "bad define"),
        (["f.c", "--arch", "mips"], 2, "invalid choice"),
        (["f.c", "-D", "A", "-D", "A=2"], 2, "given twice"),
    ],
)
def test_cli_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    status: int,
    message: str,
) -> None:
    (tmp_path / "f.c").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    try:
        got, _, err = run_cli(args, capsys)
    except SystemExit as exc:  # argparse's own usage errors
        got = int(exc.code or 0)
        err = capsys.readouterr().err
    assert got == status and message in err, err


def test_cli_clang_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f.c").write_text(GOOD)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CLANG", raising=False)
    status, _, err = run_cli([str(tmp_path / "f.c")], capsys)
    assert status == 1 and "apt-get install clang" in err


def test_cli_output_dir_not_writable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f.c").write_text(GOOD)
    if os.geteuid() == 0:
        target = "/proc/f.o"  # root may write anywhere but here
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = str(ro / "f.o")
    status, _, err = run_cli([str(tmp_path / "f.c"), "-o", target], capsys)
    assert status == 1 and ("not writable" in err or "cannot write" in err), err


def test_cli_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["build", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert 'SEC("seccomp")' in out and "ebpfseccomp build no_ptrace.c" in out


def test_cli_print_include_dir(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["--print-include-dir"], capsys)
    assert status == 0 and (Path(out.strip()) / "ebpfseccomp" / "filter.h").is_file()
