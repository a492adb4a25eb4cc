"""The kernel's seccomp selftests, run in the VM, as host pytest items.

With --vm, one item per selftest case (seccomp_bpf, and whatever binaries the
series adds, e.g. seccomp_ebpf), judged against vm/selftests-baseline.txt:
a seccomp_bpf test that passes on the unpatched kernel must pass; one that
fails or skips there too is reported as a skip with the recorded reason; a
case of a binary the baseline does not cover must pass (or skip).

These items run on the host (they read the results of the VM boot that
tests/conftest.py does once per session); they are not VM-marked.
"""

from __future__ import annotations

import os

import pytest
import vmlib

NOT_RUN = "needs the patched kernel in the VM: run make vm-test or pytest --vm"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "selftest" not in metafunc.fixturenames:
        return
    cases: list[object] = []
    ids: list[str] = []
    config = metafunc.config
    if config.getoption("--vm") and os.environ.get(vmlib.IN_VM_ENV) != "1":
        # The session's VM boot, registered by tests/conftest.py.
        run = config.pluginmanager.get_plugin("ebpfseccomp-vm-run")
        if run is None:
            pytest.fail("tests/conftest.py did not register the VM run", pytrace=False)
        run.ensure()
        for r in run.selftests:
            cases.append(r)
            ids.append(f"{r.binary}:{r.name}")
        if not cases:
            cases.append(run.error or "no selftest results came back from the VM")
            ids.append("no-results")
    else:
        cases.append(None)
        ids.append("not-run")
    metafunc.parametrize("selftest", cases, ids=ids)


def test_selftest(selftest: vmlib.SelftestResult | str | None) -> None:
    if selftest is None:
        pytest.skip(NOT_RUN)
    if isinstance(selftest, str):
        pytest.fail(selftest, pytrace=False)
    verdict, msg = vmlib.compare_to_baseline(
        selftest, vmlib.load_baseline(), vmlib.baseline_binaries()
    )
    if verdict == "ok":
        return
    if verdict in ("known", "skip"):
        pytest.skip(msg)
    pytest.fail(f"{verdict}: {msg}\n\n{selftest.detail}", pytrace=False)
