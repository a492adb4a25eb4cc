"""Judging the kernel's action cache for random programs (shared by host and VM tests).

The VM test (tests/vm/test_cache.py) loads random programs (tests/randprog.py)
into the patched kernel, attaches each and records which syscalls the kernel
caches, in an artifact next to the VM's pytest results.  `check_programs`
then judges them: for every syscall the kernel caches, the emulator, run with
random arguments, instruction pointer, pid, uid, gid and clock, must answer
ALLOW (soundness: a counterexample is a syscall the kernel would answer from
the cache that the program could answer otherwise); and
ebpfseccomp.analysis.cacheability, run on the program as the kernel rewrote it (the
xlated code), must give exactly the kernel's set, and run on the program as
generated must never predict a syscall cached that the kernel does not cache
(it may predict fewer where the verifier removed a branch it proved dead).

Under TCG the emulator is too slow for thousands of programs in the guest, so
the host test (tests/test_cache_soundness.py) runs the full check on the
artifact and the guest only a sample.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import randprog

from ebpfseccomp import insn as I
from ebpfseccomp.analysis import cacheability
from ebpfseccomp.analysis.emulator import EmulationError, Emulator, SyscallInput
from ebpfseccomp.contract import Action, Verdict

ARTIFACT = "cache-soundness.json"
M32 = 0xFFFFFFFF


@dataclass
class KernelResult:
    """One program as the kernel took it: status, cached syscalls per arch, xlated code."""

    status: str  # "ok", "load" (refused by the verifier), "attach"
    detail: str = ""
    cached: dict[str, list[int]] = field(default_factory=dict)
    xlated: str = ""  # hex of the verifier's rewrite, "" when not read


@dataclass
class Verdicts:
    programs: int = 0
    refused: int = 0
    not_attached: int = 0
    attached: int = 0
    cached_syscalls: int = 0
    emulator_runs: int = 0
    counterexamples: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    #: programs where the kernel caches more than check predicts from the ELF
    #: code: the verifier removed a branch it proved dead from value ranges
    kernel_caches_more: int = 0

    def summary(self) -> str:
        return (
            f"{self.programs} random programs: {self.refused} refused by the verifier, "
            f"{self.not_attached} not attached, {self.attached} attached; "
            f"{self.cached_syscalls} syscalls cached by the kernel, checked with "
            f"{self.emulator_runs} emulator runs: {len(self.counterexamples)} counterexamples; "
            f"check's prediction is wrong for {len(self.disagreements)} programs "
            f"(and the kernel caches more than predicted, after the verifier's dead-branch "
            f"pruning, for {self.kernel_caches_more})"
        )


def programs(seed: int, count: int) -> list[list[I.Insn]]:
    rng = random.Random(seed)
    return [randprog.generate(rng) for _ in range(count)]


def save(path: Path, seed: int, count: int, results: list[KernelResult]) -> None:
    path.write_text(
        json.dumps(
            {
                "seed": seed,
                "count": count,
                "results": [
                    {"status": r.status, "detail": r.detail, "cached": r.cached, "xlated": r.xlated}
                    for r in results
                ],
            }
        )
    )


def load(path: Path) -> tuple[int, int, list[KernelResult]]:
    data = json.loads(path.read_text())
    return (
        data["seed"],
        data["count"],
        [KernelResult(r["status"], r["detail"], r["cached"], r["xlated"]) for r in data["results"]],
    )


def random_input(rng: random.Random, nr: int) -> SyscallInput:
    def value() -> int:
        return rng.choice([0, 1, M32, (1 << 64) - 1, rng.getrandbits(64), rng.getrandbits(16)])

    return SyscallInput(
        nr=nr,
        arch="x86_64",
        args=tuple(value() for _ in range(6)),
        ip=rng.getrandbits(64),
        pid=rng.randint(1, 1 << 22),
        uid=rng.getrandbits(32),
        gid=rng.getrandbits(32),
        time_ns=rng.getrandbits(63),
    )


def _hex(insns: list[I.Insn]) -> str:
    return I.encode(insns).hex()


def check_programs(
    progs: list[list[I.Insn]],
    results: list[KernelResult],
    *,
    inputs_per_syscall: int = 2,
    seed: int = 0,
    limit: int | None = None,
) -> Verdicts:
    """Judge the kernel's cache of the first LIMIT programs (all if None)."""
    rng = random.Random(seed)
    v = Verdicts(programs=len(progs))
    exception = cacheability.EXCEPTIONS["x86_64"]
    for idx, (insns, r) in enumerate(zip(progs, results, strict=True)):
        if r.status == "load":
            v.refused += 1
            continue
        if r.status != "ok":
            v.not_attached += 1
            continue
        v.attached += 1
        if limit is not None and v.attached > limit:
            continue
        kernel = set(r.cached.get("x86_64", []))
        emu = Emulator(randprog.as_object(insns))
        for nr in sorted(kernel - exception):
            v.cached_syscalls += 1
            for _ in range(inputs_per_syscall):
                v.emulator_runs += 1
                try:
                    res = emu.run(random_input(rng, nr))
                except EmulationError as exc:
                    v.counterexamples.append(f"program {idx} nr {nr}: emulator error: {exc}")
                    continue
                verdict = Verdict(res.r0 & M32)
                if verdict.action != Action.ALLOW:
                    v.counterexamples.append(
                        f"program {idx} nr {nr}: kernel caches it, emulator says {verdict}: "
                        f"{_hex(insns)}"
                    )
        predicted = set(cacheability.analyze(insns, ["x86_64"])[0].cached)
        if predicted - kernel:
            v.disagreements.append(
                f"program {idx}: check predicts {sorted(predicted - kernel)[:8]} cached, the "
                f"kernel does not: {_hex(insns)}"
            )
        elif kernel - predicted:
            v.kernel_caches_more += 1
        # On the verifier's rewrite, the analysis must be the kernel's exactly.
        if r.xlated:
            rewritten = set(
                cacheability.analyze(I.decode(bytes.fromhex(r.xlated)), ["x86_64"])[0].cached
            )
            if rewritten != kernel:
                v.disagreements.append(
                    f"program {idx} (xlated): kernel only {sorted(kernel - rewritten)[:8]}, "
                    f"check only {sorted(rewritten - kernel)[:8]}: {r.xlated}"
                )
    return v
