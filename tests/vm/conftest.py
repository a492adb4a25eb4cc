"""Fixtures for the VM-marked tests (they run in the guest, as root).

- `unprivileged`: run a command or a Python callable as uid/gid 65534 with no
  capabilities (and no supplementary groups).
- `sysctl`: set /proc/sys values; the old values come back after the test.
- `kernel_has_extended`: whether the running kernel accepts
  SECCOMP_FILTER_FLAG_EXTENDED (the patched kernel).
- `kernel_dir`: the build-kernel output dir of the running kernel (bzImage,
  config, selftests/).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmhelpers import Sysctl, Unprivileged, probe_extended


@pytest.fixture
def unprivileged() -> Unprivileged:
    if os.geteuid() != 0:
        pytest.skip("the unprivileged helper needs root to drop privileges")
    return Unprivileged()


@pytest.fixture
def sysctl() -> Iterator[Sysctl]:
    """sysctl("kernel.yama.ptrace_scope", 2); restored after the test.

    Note: Yama's ptrace_scope 3 cannot be lowered again until reboot.
    """
    s = Sysctl()
    yield s
    s.restore()


@pytest.fixture(scope="session")
def kernel_has_extended() -> bool:
    return probe_extended()


@pytest.fixture(scope="session")
def kernel_dir() -> Path:
    d = os.environ.get("EBPFSECCOMP_KERNEL_DIR")
    if not d:
        pytest.skip("EBPFSECCOMP_KERNEL_DIR not set (not started by vm/run)")
    return Path(d)
