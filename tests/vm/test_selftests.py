"""The kernel's seccomp selftests, run in the VM, as host pytest items.

With --vm, tests/conftest.py replaces the placeholder below by one item per
selftest case (seccomp_bpf, and whatever binaries the series adds, e.g.
seccomp_ebpf), judged against vm/baselines/<arch>-<flavor>.txt: a seccomp_bpf test
that passes on the unpatched kernel must pass; one that fails or skips there
too is reported as a skip with the recorded reason; a case of a binary that
the baseline does not cover must pass (or skip).  The items run on the host,
from the results of the session's single VM boot; they are not VM-marked.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vm_selftests


def test_selftests() -> None:
    pytest.skip("needs the patched kernel in the VM: run make vm-test or pytest --vm")
