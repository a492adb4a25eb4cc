"""Project-wide pytest plumbing: the `--vm` option and VM-marked tests.

Tests marked `@pytest.mark.vm` (under tests/vm/) need the patched kernel:

- in the guest (EBPFSECCOMP_IN_VM=1, set by vm/run) they run normally, and
  their outcomes are written to $EBPFSECCOMP_VM_RESULTS (JSON) for the host;
- on the host without --vm they are skipped;
- on the host with --vm the first one boots the VM once (vm/vm-test: the
  VM-marked tests and the kernel's seccomp selftests), and every VM-marked
  item reports its in-VM outcome (pass, fail with the in-VM failure text, or
  skip with the in-VM reason).  Their bodies never run on the host.
- `--vm-flavor debug` (repeatable with `--vm-flavor normal`; make test gives
  both) boots the debug kernel once more for the selftests and the VM-marked
  tests of vmlib.DEBUG_TESTS, reported as extra items `NAME@debug`.
"""

from __future__ import annotations

import calendar
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
    parser.addoption(
        "--vm-flavor",
        action="append",
        choices=vmlib.FLAVORS,
        help="with --vm: a kernel flavour to boot (repeatable; default normal).  debug: "
        "KASAN/UBSAN/lockdep/kmemleak kernel, the selftests and the guest tests of "
        "vm/vmlib.py DEBUG_TESTS, as items NAME@debug",
    )


