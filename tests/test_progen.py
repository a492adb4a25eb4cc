"""The random programs of the verifier differential test (tests/progen.py):
deterministic, and `check` gives every one a verdict without an exception."""

from __future__ import annotations

import progen

from ebpfseccomp.analysis.checker import check
from ebpfseccomp.elf import load_object_bytes


def test_generation_is_deterministic() -> None:
    assert progen.generate(7) == progen.generate(7)
    assert progen.generate(7) != progen.generate(8)


def test_check_decides_every_generated_program() -> None:
    verdicts = {True: 0, False: 0}
    for seed in range(300):
        obj = load_object_bytes(progen.elf(progen.generate(seed)), f"gen-{seed}.o")
        verdicts[check(obj).loadable] += 1
    # the mix exercises both answers
    assert verdicts[True] > 30 and verdicts[False] > 30, verdicts
