"""Every example filter, built for x86_64 and aarch64, run through the emulator
over the scenarios in tests/example_cases.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import example_cases as cases
import pytest

from ebpfseccomp.build import build
from ebpfseccomp.syscalls import nr

pytestmark = pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")

emulate = pytest.importorskip("ebpfseccomp.analysis.emulator")
elf = pytest.importorskip("ebpfseccomp.elf")

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "bpf" / "examples"


def test_every_example_has_cases() -> None:
    sources = {p.stem for p in EXAMPLES_DIR.glob("*.c")}
    assert sources == set(cases.EXAMPLES)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """build(example, arch, defines) -> loaded object, each built once."""
    root = tmp_path_factory.mktemp("examples")
    done: dict[tuple[str, str, tuple[tuple[str, str], ...]], Any] = {}

    def get(example: str, arch: str, defines: dict[str, str] | None = None) -> Any:
        key = (example, arch, tuple(sorted((defines or {}).items())))
        if key not in done:
            out = root / f"{example}.{arch}.{len(done)}.o"
            build(EXAMPLES_DIR / f"{example}.c", out=out, arch=arch, defines=defines or {})
            done[key] = elf.load_object(str(out))
        return done[key]

    return get


def _params() -> list[Any]:
    out = []
    for example in sorted(cases.EXAMPLES):
        for arch in cases.BUILD_ARCHES:
            for sc in cases.scenarios_for(example, arch):
                out.append(pytest.param(example, arch, sc, id=f"{example}-{arch}-{sc.name}"))
    return out


def new_emulator(obj: Any, **env: Any) -> Any:
    return emulate.Emulator(obj, program=None, env=emulate.Environment(**env))


def run_step(emu: Any, step: cases.Step, build_arch: str) -> str:
    inp = emulate.SyscallInput(
        nr=step.number(build_arch),
        arch=step.arch or build_arch,
        args=tuple(step.args) + (0,) * (6 - len(step.args)),
        memory=step.memory,
        time_ns=step.time_ns,
    )
    return str(emu.run(inp).verdict)


@pytest.mark.parametrize(("example", "arch", "scenario"), _params())
def test_scenario(built: Any, example: str, arch: str, scenario: cases.Scenario) -> None:
    obj = built(example, arch, scenario.defines)
    emu = new_emulator(obj, **scenario.env)
    for i, step in enumerate(scenario.steps):
        got = run_step(emu, step, arch)
        assert got == step.expect, (
            f"{example} ({arch}) step {i}: {step.syscall}{step.args} on "
            f"{step.arch or arch} gave {got}, expected {step.expect} {step.note}"
        )


# --- state and maps, beyond verdicts ---------------------------------------------


def _u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


@pytest.mark.parametrize("arch", cases.BUILD_ARCHES)
def test_hashmap_allowlist_is_populated_from_rodata_init(built: Any, arch: str) -> None:
    obj = built("allowlist_hashmap", arch)
    emu = new_emulator(obj)
    allowed = emu.maps["allowed"]
    assert allowed.lookup(_u32(nr("read", arch))) == _u32(0x7FFF0000)
    assert allowed.lookup(_u32(nr("ptrace", arch))) is None
    # the switch form allows exactly the same syscalls
    switch = new_emulator(built("allowlist_switch", arch))
    for number in range(0, 500):
        want = "ALLOW" if allowed.lookup(_u32(number)) is not None else "ERRNO(1)"
        got = str(switch.run(emulate.SyscallInput(nr=number, arch=arch)).verdict)
        assert got == want, f"nr {number}"


@pytest.mark.parametrize("arch", cases.BUILD_ARCHES)
def test_hashmap_allowlist_follows_map_changes(built: Any, arch: str) -> None:
    emu = new_emulator(built("allowlist_hashmap", arch))
    ptrace, read = nr("ptrace", arch), nr("read", arch)

    def verdict(number: int) -> str:
        return str(emu.run(emulate.SyscallInput(nr=number, arch=arch)).verdict)

    assert verdict(ptrace) == "ERRNO(1)"
    emu.maps["allowed"].update(_u32(ptrace), _u32(0x00050000 | 38))  # ERRNO(ENOSYS)
    assert verdict(ptrace) == "ERRNO(38)"
    emu.maps["allowed"].delete(_u32(read))
    assert verdict(read) == "ERRNO(1)"


@pytest.mark.parametrize("arch", cases.BUILD_ARCHES)
def test_hashmap_allowlist_empty_map_fails_closed(built: Any, arch: str) -> None:
    emu = new_emulator(built("allowlist_hashmap", arch))
    allowed = emu.maps["allowed"]
    for key, _ in list(allowed.items()):
        allowed.delete(key)
    for name in ("read", "write", "exit_group", "execve"):
        res = emu.run(emulate.SyscallInput(nr=nr(name, arch), arch=arch))
        assert str(res.verdict) == "ERRNO(1)"


def test_execve_once_counter_visible_and_resettable(built: Any) -> None:
    emu = new_emulator(built("execve_once", "x86_64"))
    execve = emulate.SyscallInput(nr=nr("execve"), arch="x86_64")
    assert str(emu.run(execve).verdict) == "ALLOW"
    bss = emu.maps[".bss"]
    assert bss.lookup(0) == _u32(1)
    assert str(emu.run(execve).verdict) == "ERRNO(1)"
    assert bss.lookup(0) == _u32(1), "denied attempts do not count further"
    bss.update(0, bytes(4))  # user space grants one more
    assert str(emu.run(execve).verdict) == "ALLOW"


def test_rate_limit_counts_calls_per_syscall(built: Any) -> None:
    emu = new_emulator(built("rate_limit", "x86_64"))
    calls = emu.maps["calls"]
    for _ in range(3):
        emu.run(emulate.SyscallInput(nr=nr("read"), arch="x86_64"))
    for _ in range(12):
        emu.run(emulate.SyscallInput(nr=nr("getpid"), arch="x86_64", time_ns=7 * 10**9))
    assert calls.lookup(_u32(nr("read"))) == (3).to_bytes(8, "little")
    assert calls.lookup(_u32(nr("getpid"))) == (12).to_bytes(8, "little")
    assert calls.lookup(_u32(nr("write"))) is None
    # getpid_denied is the third __u64 in .bss (window_start_ns, window_calls, getpid_denied)
    bss = emu.maps[".bss"].lookup(0)
    assert bss is not None and int.from_bytes(bss[16:24], "little") == 2
