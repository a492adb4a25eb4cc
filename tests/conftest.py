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
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "vm"))

import arm64  # noqa: E402
import vmlib  # noqa: E402

IN_VM = os.environ.get(vmlib.IN_VM_ENV) == "1"
SKIP_REASON = "needs the patched kernel in the VM: run make vm-test or pytest --vm"
ARM64_SKIP_REASON = "needs the arm64 guest: run pytest --vm (or vm/vm-test --arch arm64)"


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
        if report.when == "teardown":  # keep the file current: a hang loses nothing
            self.path.write_text(json.dumps(self.outcomes, indent=1) + "\n")

    @pytest.hookimpl
    def pytest_sessionfinish(self) -> None:
        self.path.write_text(json.dumps(self.outcomes, indent=1) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "vm_selftests: placeholder expanded into one item per kernel selftest case (--vm)",
    )
    config.addinivalue_line(
        "markers",
        "vm_arm64_selftests: the same for the arm64 guest (--vm; tests/vm/test_arm64.py)",
    )
    results = os.environ.get("EBPFSECCOMP_VM_RESULTS")
    if IN_VM and results:
        config.pluginmanager.register(_OutcomeRecorder(Path(results)), "ebpfseccomp-vm-results")


# ------------------------------------------------------------- on the host


class VmRun:
    """One boot of the VM for the whole host session (lazy)."""

    def __init__(self, config: pytest.Config, arch: str = "x86_64") -> None:
        self.config = config
        self.arch = arch
        self.done = False
        self.error = ""
        suffix = "" if arch == "x86_64" else f"-{arch}"
        self.results = vmlib.cache_dir() / "vm-test" / f"pytest{suffix}"
        self.baseline = vmlib.BASELINE_LIST if arch == "x86_64" else arm64.baseline_list()
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.selftests: list[vmlib.SelftestResult] = []
        self.summary: dict[str, Any] = {}
        self.nodeids: list[str] = []  # the VM-marked items this session selected
        self.all_vm_items = True  # none deselected: run all of tests/vm
        self.want_selftests = True  # the selftest placeholder is selected

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
        if self.arch != "x86_64":  # selftests and the enforcement check (vm/arm64.py)
            cmd += ["--arch", self.arch]
        elif not self.all_vm_items:
            ids = vmlib.cache_dir() / "vm-test" / "pytest-nodeids.txt"
            ids.parent.mkdir(parents=True, exist_ok=True)
            ids.write_text("".join(f"{n}\n" for n in self.nodeids))
            cmd += ["--nodeids-file", str(ids)]
            if not self.nodeids:
                cmd.append("--no-pytest")
        if not self.want_selftests and self.arch == "x86_64":
            cmd.append("--no-selftests")
        print(
            f"\n[--vm] booting the {self.arch} VM once: {' '.join(cmd[1:])}",
            file=sys.stderr,
            flush=True,
        )
        if capman is not None:
            with capman.global_and_fixture_disabled():
                proc = subprocess.run(
                    cmd, stdin=subprocess.DEVNULL, check=False, preexec_fn=vmlib.die_with_parent
                )
        else:
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, check=False, preexec_fn=vmlib.die_with_parent
            )
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


def vm_run(config: pytest.Config, arch: str = "x86_64") -> VmRun:
    """The session's VmRun of `arch`, also reachable as the plugin named
    VM_RUN_PLUGIN (x86_64) or VM_RUN_PLUGIN-arm64."""
    name = VM_RUN_PLUGIN if arch == "x86_64" else f"{VM_RUN_PLUGIN}-{arch}"
    run = config.pluginmanager.get_plugin(name)
    if run is None:
        run = VmRun(config, arch)
        config.pluginmanager.register(run, name)
    assert isinstance(run, VmRun)
    return run


@pytest.fixture
def vm_results(request: pytest.FixtureRequest) -> Path:
    """The results directory of this session's single VM run (booted if need be)."""
    return vm_run(request.config).ensure().results


@pytest.fixture
def arm64_results(request: pytest.FixtureRequest) -> Path:
    """The results of this session's single arm64 boot (vm/vm-test --arch arm64);
    skips without --vm or with EBPFSECCOMP_ARM64=0, fails if the boot failed."""
    if IN_VM or not request.config.getoption("--vm"):
        pytest.skip(ARM64_SKIP_REASON)
    if not arm64.enabled():
        pytest.skip("EBPFSECCOMP_ARM64=0: the arm64 phase is off")
    run = vm_run(request.config, "arm64").ensure()
    if run.error:
        raise VmFailure(run.error)
    return run.results


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


def _selects_all_vm_tests(config: pytest.Config, nodeids: list[str]) -> bool:
    """Whether the session kept every VM-marked test (then the guest runs tests/vm)."""
    args = [a for a in config.args if not a.startswith("-")]
    whole = not args or any(
        (REPO / "tests" / "vm").resolve().is_relative_to(Path(a).resolve()) for a in args
    )
    return whole and not config.getoption("keyword") and not config.getoption("markexpr")


