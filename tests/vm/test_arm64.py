"""arm64: the series cross-built and booted under qemu-system-aarch64 (TCG).

With --vm, the session boots the arm64 guest once (vm/vm-test --arch arm64,
vm/arm64.py): the guest runs the static seccomp selftests and
vm/arm64/enforce.c, which loads and attaches an example filter that the
host built with `ebpfseccomp build --arch aarch64`.  These items run on the
host and judge the guest's results:

- the placeholder below becomes one item per selftest case (seccomp_bpf
  against vm/baselines/arm64-normal.txt, seccomp_ebpf must pass);
- one item per enforcement check (load with the arm64 JIT, attach as nobody,
  each system call's answer);
- the kernel's answers agree with the emulator's for the same object, call
  by call (the aarch64 syscall table and the arm64 JIT against the Python
  emulator).

They are not VM-marked: the guest has no python.  EBPFSECCOMP_ARM64=0 skips
them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ebpfseccomp.contract import Action
from ebpfseccomp.elf import load_object
from ebpfseccomp.emulate import Emulator, SyscallInput

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "vm"))

import arm64  # noqa: E402


@pytest.mark.vm_arm64_selftests
def test_arm64_selftests() -> None:
    pytest.skip("needs the arm64 guest: run pytest --vm (or vm/vm-test --arch arm64)")


def _records(results: Path) -> list[dict[str, object]]:
    path = results / "enforce.jsonl"
    return arm64.read_enforce(path) if path.exists() else []


def _guest_stderr(results: Path) -> str:
    err = results / "enforce.err"
    return err.read_text(errors="replace") if err.exists() else ""


@pytest.mark.parametrize("check", ["load", "attach", "child", *arm64.EXPECTED_CHECKS])
def test_arm64_enforcement(arm64_results: Path, check: str) -> None:
    verdicts = arm64.judge_enforcement(_records(arm64_results))
    ok, seen = verdicts[check]
    assert ok, f"{seen}\nenforce's stderr in the guest:\n{_guest_stderr(arm64_results)}"


def test_arm64_kernel_agrees_with_emulator(arm64_results: Path) -> None:
    """Each call's answer in the guest is the one the emulator predicts for
    the same object with the aarch64 arch value: ERRNO(e) there means -1 and
    errno e in the guest, ALLOW means the call reached its implementation."""
    obj = load_object(arm64_results / f"{arm64.ENFORCE_EXAMPLE.stem}.o")
    emu = Emulator(obj)
    checks = [r for r in _records(arm64_results) if "check" in r]
    assert len(checks) == len(arm64.EXPECTED_CHECKS), "the guest reported fewer checks"
    for rec in checks:
        nr = rec["nr"]
        assert isinstance(nr, int)
        verdict = emu.run(SyscallInput(nr, arch="aarch64")).verdict
        denied = rec["ret"] == -1 and rec["errno"] == verdict.errno
        if verdict.action == Action.ERRNO:
            assert denied, f"{rec}: the emulator says {verdict.action.name}({verdict.errno})"
        else:
            assert verdict.action == Action.ALLOW, f"{rec}: emulator {verdict.action.name}"
            assert rec["ret"] != -1 or rec["errno"] != 1, f"{rec}: allowed, yet EPERM"
