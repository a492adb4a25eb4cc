"""The forms bench/bench_filters.py times are one policy: every form decides alike.

A benchmark that compared a filter allowing less (or more) than another would
measure nothing; bench_filters refuses to time then, and this test runs the
same check on the host (the emulator for eBPF, libseccomp's exported program
through the bench's classic interpreter).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import bench_filters as bf  # noqa: E402
import bench_loader as bl  # noqa: E402

from ebpfseccomp.build import build  # noqa: E402
from ebpfseccomp.policy import libseccomp  # noqa: E402


@pytest.mark.parametrize("rule", [False, True], ids=["allowlist", "allowlist+openat-rule"])
def test_every_form_decides_every_syscall_alike(tmp_path: Path, rule: bool) -> None:
    nrs = bf.allowed_numbers()
    assert len(nrs) == bl.N_ALLOWED
    sources = {"switch": bf.switch_source(nrs, rule), "table": bf.table_source(nrs, rule)}
    if not rule:
        sources["hash"] = bl.hash_source(nrs)
    objs = {}
    for name, text in sources.items():
        src = tmp_path / f"{name}.c"
        src.write_text(text)
        objs[name] = build(src, out=tmp_path / f"{name}.o")
    sel = bf.profile(nrs, rule)
    cbpf = {"tree": libseccomp.build(sel, optimize=True).bytes()}
    if not rule:
        cbpf["default"] = libseccomp.build(sel).bytes()
    bl.check_same_policy(objs, cbpf, nrs, rule)  # raises SystemExit on a difference


def test_a_different_form_is_caught(tmp_path: Path) -> None:
    nrs = bf.allowed_numbers()
    src = tmp_path / "switch.c"
    src.write_text(bf.switch_source(nrs[1:]))  # one syscall short
    obj = build(src, out=tmp_path / "switch.o")
    with pytest.raises(SystemExit, match="decides nr"):
        bl.check_same_policy({"switch": obj}, {}, nrs, False)
