"""ebpfseccomp.bcc on the host: finding Debian's bcc from the venv, the flags
bcc gets, and (where this host has kernel headers for bcc) compiling the
example; loading and enforcing are VM tests (tests/vm/test_bcc.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ebpfseccomp import bcc
from ebpfseccomp.build import include_dir
from ebpfseccomp.errors import BuildError

REPO = Path(__file__).resolve().parents[1]


def test_without_bcc_the_error_names_the_package(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "bcc", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "dist-packages" not in p])
    with pytest.raises(bcc.BccUnavailable, match="python3-bpfcc"):
        bcc.import_bcc(search=[str(tmp_path)])
    assert "bcc" not in sys.modules


@pytest.mark.skipif(not Path("/usr/lib/python3/dist-packages/bcc").is_dir(),
                    reason="Debian's python3-bpfcc is not installed (vm/install-deps installs it)")
def test_debians_bcc_is_found_from_the_venv_without_changing_sys_path() -> None:
    before = list(sys.path)
    ok, version = bcc.available()
    assert ok, version
    assert version.split(".")[0].isdigit()
    assert sys.path == before
    assert sys.modules["bcc"].__file__.startswith("/usr/lib/python3/dist-packages/")


def test_flags_put_the_project_headers_and_the_target_first() -> None:
    flags = bcc.cflags(["-DX=1"], [REPO / "bpf" / "examples"])
    assert flags[0] == f"-I{include_dir()}"
    assert flags[1] in ("-D__TARGET_ARCH_x86=1", "-D__TARGET_ARCH_arm64=1")
    assert flags[2:] == [f"-I{REPO / 'bpf' / 'examples'}", "-DX=1"]
    assert (include_dir() / "ebpfseccomp" / "bcc.h").is_file()
    assert bcc.target_define("aarch64") == "__TARGET_ARCH_arm64"
    with pytest.raises(BuildError, match="riscv64"):
        bcc.target_define("riscv64")


def _headers_for_bcc() -> bool:
    release = os.uname().release
    return bool(os.environ.get("BCC_KERNEL_SOURCE")) or \
        Path(f"/lib/modules/{release}/build").exists() or \
        Path("/sys/kernel/kheaders.tar.xz").exists()


@pytest.mark.skipif(not (bcc.available()[0] and _headers_for_bcc() and os.geteuid() == 0),
                    reason="needs bcc, the running kernel's headers (or BCC_KERNEL_SOURCE) "
                           "and root (bcc creates the maps when it compiles)")
def test_the_example_compiles_and_a_compile_error_is_a_build_error() -> None:
    bpf_mod = bcc.import_bcc()
    text = bcc.PRELUDE + "int f(struct seccomp_data *ctx) { return SECCOMP_ERRNO(EPERM); }"
    b = bpf_mod.BPF(text=text.encode(), cflags=bcc.cflags())
    try:
        assert len(b.dump_func(b"f")) > 0
    finally:
        b.cleanup()
    with pytest.raises(BuildError, match="no_such_name"):
        bcc.load("int f(struct seccomp_data *ctx) { return no_such_name; }")
