"""The arm64 harness on the host (vm/arm64.py, vm/arm64/*.c): the initramfs,
the guest.conf checks, the enforcement verdicts, and enforce.c's refusal of
objects it cannot load (built natively here: the same C runs on x86_64)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vm"))

import arm64  # noqa: E402
import vmlib  # noqa: E402

from ebpfseccomp.build import build  # noqa: E402

EM_AARCH64 = 183


def test_initramfs_lists_init_and_mount_points(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed (make deps)")
    archive = tmp_path / "init.cpio"
    arm64._write_cpio(archive, {"init": b"\x7fELF-not-really"}, dirs=("dev", "proc"))
    listing = subprocess.run(["cpio", "-t", "-v"], input=archive.read_bytes(),
                             capture_output=True, check=True).stdout.decode()  # fmt: skip
    names = {line.split()[-1]: line.split()[0] for line in listing.splitlines()}
    assert names == {"dev": "drwxr-xr-x", "proc": "drwxr-xr-x", "init": "-rwxr-xr-x"}
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run(["cpio", "-i", "--quiet"], input=archive.read_bytes(), cwd=extracted,
                   check=True)  # fmt: skip
    assert (extracted / "init").read_bytes() == b"\x7fELF-not-really"


@pytest.mark.parametrize("value", ["a\tb", "a\nb", "a\0b"])
def test_guest_conf_refuses_separators(value: str) -> None:
    with pytest.raises(vmlib.VmError, match="tab, newline or NUL"):
        arm64._check_field("an argument", value)


def test_run_directory_must_be_absolute_without_spaces() -> None:
    with pytest.raises(vmlib.VmError, match="without spaces"):
        arm64._check_path("the run directory", Path("/tmp/a b"))
    with pytest.raises(vmlib.VmError, match="absolute"):
        arm64._check_path("the run directory", Path("relative/dir"))
    assert arm64._check_path("x", Path("/tmp/ok")) == "/tmp/ok"


def _good_records() -> list[dict[str, object]]:
    recs: list[dict[str, object]] = [
        {"step": "load", "fd": 3, "insns": 49, "jited_len": 300, "xlated_len": 392},
        {"step": "attach", "ret": 0, "errno": 0},
    ]
    for name, want in arm64.EXPECTED_CHECKS.items():
        ret, err = {"pid": (50, 0), "ppid": (49, 0), "fd": (3, 0)}.get(str(want), (-1, want))
        recs.append({"check": name, "nr": 0, "ret": ret, "errno": err})
    recs.append({"step": "child", "status": 0, "signal": 0, "pid": 50, "ppid": 49})
    return recs


def test_enforcement_verdicts() -> None:
    verdicts = arm64.judge_enforcement(_good_records())
    assert all(ok for ok, _ in verdicts.values()), verdicts
    assert set(verdicts) == {"load", "attach", "child", *arm64.EXPECTED_CHECKS}


def test_enforcement_verdicts_catch_what_went_wrong() -> None:
    recs = _good_records()
    for r in recs:
        if r.get("check") == "getpid":  # allowed, yet refused
            r.update(ret=-1, errno=1)
        if r.get("step") == "load":  # interpreted, not JIT-compiled
            r["jited_len"] = 0
    recs = [r for r in recs if r.get("check") != "socket"]  # never reported
    verdicts = arm64.judge_enforcement(recs)
    bad = {name for name, (ok, _) in verdicts.items() if not ok}
    assert bad == {"getpid", "load", "socket"}
    assert "no result" in verdicts["socket"][1]
    assert arm64.judge_enforcement([])["attach"][0] is False


# ------------------------------------------------- enforce.c, built natively


@pytest.fixture(scope="module")
def native_enforce(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (make deps)")
    out = tmp_path_factory.mktemp("enforce") / "enforce"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(out),
                    str(arm64.SRC_DIR / "enforce.c")], check=True)  # fmt: skip
    return out


def _refusal(binary: Path, obj: Path) -> str:
    proc = subprocess.run([str(binary), str(obj)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""  # nothing was loaded
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("enforce: ")
    return proc.stderr


def test_enforce_refuses_what_is_not_a_bpf_object(native_enforce: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an ELF file at all")
    assert "not a little-endian 64-bit BPF ELF object" in _refusal(native_enforce, junk)
    assert "No such file" in _refusal(native_enforce, tmp_path / "missing.o")


def test_enforce_refuses_a_truncated_section_table(native_enforce: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.o"
    build(arm64.ENFORCE_EXAMPLE, good, arch="aarch64")
    data = bytearray(good.read_bytes())
    # e_shoff (offset 0x28) pointing past the end of the file
    struct.pack_into("<Q", data, 0x28, len(data) - 8)
    bad = tmp_path / "bad.o"
    bad.write_bytes(bytes(data))
    assert "truncated section table" in _refusal(native_enforce, bad)


def test_enforce_refuses_section_names_past_the_end(native_enforce: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.o"
    build(arm64.ENFORCE_EXAMPLE, good, arch="aarch64")
    data = bytearray(good.read_bytes())
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shstrndx, = struct.unpack_from("<H", data, 0x3E)
    # the names section's size (sh_size at +0x20 in its header) runs off the file
    struct.pack_into("<Q", data, shoff + shstrndx * 64 + 0x20, len(data))
    bad = tmp_path / "bad.o"
    bad.write_bytes(bytes(data))
    assert "truncated section names" in _refusal(native_enforce, bad)


def test_enforce_refuses_filters_with_relocations(native_enforce: Path, tmp_path: Path) -> None:
    obj = tmp_path / "hashmap.o"
    build(arm64.ENFORCE_EXAMPLE.parent / "allowlist_hashmap.c", obj, arch="aarch64")
    assert "relocations (maps or globals)" in _refusal(native_enforce, obj)


# --------------------------------------------------- the aarch64 userland


def test_userland_is_static_aarch64() -> None:
    if shutil.which(arm64.CROSS_CC) is None:
        pytest.skip(f"{arm64.CROSS_CC} is not installed (make deps)")
    d = arm64.userland()
    for name in ("init", "enforce"):
        data = (d / name).read_bytes()
        assert data[:4] == b"\x7fELF" and struct.unpack_from("<H", data, 18)[0] == EM_AARCH64
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        types = {struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)}
        assert 3 not in types, f"{name} has a PT_INTERP: not static"
    assert (d / "init.cpio").stat().st_size > (d / "init").stat().st_size
