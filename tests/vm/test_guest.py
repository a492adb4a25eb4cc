"""The VM plumbing itself: these run in the guest on the built kernel."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
from pathlib import Path

import pytest
from vmhelpers import Sysctl, Unprivileged

pytestmark = pytest.mark.vm


def test_running_the_built_kernel(kernel_dir: Path) -> None:
    assert platform.release() == (kernel_dir / "kernelrelease").read_text().strip()


def test_yama_ptrace_scope_exists() -> None:
    assert Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip() in "0123"


def test_bpffs_mountable() -> None:
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["mount", "-t", "bpf", "bpf", d], check=True)
        try:
            assert any(
                line.split()[1] == d and line.split()[2] == "bpf"
                for line in Path("/proc/mounts").read_text().splitlines()
            )
        finally:
            subprocess.run(["umount", d], check=True)


def test_seccomp_config(kernel_dir: Path) -> None:
    config = (kernel_dir / "config").read_text()
    for opt in ("SECCOMP_FILTER", "BPF_SYSCALL", "SECURITY_YAMA", "USER_NS", "SECCOMP_CACHE_DEBUG"):
        assert f"CONFIG_{opt}=y" in config


def test_unprivileged_helper(unprivileged: Unprivileged) -> None:
    out = unprivileged.run(["id", "-u"], check=True).stdout.strip()
    assert out == "65534"
    ids = unprivileged.call(lambda: (os.getuid(), os.getgid(), os.getgroups()))
    assert ids == (65534, 65534, [])
    capeff = unprivileged.call(
        lambda: [
            ln
            for ln in Path("/proc/self/status").read_text().splitlines()
            if ln.startswith(("CapEff", "CapPrm", "CapBnd"))
        ]
    )
    assert all(line.split()[1] == "0000000000000000" for line in capeff), capeff


def test_tree_readable_by_nobody(unprivileged: Unprivileged) -> None:
    repo = Path(__file__).resolve().parents[2]
    r = unprivileged.run(
        [str(repo / ".venv" / "bin" / "python"), "-c", "import ebpfseccomp"], cwd=str(repo)
    )
    assert r.returncode == 0, r.stderr


def test_sysctl_fixture_restores(sysctl: Sysctl) -> None:
    old = sysctl.get("kernel.yama.ptrace_scope")
    new = "2" if old != "2" else "1"
    sysctl("kernel.yama.ptrace_scope", new)
    assert sysctl.get("kernel.yama.ptrace_scope") == new
    sysctl.restore()
    assert sysctl.get("kernel.yama.ptrace_scope") == old


def test_kernel_has_extended_probe(kernel_has_extended: bool, kernel_dir: Path) -> None:
    patched = "CONFIG_SECCOMP_FILTER_EXTENDED=y" in (kernel_dir / "config").read_text()
    assert kernel_has_extended == patched
