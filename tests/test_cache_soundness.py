"""The kernel's action cache over random programs: soundness and agreement, on the host.

The kernel's side comes from the VM: tests/vm/test_cache.py loads and attaches
the random programs and records what /proc/PID/seccomp_cache showed for each
(an artifact next to the VM's pytest results).  Here, natively, for every
syscall the kernel caches, the emulator must answer ALLOW for random
arguments, instruction pointer, pid, uid, gid and clock, and `check`'s
prediction must agree with the kernel's cache (see tests/cache_soundness.py).
Needs --vm (make test) or EBPFSECCOMP_CACHE_ARTIFACT=path of an artifact;
without, or when the VM run did not include tests/vm/test_cache.py, it skips.

Also, without the VM: the Python analysis alone is sound against the emulator
over random programs (every syscall it calls cacheable is answered ALLOW).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import cache_soundness as soundness
import pytest
import randprog

from ebpfseccomp.analysis import cacheability
from ebpfseccomp.analysis.emulator import Emulator
from ebpfseccomp.contract import Action, Verdict

INPUTS_PER_SYSCALL = int(os.environ.get("EBPFSECCOMP_CACHE_INPUTS", "2"))


def test_kernel_cache_is_sound_over_random_programs(request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("--vm") and not os.environ.get("EBPFSECCOMP_CACHE_ARTIFACT"):
        pytest.skip("needs the kernel's answers from the VM (run with --vm, as make test does)")
    explicit = os.environ.get("EBPFSECCOMP_CACHE_ARTIFACT")
    if explicit:
        path = Path(explicit)
    else:
        # tests/conftest.py's fixture: importing "conftest" here could find
        # tests/vm/conftest.py, which has the same module name
        path = request.getfixturevalue("vm_results") / soundness.ARTIFACT
    if not path.exists():
        pytest.skip(f"no {path}: the VM run did not include tests/vm/test_cache.py")
    seed, count, results = soundness.load(path)
    progs = soundness.programs(seed, count)
    v = soundness.check_programs(progs, results, inputs_per_syscall=INPUTS_PER_SYSCALL, seed=seed)
    print(v.summary())
    assert v.attached >= min(count, 2000) - v.refused, v.summary()
    assert not v.counterexamples, v.summary() + "\n" + "\n".join(v.counterexamples[:20])
    assert not v.disagreements, v.summary() + "\n" + "\n".join(v.disagreements[:10])


@pytest.mark.parametrize("seed", range(4))
def test_analysis_sound_against_emulator(seed: int) -> None:
    rng = random.Random(seed)
    bad = []
    for _ in range(50):
        insns = randprog.generate(rng)
        cache = cacheability.analyze(insns, ["x86_64"])[0]
        emu = Emulator(randprog.as_object(insns))
        for nr in cache.cached:
            if nr in cacheability.EXCEPTIONS["x86_64"]:
                continue
            res = emu.run(soundness.random_input(rng, nr))
            verdict = Verdict(res.r0 & 0xFFFFFFFF)
            if verdict.action != Action.ALLOW:
                bad.append(f"nr {nr}: {verdict}: {[str(i) for i in insns]}")
    assert not bad, "\n".join(bad[:5])
