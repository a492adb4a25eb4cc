"""Project-wide pytest plumbing: the `--vm` option and VM-marked tests.

Tests marked `@pytest.mark.vm` (under tests/vm/) need the patched kernel:

- in the guest (EBPFSECCOMP_IN_VM=1, set by vm/run) they run normally, and
  their outcomes are written to $EBPFSECCOMP_VM_RESULTS (JSON) for the host;
- on the host without --vm they are skipped;
- on the host with --vm the first one boots the VM once (vm/vm-test: the
  VM-marked tests and the kernel's seccomp selftests), and every VM-marked
  item reports its in-VM outcome (pass, fail with the in-VM failure text, or
  skip with the in-VM reason).  Their bodies never run on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "vm"))

import vmlib  # noqa: E402

IN_VM = os.environ.get(vmlib.IN_VM_ENV) == "1"
SKIP_REASON = "needs the patched kernel in the VM: run make vm-test or pytest --vm"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--vm",
        action="store_true",
        default=False,
        help="boot the patched kernel once and run the VM-marked tests (and the "
        "kernel's seccomp selftests) in it; report their outcomes here",
    )


# ------------------------------------------------------------- in the guest


class _OutcomeRecorder:
    """Collects per-test outcomes in the guest, keyed by node id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.outcomes: dict[str, dict[str, Any]] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        rec = self.outcomes.setdefault(report.nodeid, {"outcome": "passed", "longrepr": ""})
        if report.when == "call" or report.outcome != "passed":
            if rec["outcome"] == "failed":
                return  # keep the first failure (teardown errors come later)
            outcome = report.outcome
            text = ""
            if report.skipped:
                if isinstance(report.longrepr, tuple):
                    text = str(report.longrepr[2])
                if hasattr(report, "wasxfail"):
                    text = f"xfail: {report.wasxfail}"
            elif report.failed:
                text = report.longreprtext
                if report.when != "call":
                    text = f"[error in {report.when}]\n{text}"
            rec.update(outcome=outcome, longrepr=text, when=report.when)
        if report.when == "call":
            rec["duration"] = round(report.duration, 3)

    @pytest.hookimpl
    def pytest_sessionfinish(self) -> None:
        self.path.write_text(json.dumps(self.outcomes, indent=1) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    results = os.environ.get("EBPFSECCOMP_VM_RESULTS")
    if IN_VM and results:
        config.pluginmanager.register(_OutcomeRecorder(Path(results)), "ebpfseccomp-vm-results")
    if not IN_VM and config.getoption("--vm"):
        vm_run(config)  # registers the lazy VM boot for test_selftests.py


# ------------------------------------------------------------- on the host


class VmRun:
    """One boot of the VM for the whole host session (lazy)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.done = False
        self.error = ""
        self.results = vmlib.cache_dir() / "vm-test" / "pytest"
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.selftests: list[vmlib.SelftestResult] = []
        self.summary: dict[str, Any] = {}

    def ensure(self) -> VmRun:
        if self.done:
            return self
        self.done = True
        capman = self.config.pluginmanager.getplugin("capturemanager")
        cmd = [
            sys.executable,
            str(vmlib.VM_DIR / "vm-test"),
            "--results-dir",
            str(self.results),
            "--quiet-stdout",
        ]
        print(
            "\n[--vm] booting the VM for the VM-marked tests and the selftests",
            file=sys.stderr,
            flush=True,
        )
        if capman is not None:
            with capman.global_and_fixture_disabled():
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False)
        else:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False)
        summary_file = self.results / "summary.json"
        if summary_file.exists():
            self.summary = json.loads(summary_file.read_text())
        if proc.returncode == 2 or not summary_file.exists():
            self.error = f"vm/vm-test could not run the VM (exit {proc.returncode}); see above"
            return self
        if self.summary.get("timed_out") or self.summary.get("guest_died"):
            report = (self.results / "report.txt").read_text(errors="replace")
            self.error = f"the VM run failed:\n{report}"
        pj = self.results / "pytest.json"
        if pj.exists():
            self.outcomes = json.loads(pj.read_text())
        for tap in sorted(self.results.glob("*.tap")):
            self.selftests += vmlib.parse_tap(tap.stem, tap.read_text(errors="replace"))
        return self

    def pytest_log_tail(self) -> str:
        try:
            return "\n".join(
                (self.results / "pytest.log").read_text(errors="replace").splitlines()[-30:]
            )
        except OSError:
            return "(no pytest.log)"


VM_RUN_PLUGIN = "ebpfseccomp-vm-run"


def vm_run(config: pytest.Config) -> VmRun:
    """The session's VmRun, also reachable as the plugin named VM_RUN_PLUGIN."""
    run = config.pluginmanager.get_plugin(VM_RUN_PLUGIN)
    if run is None:
        run = VmRun(config)
        config.pluginmanager.register(run, VM_RUN_PLUGIN)
    assert isinstance(run, VmRun)
    return run


class VmFailure(Exception):
    pass


class VmResultItem(pytest.Item):
    """Host stand-in for a VM-marked test: reports the in-VM outcome."""

    def __init__(self, *, original: pytest.Item, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.original = original
        self.own_markers = list(original.own_markers)
        self.keywords.update(original.keywords)

    def runtest(self) -> None:
        run = vm_run(self.config).ensure()
        rec = run.outcomes.get(self.nodeid)
        if rec is None:
            why = run.error or (
                "this test did not run in the VM; the guest's pytest output ends with:\n"
                + run.pytest_log_tail()
            )
            raise VmFailure(why)
        if rec["outcome"] == "passed":
            return
        if rec["outcome"] == "skipped":
            pytest.skip(f"in the VM: {rec.get('longrepr') or 'skipped'}")
        raise VmFailure(f"failed in the VM:\n{rec.get('longrepr', '')}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, VmFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        path, lineno, name = self.original.reportinfo()
        return path, lineno, f"{name} [in VM]"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_VM:
        return
    use_vm = config.getoption("--vm")
    for i, item in enumerate(items):
        if item.get_closest_marker("vm") is None:
            continue
        if not use_vm:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            continue
        assert item.parent is not None
        items[i] = VmResultItem.from_parent(item.parent, name=item.name, original=item)
