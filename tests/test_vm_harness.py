"""The VM harness's parsing, on the host: kernel reports found on the console."""

from __future__ import annotations

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