def vm_flavors(config: pytest.Config) -> list[str]:
    """The kernel flavours this session boots (--vm-flavor, default normal)."""
    return list(dict.fromkeys(config.getoption("--vm-flavor") or ["normal"]))


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
    """One boot of the VM (one kernel flavour) for the whole host session (lazy)."""

    def __init__(self, config: pytest.Config, flavor: str = "normal",
                 arch: str = "x86_64") -> None:
        self.config = config
        self.flavor = flavor
        self.arch = arch
        self.done = False
        self.error = ""
        self.results = vmlib.claim_results_dir(
            vmlib.cache_dir() / "vm-test" / f"pytest{vmlib.run_suffix(flavor, arch)}")
        self.baseline = vmlib.baseline_list(flavor, arch)
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.selftests: list[vmlib.SelftestResult] = []
        self.summary: dict[str, Any] = {}
        self.nodeids: list[str] = []  # the VM-marked items this session selected
        self.all_vm_items = True  # none deselected: run all of tests/vm
        self.want_selftests = True  # the selftest placeholder is selected
        self.checked = False  # a KernelCheckItem judged this run's kernel reports

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
            "--flavor",
            self.flavor,
        ]
        if self.arch != "x86_64":  # selftests and the enforcement check (vm/arm64.py)
            cmd += ["--arch", self.arch]
        elif not self.all_vm_items:
            ids = self.results.parent / f"{self.results.name}-nodeids.txt"
            ids.parent.mkdir(parents=True, exist_ok=True)
            ids.write_text("".join(f"{n}\n" for n in self.nodeids))
            cmd += ["--nodeids-file", str(ids)]
            if not self.nodeids:
                cmd.append("--no-pytest")
        if not self.want_selftests and self.arch == "x86_64":
            cmd.append("--no-selftests")
        print(
            f"\n[--vm] booting the {self.arch} {self.flavor} VM once: {' '.join(cmd[1:])}",
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


def _plugin_name(flavor: str, arch: str = "x86_64") -> str:
    return VM_RUN_PLUGIN + vmlib.run_suffix(flavor, arch)


def vm_run(config: pytest.Config, flavor: str = "normal", arch: str = "x86_64") -> VmRun:
    """The session's VmRun of a flavour and arch, also reachable as the plugin
    named VM_RUN_PLUGIN (normal x86_64) or VM_RUN_PLUGIN-<flavor>/-arm64."""
    run = config.pluginmanager.get_plugin(_plugin_name(flavor, arch))
    if run is None:
        run = VmRun(config, flavor, arch)
        config.pluginmanager.register(run, _plugin_name(flavor, arch))
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
    run = vm_run(request.config, arch="arm64").ensure()
    if run.error:
        raise VmFailure(run.error)
    return run.results


class VmFailure(Exception):
    pass


class _VmReportItem(pytest.Item):
    """A host item whose failure is a VmFailure's text (no host traceback)."""

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, VmFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class VmResultItem(_VmReportItem):
    """Host stand-in for a VM-marked test: reports the in-VM outcome."""

    def __init__(self, *, original: pytest.Item, flavor: str = "normal", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.original = original
        self.flavor = flavor
        self.own_markers = list(original.own_markers)
        self.keywords.update(original.keywords)

    def runtest(self) -> None:
        run = vm_run(self.config, self.flavor).ensure()
        rec = run.outcomes.get(self.original.nodeid)
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

    def reportinfo(self) -> tuple[Any, int | None, str]:
        path, lineno, name = self.original.reportinfo()
        where = "in VM" if self.flavor == "normal" else f"in VM, {self.flavor} kernel"
        return path, lineno, f"{name} [{where}]"


def _selects_all_vm_tests(config: pytest.Config, nodeids: list[str]) -> bool:
    """Whether the session kept every VM-marked test (then the guest runs tests/vm)."""
    args = [a for a in config.args if not a.startswith("-")]
    whole = not args or any(
        (REPO / "tests" / "vm").resolve().is_relative_to(Path(a).resolve()) for a in args
    )
    return whole and not config.getoption("keyword") and not config.getoption("markexpr")


class SelftestItem(_VmReportItem):
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

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.name} [kernel selftest in VM]"


class KernelCheckItem(_VmReportItem):
    """What the kernel itself reported during a VM run: the console's
    sanitizer/lockdep/BUG/WARN reports, or kmemleak's leaks in seccomp/BPF
    code (kernels with kmemleak).  Fails with the report."""

    def __init__(self, *, run: VmRun, check: str, **kw: Any):
        super().__init__(**kw)
        self.run = run
        self.check = check

    def runtest(self) -> None:
        s = self.run.summary
        self.run.checked = True
        if self.check == "kernel-console":
            if "kernel_findings" not in s:
                raise VmFailure(self.run.error or "vm/vm-test wrote no summary")
            if s["kernel_findings"]:
                raise VmFailure("the kernel reported on its console:\n"
                                + "\n".join(s["kernel_findings"]))
            return
        kml = s.get("kmemleak", {})
        if "error" in kml:
            raise VmFailure(f"kmemleak did not scan: {kml['error']}")
        if kml.get("seccomp_or_bpf"):
            raise VmFailure("kmemleak: leaks allocated by seccomp or BPF code:\n"
                            + "\n\n".join(kml.get("reports", [])))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.name} [kernel's own checks, VM run]"


def _expand_selftests(runs: list[VmRun], items: list[pytest.Item],
                      marker: str = "vm_selftests") -> None:
    """Replace the `marker` placeholder(s) by one item per selftest case and
    run (`test_selftests[seccomp_bpf:global.x]`, and
    `test_selftests[debug:seccomp_bpf:global.x]` for the debug kernel), and
    the kernel's own checks of each run (`[kernel-console]`, `[debug:kmemleak]`)."""
    for i in reversed(range(len(items))):
        item = items[i]
        if item.get_closest_marker(marker) is None:
            continue
        assert item.parent is not None
        new: list[pytest.Item] = []
        for run in runs:
            run.ensure()
            prefix = "" if run.flavor == "normal" else f"{run.flavor}:"
            cases: list[pytest.Item] = [
                SelftestItem.from_parent(
                    item.parent,
                    name=f"{item.name}[{prefix}{r.binary}:{r.name}]",
                    result=r,
                    baseline=run.baseline,
                )
                for r in run.selftests
            ]
            if not cases:
                cases = [
                    SelftestItem.from_parent(
                        item.parent,
                        name=f"{item.name}[{prefix}no-results]",
                        result=None,
                        error=run.error or "no selftest results came back from the VM",
                        baseline=run.baseline,
                    )
                ]
            checks = ["kernel-console"] + (["kmemleak"] if "kmemleak" in run.summary else [])
            cases += [
                KernelCheckItem.from_parent(
                    item.parent, name=f"{item.name}[{prefix}{check}]", run=run, check=check
                )
                for check in checks
            ]
            new += cases
        items[i : i + 1] = new


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_VM:
        return
    use_vm = config.getoption("--vm")
    flavors = vm_flavors(config)
    if use_vm:
        vm_ids = [it.nodeid for it in items if it.get_closest_marker("vm") is not None]
        want_selftests = any(it.get_closest_marker("vm_selftests") for it in items)
        for flavor in flavors:
            run = vm_run(config, flavor)
            run.nodeids = [n for n in vm_ids if vmlib.in_flavor_subset(n, flavor)]
            # only the normal kernel runs the whole of tests/vm
            run.all_vm_items = flavor == "normal" and _selects_all_vm_tests(config, vm_ids)
            run.want_selftests = want_selftests
    extra: list[pytest.Item] = []  # other flavours' stand-ins, after every normal item
    for i, item in enumerate(items):
        if item.get_closest_marker("vm") is None:
            continue
        if not use_vm:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            continue
        assert item.parent is not None
        for flavor in flavors:
            if flavor != "normal" and vmlib.in_flavor_subset(item.nodeid, flavor):
                extra.append(VmResultItem.from_parent(
                    item.parent, name=f"{item.name}@{flavor}", original=item, flavor=flavor
                ))
        if "normal" in flavors:
            items[i] = VmResultItem.from_parent(item.parent, name=item.name, original=item)
        else:
            item.add_marker(pytest.mark.skip(reason="--vm-flavor normal was not given"))
    items += extra
    if use_vm and not config.option.collectonly:
        _expand_selftests([vm_run(config, f) for f in flavors], items)
        if arm64.enabled():
            _expand_selftests([vm_run(config, arch="arm64")], items, "vm_arm64_selftests")


def _session_runs(config: pytest.Config) -> list[VmRun]:
    """The VM runs this session made or may make: each flavour, then arm64."""
    names = [_plugin_name(f) for f in vm_flavors(config)] + [_plugin_name("normal", "arm64")]
    runs = [config.pluginmanager.get_plugin(n) for n in names]
    return [r for r in runs if isinstance(r, VmRun)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A VM run whose kernel reported a problem fails the session, also when
    no KernelCheckItem was selected to say so (e.g. `pytest --vm -k x`)."""
    if IN_VM or not session.config.getoption("--vm"):
        return
    for run in _session_runs(session.config):
        if run.checked or not run.summary:
            continue
        kml = run.summary.get("kmemleak", {})
        if run.summary.get("kernel_findings") or kml.get("seccomp_or_bpf") or "error" in kml:
            print(f"\n[--vm] the {run.arch} {run.flavor} kernel reported problems (not judged "
                  f"by a selected item): see {run.results / 'report.txt'}", file=sys.stderr)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _build_phase(kdir: Path) -> str:
    """The kernel build's share: this run's build, or a cached one."""
    try:
        build = json.loads((kdir / "build.json").read_text())
    except (OSError, ValueError):
        return "kernel build ?"
    started = os.environ.get("EBPFSECCOMP_RUN_STARTED", "")
    try:
        when = calendar.timegm(time.strptime(str(build.get("date")), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        when = 0
    secs = build.get("total_seconds", "?")
    if started.isdigit() and when >= int(started):
        return f"kernel build {secs} s ({build.get('kind', '?')}, this run)"
    return f"kernel build 0 s (cached; built {build.get('date', '?')} in {secs} s)"


def _summary_lines(s: dict[str, Any]) -> list[str]:
    """The summary block of one vm-test run (one flavour, one arch)."""
    guest = s.get("guest", {})
    kdir = Path(str(s.get("kernel", "?")))
    out = [f"[{s.get('arch', 'x86_64')} {s.get('flavor', 'normal')}] kernel "
           f"{guest.get('kernel', '?')} ({kdir.name}), {guest.get('cpus', '?')} cpus, "
           f"clocksource {guest.get('clocksource', '?')}"]
    if "pytest" in s:
        counts = {k: v for k, v in s["pytest"].items() if k != "status"}
        out.append("  guest tests: "
                   + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"))
    for binary, st in sorted(s.get("selftests", {}).items()):
        out.append(f"  selftest {binary}: {st.get('pass', 0)} pass, {st.get('fail', 0)} fail, "
                   f"{st.get('skip', 0)} skip; vs baseline: regressions "
                   f"{st.get('regression', 0)}, new failures {st.get('new-fail', 0)}, "
                   f"known {st.get('known', 0)}, fixed {st.get('fixed', 0)}")
    if "baseline" in s:
        regs = s.get("selftest_regressions", [])
        out.append(f"  baseline {Path(str(s['baseline'])).name}: "
                   + (", ".join(regs[:8]) + (" ..." if len(regs) > 8 else "")
                      if regs else "no regression"))
    if "enforce" in s:
        out.append(f"  enforcement checks: {s['enforce'].get('pass', 0)} as expected, "
                   f"{s['enforce'].get('fail', 0)} not")
    kinds = s.get("finding_kinds", {})
    out.append("  kernel findings: "
               + (", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) or "none"))
    kml = s.get("kmemleak")
    if kml is not None:
        out.append("  kmemleak: " + (f"scan failed: {kml['error']}" if "error" in kml else
                                     f"{kml.get('suspects', 0)} suspected leak(s), "
                                     f"{kml.get('seccomp_or_bpf', 0)} in seccomp/BPF code"))
    ph = s.get("phases", {})
    ran = {"pytest": "pytest" in s, "selftests": bool(s.get("selftests"))}
    spent = "; ".join(f"{name} {ph[key]} s" if key in ph else
                      (f"{name} (not timed apart)" if ran[key] else f"{name} not run")
                      for key, name in (("pytest", "guest tests"), ("selftests", "selftests")))
    out.append(f"  time: {_build_phase(kdir)}; boot {s.get('boot_seconds')} s; {spent}"
               + (f"; kmemleak scan {ph['kmemleak']} s" if "kmemleak" in ph else "")
               + f"; whole guest run {s.get('seconds')} s")
    out.append("  status: " + ("FAILED" if s.get("failed") else "passed"))
    return out


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """With --vm: one short block a CI log reader can find, per kernel booted
    (flavour and arch): the guest (kernel, cpus, clocksource), the guest
    tests' and each selftest binary's counts against its baseline, the
    kernel's sanitizer/lockdep/WARN findings and kmemleak's, and the wall
    time of each phase."""
    if IN_VM or not config.getoption("--vm"):
        return
    summaries = [r.summary for r in _session_runs(config) if r.summary]
    if not summaries:
        return
    tr = terminalreporter
    tr.section("ebpfseccomp VM summary")
    for s in summaries:
        for line in _summary_lines(s):
            tr.write_line(line)
    tr.write_line(f"host session {time.monotonic() - _SESSION_START:.0f} s")
    junit = config.getoption("xmlpath", default=None)
    if junit:
        tr.write_line(f"JUnit XML (host, guest and selftest cases): {junit}")


_SESSION_START = time.monotonic()
