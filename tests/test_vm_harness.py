"""The VM harness's parsing, on the host: kernel reports found on the console."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vm"))

import vmlib  # noqa: E402


def test_kernel_findings_catch_sanitizers_and_warnings(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("\n".join([
        "virtme-ng-init: starting script",
        "[   12.1] ==================================================================",
        "[   12.1] BUG: KASAN: slab-use-after-free in seccomp_filter_release+0x1/0x2",
        "[   12.1] Read of size 8 at addr ffff888003a1c000 by task python3/301",
        "ok 1 global.allow_filter_attaches",
        "[   40.0] WARNING: CPU: 1 PID: 77 at kernel/seccomp.c:2850 seccomp_running_prog",
        "[   41.0] WARNING: possible circular locking dependency detected",
        "[   99.0] unreferenced object 0xffff888004d1a000 (size 256):",
    ]) + "\n")
    found = vmlib.kernel_findings(log, context=2)
    text = "\n".join(found)
    assert "KASAN: slab-use-after-free" in text and "Read of size 8" in text
    assert "seccomp_running_prog" in text and "circular locking" in text
    assert "unreferenced object" in text


def test_a_clean_console_has_no_findings(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("virtme-ng-init: udev is done\nok 1 global.x\n# SKIP warning-free\n"
                   "traps: python[2741] general protection fault ip:7f08bd02750f "
                   "sp:7ffe8036e910 error:0 in libc.so.6[2650f,7f08bd027000+156000]\n")
    assert vmlib.kernel_findings(log) == []
    assert vmlib.kernel_findings(tmp_path / "missing.log") == []


def test_finding_kinds_name_each_checker() -> None:
    found = [
        "[ 1.0] BUG: KASAN: slab-use-after-free in seccomp_filter_release+0x1/0x2",
        "[ 1.0] Read of size 8 at addr ffff888003a1c000 by task python3/301",
        "[ 2.0] UBSAN: shift-out-of-bounds in kernel/seccomp.c:100:3",
        "[ 3.0] WARNING: possible circular locking dependency detected",
        "[ 4.0] BUG: sleeping function called from invalid context at mm/slub.c:4119",
        "[ 5.0] WARNING: CPU: 1 PID: 77 at kernel/bpf/core.c:10 bpf_prog_free+0x1/0x2",
        "[ 6.0] WARNING: suspicious RCU usage",
        "[ 7.0] kernel BUG at kernel/seccomp.c:12!",
    ]
    assert vmlib.finding_kinds(found) == {
        "KASAN": 1, "UBSAN": 1, "lockdep": 2, "atomic-sleep": 1, "WARN": 1, "BUG/oops/panic": 1,
    }
    assert vmlib.finding_kinds([]) == {}


_KMEMLEAK = """unreferenced object 0xffff888101a3c000 (size 512):
  comm "seccomp_bpf", pid 411, jiffies 4294937296
  hex dump (first 32 bytes):
    73 65 63 63 6f 6d 70 00 00 00 00 00 00 00 00 00  seccomp.........
  backtrace (crc 5d3e2f1a):
    kmemleak_alloc+0x4a/0x80
    __kmalloc_node_track_caller_noprof+0x2a1/0x3c0
    p9_fcall_init+0x53/0x90
unreferenced object 0xffff888102b4d800 (size 256):
  comm "python3", pid 502, jiffies 4294939012
  hex dump (first 32 bytes):
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
  backtrace (crc 0):
    kmemleak_alloc+0x4a/0x80
    __kmalloc_cache_noprof+0x1c2/0x2f0
    seccomp_prepare_filter+0x91/0x3a0
    do_seccomp+0x2c5/0x1100
"""


def test_kmemleak_leaks_are_judged_by_their_backtrace() -> None:
    reports = vmlib.kmemleak_reports(_KMEMLEAK)
    assert len(reports) == 2
    # the first names seccomp only in its comm and its contents: not ours
    assert not vmlib.kmemleak_names_seccomp_or_bpf(reports[0])
    assert vmlib.kmemleak_names_seccomp_or_bpf(reports[1])
    assert "seccomp_prepare_filter" in reports[1]
    assert vmlib.kmemleak_reports("") == []
    assert not vmlib.kmemleak_names_seccomp_or_bpf("unreferenced object 0x1 (size 8):\nbpf")


def test_flavour_subsets_and_baseline_names() -> None:
    assert vmlib.in_flavor_subset("tests/vm/test_cache.py::test_x", "normal")
    assert not vmlib.in_flavor_subset("tests/vm/test_cache.py::test_x", "debug")
    assert vmlib.in_flavor_subset("tests/vm/test_smp_net.py::test_attach_racing_fork", "debug")
    assert vmlib.in_flavor_subset(
        "tests/vm/test_loader.py::test_every_example_loads_and_attaches[rate_limit]", "debug")
    assert not vmlib.in_flavor_subset(
        "tests/vm/test_loader.py::test_run_execs_under_every_example[allow_all]", "debug")
    assert not vmlib.in_flavor_subset(
        "tests/vm/test_loader.py::test_every_example_loads_and_attaches_x", "debug")
    for entry in vmlib.DEBUG_TESTS:  # each names a file, or a test function in it
        path, _, func = entry.partition("::")
        assert (vmlib.REPO / path).exists(), entry
        assert not func or f"def {func}(" in (vmlib.REPO / path).read_text(), entry
    assert vmlib.baseline_list("debug").name == "x86_64-debug.txt"
    assert vmlib.baseline_list("normal", "arm64") == vmlib.BASELINES_DIR / "arm64-normal.txt"
    # every flavour make test boots has its baseline list
    for flavor in vmlib.FLAVORS:
        assert vmlib.baseline_binaries(vmlib.baseline_list(flavor)) == {"seccomp_bpf"}


def test_claim_results_dir_falls_back_when_in_use(tmp_path: Path) -> None:
    import fcntl

    target = tmp_path / "vm-test" / "latest"
    (tmp_path / "vm-test").mkdir()
    with open(tmp_path / "vm-test" / "latest.lock", "wb") as other:  # another run holds it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        got = vmlib.claim_results_dir(target)
        assert got == target.with_name(f"latest-{os.getpid()}")
    free = tmp_path / "vm-test" / "pytest"
    assert vmlib.claim_results_dir(free) == free