class SelftestItem(pytest.Item):
    """One kernel selftest case from the VM run, judged against the baseline."""

    def __init__(
        self,
        *,
        result: vmlib.SelftestResult | None,
        error: str = "",
        baseline: Path = vmlib.BASELINE_LIST,
        **kw: Any,
    ):
        super().__init__(**kw)
        self.result = result
        self.error = error
        self.baseline = baseline

    def runtest(self) -> None:
        if self.result is None:
            raise VmFailure(self.error or "no selftest results came back from the VM")
        verdict, msg = vmlib.compare_to_baseline(
            self.result, vmlib.load_baseline(self.baseline), vmlib.baseline_binaries(self.baseline)
        )
        if verdict == "ok":
            return
        if verdict in ("known", "skip"):
            pytest.skip(msg)
        raise VmFailure(f"{verdict}: {msg}\n\n{self.result.detail}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, VmFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.name} [kernel selftest in VM]"


def _expand_selftests(run: VmRun, items: list[pytest.Item], marker: str = "vm_selftests") -> None:
    """Replace the `marker` placeholder(s) by one item per selftest case."""
    for i in reversed(range(len(items))):
        item = items[i]
        if item.get_closest_marker(marker) is None:
            continue
        assert item.parent is not None
        run.ensure()
        new: list[pytest.Item] = [
            SelftestItem.from_parent(
                item.parent,
                name=f"{item.name}[{r.binary}:{r.name}]",
                result=r,
                baseline=run.baseline,
            )
            for r in run.selftests
        ]
        if not new:
            new = [
                SelftestItem.from_parent(
                    item.parent,
                    name=f"{item.name}[no-results]",
                    result=None,
                    error=run.error or "no selftest results came back from the VM",
                )
            ]
        items[i : i + 1] = new


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_VM:
        return
    use_vm = config.getoption("--vm")
    if use_vm:
        run = vm_run(config)
        run.nodeids = [it.nodeid for it in items if it.get_closest_marker("vm") is not None]
        run.all_vm_items = _selects_all_vm_tests(config, run.nodeids)
        run.want_selftests = any(it.get_closest_marker("vm_selftests") for it in items)
    for i, item in enumerate(items):
        if item.get_closest_marker("vm") is None:
            continue
        if not use_vm:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            continue
        assert item.parent is not None
        items[i] = VmResultItem.from_parent(item.parent, name=item.name, original=item)
    if use_vm and not config.option.collectonly:
        _expand_selftests(vm_run(config), items)
        if arm64.enabled():
            _expand_selftests(vm_run(config, "arm64"), items, "vm_arm64_selftests")


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """With --vm: one short block a CI log reader can find, per kernel booted:
    the guest (kernel, cpus, clocksource), the guest tests' and each selftest
    binary's counts against the baseline, and the wall time of each phase."""
    if IN_VM or not config.getoption("--vm"):
        return
    tr = terminalreporter
    for name in (VM_RUN_PLUGIN, f"{VM_RUN_PLUGIN}-arm64"):
        run = config.pluginmanager.get_plugin(name)
        if isinstance(run, VmRun) and run.summary:
            _summarize(tr, run)
    junit = config.getoption("xmlpath", default=None)
    if junit:
        tr.write_line(f"JUnit XML (host, guest and selftest cases): {junit}")


def _summarize(tr: Any, run: VmRun) -> None:
    s = run.summary
    tr.section(f"ebpfseccomp VM summary ({run.arch})")
    guest = s.get("guest", {})
    tr.write_line(f"kernel {guest.get('kernel', '?')} ({Path(str(s.get('kernel', '?'))).name}), "
                  f"{guest.get('cpus', '?')} cpus, clocksource {guest.get('clocksource', '?')}")
    if "pytest" in s:
        counts = {k: v for k, v in s["pytest"].items() if k != "status"}
        tr.write_line("guest tests: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    for binary, st in sorted(s.get("selftests", {}).items()):
        tr.write_line(f"selftest {binary}: {st.get('pass', 0)} pass, {st.get('fail', 0)} fail, "
                      f"{st.get('skip', 0)} skip; vs baseline: regressions "
                      f"{st.get('regression', 0)}, new failures {st.get('new-fail', 0)}")
    if "enforce" in s:
        tr.write_line(f"enforcement checks: {s['enforce'].get('pass', 0)} as expected, "
                      f"{s['enforce'].get('fail', 0)} not")
    tr.write_line(f"time: boot {s.get('boot_seconds')} s, guest run {s.get('seconds')} s; "
                  f"host session {time.monotonic() - _SESSION_START:.0f} s")


_SESSION_START = time.monotonic()
