"""Shared code of the VM harness (vm/run, vm/vm-test, tests/conftest.py).

Standard library only: it runs with Debian's python3 before the venv exists.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
VM_DIR = REPO / "vm"
#: Kernel flavours vm/build-kernel builds (--flavor): the debug one adds
#: vm/kernel-debug.config (KASAN, UBSAN, lockdep, kmemleak).
FLAVORS = ("normal", "debug")
#: seccomp_bpf on the unpatched kernel, one list per arch and flavour.
BASELINES_DIR = VM_DIR / "baselines"


def baseline_list(flavor: str = "normal", arch: str = "x86_64") -> Path:
    """The baseline list of a flavour and arch: vm/baselines/<arch>-<flavor>.txt."""
    return BASELINES_DIR / f"{arch}-{flavor}.txt"


def run_suffix(flavor: str = "normal", arch: str = "x86_64") -> str:
    """The suffix naming a kernel's runs and results: "" for the normal
    x86_64 kernel, else "-debug", "-arm64" (as build-kernel names its builds)."""
    return ("" if flavor == "normal" else f"-{flavor}") + ("" if arch == "x86_64" else f"-{arch}")


def make_command(target: str, flavor: str = "normal", arch: str = "x86_64") -> str:
    """The make command for TARGET on a kernel: `make selftest-baseline FLAVOR=debug`."""
    return (f"make {target}" + ("" if flavor == "normal" else f" FLAVOR={flavor}")
            + ("" if arch == "x86_64" else f" KARCH={arch}"))


BASELINE_LIST = baseline_list()  # x86_64, normal (was vm/selftests-baseline.txt)
IN_VM_ENV = "EBPFSECCOMP_IN_VM"
KERNEL_DIR_ENV = "EBPFSECCOMP_KERNEL_DIR"
DEFAULT_MEMORY = "2G"
DEFAULT_CPUS = 2
KVM_PROBE_TIMEOUT = 25.0
Sink = IO[bytes] | int | None  # where a guest stream goes (None: ours)


def log(msg: str) -> None:
    print(f"vm: {msg}", file=sys.stderr, flush=True)


_CLAIMS: list[IO[bytes]] = []  # lock files held for the life of the process


def claim_results_dir(path: Path) -> Path:
    """PATH, or PATH-<pid> when another live process is using PATH.

    A results directory is emptied at the start of a run, so two runs sharing
    the default one (two worktrees' make test, a vm-test beside a pytest
    --vm) would delete each other's results.  The claim is an flock on
    PATH.lock, released when this process exits, so a crashed run never
    blocks the next one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for candidate in (path, path.with_name(f"{path.name}-{os.getpid()}")):
        lock = open(candidate.with_name(candidate.name + ".lock"), "wb")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        _CLAIMS.append(lock)
        if candidate != path:
            log(f"{path} is in use by another run: results go to {candidate}")
        return candidate
    raise VmError(f"cannot claim a results directory next to {path}")


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when its parent dies (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)


class VmError(Exception):
    """A failure of the harness (not of the command run in the guest)."""


def cache_dir() -> Path:
    env = os.environ.get("EBPFSECCOMP_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "ebpfseccomp"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def kernel_dir(baseline: bool = False, flavor: str = "normal", arch: str = "x86_64") -> Path:
    """The output directory of the up-to-date kernel build (VmError if absent)."""
    override = (os.environ.get(KERNEL_DIR_ENV)
                if not baseline and arch == "x86_64" and flavor == "normal" else None)
    if override:
        return Path(override)
    cmd = [str(VM_DIR / "build-kernel"), "--print-path"] + (["--baseline"] if baseline else [])
    cmd += ["--flavor", flavor]
    if arch != "x86_64":
        cmd += ["--arch", arch]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise VmError(proc.stderr.strip() or "vm/build-kernel --print-path failed")
    return Path(proc.stdout.strip())


def vng_path() -> str:
    for cand in (REPO / ".venv" / "bin" / "vng", Path(sys.prefix) / "bin" / "vng"):
        if cand.exists():
            return str(cand)
    found = shutil.which("vng")
    if not found:
        raise VmError("vng (virtme-ng) not found: run make deps (vm/install-deps)")
    return found


def _vng_env() -> dict[str, str]:
    """vng runs virtme-run through PATH: put the venv's bin first."""
    env = dict(os.environ)
    bindir = str(Path(vng_path()).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    return env


# ---------------------------------------------------------------- KVM probe


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def kvm_usable(bzimage: Path, verbose: bool = False) -> bool:
    """Whether a KVM guest boots here.  Cached per host boot.

    /dev/kvm may exist while a KVM guest hangs in early boot, so the probe
    boots the kernel with no root file system under KVM with a timeout: a
    usable KVM reaches the "no working init" panic in about a second, and
    panic=-1 with -no-reboot ends QEMU.  EBPFSECCOMP_KVM=0/1 overrides.
    """
    forced = os.environ.get("EBPFSECCOMP_KVM")
    if forced in ("0", "1"):
        return forced == "1"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    stamp = cache_dir() / f"kvm-{_boot_id()}"
    if stamp.exists():
        return stamp.read_text().strip() == "usable"
    log(f"probing KVM (timeout {KVM_PROBE_TIMEOUT:.0f}s; the answer is cached in {stamp})")
    cmd = [
        "qemu-system-x86_64",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
        "-kernel",
        str(bzimage),
        "-append",
        "console=ttyS0 panic=-1 loglevel=4",
    ]
    usable = False
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=KVM_PROBE_TIMEOUT)
        text = out.decode(errors="replace")
        usable = "Kernel panic" in text or "Run /init" in text or "VFS:" in text
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
    for old in cache_dir().glob("kvm-*"):
        old.unlink(missing_ok=True)
    stamp.write_text("usable\n" if usable else "unusable\n")
    log(f"KVM is {'usable' if usable else 'unusable here: using TCG (slower)'}")
    return usable


class Terminated(Exception):
    """SIGTERM/SIGHUP while a guest runs (QEMU is stopped first)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


def _trap_termination() -> dict[int, Any]:
    """SIGTERM/SIGHUP -> Terminated, so that QEMU (its own session) is killed too."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


# ------------------------------------------------------------ running a VM


@dataclasses.dataclass
class RunResult:
    status: int  # the command's exit status; GUEST_DIED/TIMED_OUT if none
    timed_out: bool
    guest_died: bool
    console_log: Path
    seconds: float
    boot_seconds: float | None  # from QEMU start to the command's start


GUEST_DIED = 125
TIMED_OUT = 124

# Runs inside the guest (as root), before the command: makes the tree (and
# the other shared paths) reachable by unprivileged users even when an
# ancestor directory is not traversable (e.g. /root, mode 0700), records
# timing and the exit status.
_GUEST_WRAPPER = r"""#!/bin/bash
set -u
rundir=__RUNDIR__
date +%s.%N >"$rundir/started"
keep=(__KEEP__)
# First non-traversable ancestor of each kept path: hide it behind a tmpfs
# and bind the kept paths back at their own place.
declare -A hide=()
for p in "${keep[@]}"; do
    d=/
    IFS=/ read -ra parts <<<"${p#/}"
    for c in "${parts[@]}"; do
        d=${d%/}/$c
        [[ $d == "$p" ]] && break
        if [[ $(( 0$(stat -c %a "$d") & 1 )) == 0 ]]; then hide[$d]=1; break; fi
    done
done
if [[ ${#hide[@]} -gt 0 ]]; then
    mkdir -p /run/ebpfseccomp-keep
    i=0
    for p in "${keep[@]}"; do
        mkdir -p /run/ebpfseccomp-keep/$i
        mount --bind "$p" /run/ebpfseccomp-keep/$i
        i=$((i + 1))
    done
    for d in "${!hide[@]}"; do
        mount -t tmpfs -o mode=0755 ebpfseccomp-hide "$d"
    done
    i=0
    for p in "${keep[@]}"; do
        mkdir -p "$p"
        mount --bind /run/ebpfseccomp-keep/$i "$p"
        i=$((i + 1))
    done
fi
chmod 0777 "$rundir" 2>/dev/null || true
export __ENV__
cd __CWD__ || exit 125
__RUNAS__ "$@"
status=$?
echo "$status" >"$rundir/status"
sync
# The trimmed kernel has no ACPI, so virtme-ng-init's poweroff would only
# halt the CPU and QEMU would stay.  A restart ends QEMU (-no-reboot); give
# QEMU a moment to drain the output ports first.
sleep 0.3
if [[ -x /bin/busybox ]]; then
    /bin/busybox reboot -f
else
    /usr/bin/python3 -c 'import ctypes; ctypes.CDLL(None).reboot(0x01234567)'
fi
exit "$status"
"""


def _runas_prefix(user: str | None) -> str:
    if not user:
        return ""
    # setpriv: exact uid/gid, no supplementary groups, no capabilities.
    q = shlex.quote(user)
    return (
        f'setpriv --reuid={q} --regid="$(id -g {q})" --init-groups '
        "--inh-caps=-all --bounding-set=-all --"
    )


def run_in_vm(
    cmd: Sequence[str],
    *,
    kdir: Path,
    user: str | None = None,
    timeout: float = 600.0,
    env: dict[str, str] | None = None,
    share: Sequence[Path] = (),
    cwd: Path = REPO,
    memory: str = DEFAULT_MEMORY,
    cpus: int = DEFAULT_CPUS,
    stdout: Sink = None,
    stderr: Sink = None,
    rundir: Path | None = None,
    console_tail: int = 60,
) -> RunResult:
    """Boot kdir/bzImage, run cmd in the guest, return its status.

    The host root is the guest root (read-only); `share` paths are made
    writable.  The guest command sees EBPFSECCOMP_IN_VM=1 and
    EBPFSECCOMP_KERNEL_DIR.  A panic or a hang ends in a non-zero status with
    the console log's tail on stderr, never in waiting forever.
    """
    if (kdir / "Image").exists():  # an arm64 build: QEMU directly (vm/arm64.py)
        import arm64

        return arm64.run_command(
            cmd, kdir=kdir, rundir=rundir, user=user, cwd=cwd, timeout=timeout,
            follow=(stdout, stderr), env=env, share=share, memory=memory, cpus=cpus,
            console_tail=console_tail,
        )  # fmt: skip
    bzimage = kdir / "bzImage"
    if not bzimage.exists():
        raise VmError(f"{bzimage} not found: run make kernel")
    if rundir is None:
        runs = cache_dir() / "runs"
        runs.mkdir(exist_ok=True)
        rundir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    rundir.mkdir(parents=True, exist_ok=True)
    for stale in ("status", "started"):
        (rundir / stale).unlink(missing_ok=True)
    console = rundir / "console.log"
    genv = {IN_VM_ENV: "1", KERNEL_DIR_ENV: str(kdir), "PYTHONDONTWRITEBYTECODE": "1"}
    genv.update(env or {})
    keep = [REPO, rundir, kdir, *share]
    wrapper = (
        _GUEST_WRAPPER.replace("__RUNDIR__", shlex.quote(str(rundir)))
        .replace("__KEEP__", " ".join(shlex.quote(str(p)) for p in keep))
        .replace("__ENV__", " ".join(f"{k}={shlex.quote(v)}" for k, v in genv.items()))
        .replace("__CWD__", shlex.quote(str(cwd)))
        .replace("__RUNAS__", _runas_prefix(user))
    )
    script = rundir / "guest.sh"
    script.write_text(wrapper)
    script.chmod(0o755)

    use_kvm = kvm_usable(bzimage)
    vng = [
        vng_path(),
        "--run",
        str(bzimage),
        "--force-9p",
        "--disable-microvm",
        "--disable-monitor",
        "--memory",
        memory,
        "--cpus",
        str(cpus),
        f"--rwdir={rundir}",
            # The kernel console, for panics: a virtio console (hvc0) into a file.
        # (vng's console=ttyS0 goes to /dev/null, and the 8250 driver serves
        # one console port only.)
        f"--qemu-opts=-chardev file,id=ebpfseccomp_klog,path={console} "
        "-device virtio-serial-pci,id=ebpfseccomp_klogbus "
        "-device virtconsole,chardev=ebpfseccomp_klog,bus=ebpfseccomp_klogbus.0",
        "--append",
        "root=/dev/root console=hvc0 loglevel=7 panic=-1 oops=panic",
    ]
    for p in share:
        vng.append(f"--rwdir={p}")
    if not use_kvm:
        vng.append("--disable-kvm")
    vng += ["--exec", " ".join(shlex.quote(a) for a in [str(script), *cmd])]

    t0 = time.monotonic()
    started_wall = time.time()
    # Pipes, relayed: QEMU opens /proc/self/fd/1 and /2 itself, and when those
    # are regular files its writes would land at offset 0 over ours.
    proc = subprocess.Popen(
        vng,
        env=_vng_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(cwd),
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    relays = [
        threading.Thread(target=_relay, args=(proc.stdout, _sink(stdout, sys.stdout)), daemon=True),
        threading.Thread(target=_relay, args=(proc.stderr, _sink(stderr, sys.stderr)), daemon=True),
    ]
    for t in relays:
        t.start()
    timed_out = False
    handlers = _trap_termination()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        rc = TIMED_OUT
    except (KeyboardInterrupt, Terminated):
        log("interrupted: stopping QEMU")
        _kill_group(proc)
        raise
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
    for t in relays:
        t.join(timeout=10)
    seconds = time.monotonic() - t0
    status_file = rundir / "status"
    boot_seconds = None
    try:
        boot_seconds = float((rundir / "started").read_text()) - started_wall
    except (OSError, ValueError):
        pass
    guest_died = False
    if timed_out:
        status = TIMED_OUT
        log(f"error: the guest did not finish within {timeout:.0f}s: QEMU killed")
    elif status_file.exists():
        status = int(status_file.read_text().strip() or GUEST_DIED)
    else:
        guest_died = True
        status = GUEST_DIED
        log(
            f"error: the guest ended without the command finishing (vng exit {rc}): "
            "panic, crash or boot failure"
        )
    if timed_out or guest_died:
        _print_console_tail(console, console_tail)
    return RunResult(status, timed_out, guest_died, console, seconds, boot_seconds)


def interactive(kdir: Path, memory: str = DEFAULT_MEMORY, cpus: int = DEFAULT_CPUS) -> int:
    """An interactive shell in the guest (no time limit; exit the shell to stop)."""
    bzimage = kdir / "bzImage"
    cmd = [
        vng_path(),
        "--run",
        str(bzimage),
        "--force-9p",
        "--disable-microvm",
        "--memory",
        memory,
        "--cpus",
        str(cpus),
    ]
    if not kvm_usable(bzimage):
        cmd.append("--disable-kvm")
    env = dict(_vng_env(), **{IN_VM_ENV: "1", KERNEL_DIR_ENV: str(kdir)})
    return subprocess.call(cmd, cwd=str(REPO), env=env)


def _sink(target: Sink, default: IO[str]) -> int:
    """A file descriptor to copy a stream to."""
    if target is None:
        default.flush()
        return default.fileno()
    if isinstance(target, int):
        return target
    target.flush()
    return target.fileno()


def _relay(src: IO[bytes], fd: int) -> None:
    while True:
        chunk = src.read1(65536) if hasattr(src, "read1") else src.read(65536)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            view = view[n:]


def _print_console_tail(console: Path, lines: int) -> None:
    try:
        text = console.read_text(errors="replace").splitlines()
    except OSError:
        log(f"(no console log at {console})")
        return
    log(f"last {lines} lines of the guest console ({console}):")
    for line in text[-lines:]:
        print(f"  | {line}", file=sys.stderr)
    sys.stderr.flush()


# -------------------------------------------------------- selftests (TAP)


@dataclasses.dataclass
class SelftestResult:
    binary: str
    name: str  # kselftest_harness "FIXTURE.VARIANT.test" name
    status: str  # "pass", "fail", "skip"
    reason: str  # skip reason / failure summary
    detail: str  # the output lines of the test


_TAP_LINE = re.compile(r"^(not ok|ok) \d+ (.*?)(?:\s+#\s*(SKIP|XFAIL|TODO)\b\s*(.*))?$")


def parse_tap(binary: str, text: str) -> list[SelftestResult]:
    """Results of a kselftest_harness binary's TAP output."""
    results: list[SelftestResult] = []
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        m = _TAP_LINE.match(line)
        if not m:
            if line.startswith("#  RUN"):
                pending = []
            pending.append(line)
            continue
        verdict, name, directive, why = m.groups()
        name = name.strip()
        detail = "\n".join(pending)
        pending = []
        if directive in ("SKIP", "XFAIL"):
            status = "skip"
            reason = (why or "").strip() or _skip_reason(detail)
        elif verdict == "ok":
            status, reason = "pass", ""
        else:
            status, reason = "fail", _fail_reason(detail)
        results.append(SelftestResult(binary, name, status, reason, detail))
    return results


def _skip_reason(detail: str) -> str:
    for line in detail.splitlines():
        if "SKIP" in line:
            return line.lstrip("# ").strip()
    return "skipped"


def _fail_reason(detail: str) -> str:
    for line in detail.splitlines():
        s = line.lstrip("# ").strip()
        if re.search(r"Expected|FAIL|error|timeout|Timed out|signal", s, re.I):
            return s
    return "failed (see the TAP output)"


def load_baseline(path: Path = BASELINE_LIST) -> dict[str, tuple[str, str]]:
    """{binary:test -> (status, reason)} for tests that did not pass on baseline.

    Line format: `fail seccomp_bpf:global.user_notification_x  reason...`
    (status, then binary:name, then the reason).  Tests not listed passed.
    """
    out: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0] in ("fail", "skip"):
            out[parts[1]] = (parts[0], parts[2].strip() if len(parts) > 2 else "")
    return out


def baseline_binaries(path: Path = BASELINE_LIST) -> set[str]:
    """Binaries the baseline list covers (from its `# binaries:` header)."""
    if not path.exists():
        return set()
    for line in path.read_text().splitlines():
        if line.startswith("# binaries:"):
            return set(line.split(":", 1)[1].split())
    return set()


def compare_to_baseline(
    result: SelftestResult, baseline: dict[str, tuple[str, str]], covered: set[str]
) -> tuple[str, str]:
    """("ok" | "regression" | "known" | "new-fail" | "skip", message)."""
    key = f"{result.binary}:{result.name}"
    if result.status == "pass":
        return "ok", ""
    if result.binary in covered:
        if key in baseline:
            bstatus, why = baseline[key]
            return "known", f"{result.status} ({bstatus}s on the unpatched kernel too: {why})"
        return "regression", (f"{result.status}: {result.reason} (passes on the unpatched kernel)")
    if result.status == "skip":
        return "skip", result.reason
    return "new-fail", result.reason


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


#: Console lines that mean the kernel found a bug in itself: sanitizers,
#: lockdep, BUG/WARN/oops, kmemleak.  A run that prints one fails.
KERNEL_FINDING = re.compile(
    r"(BUG: |WARNING: |KASAN: |UBSAN: |kernel BUG at |Oops|general protection fault|"
    r"possible circular locking|possible recursive locking|inconsistent lock state|"
    r"suspicious RCU usage|unreferenced object 0x|Kernel panic)"
)


USER_TRAP = re.compile(r"traps: \S+\[\d+\] ")


def kernel_findings(console_log: Path, context: int = 12) -> list[str]:
    """The console's report blocks (a matching line and the lines after it)."""
    try:
        text = Path(console_log).read_text(errors="replace").splitlines()
    except OSError:
        return []
    out: list[str] = []
    i = 0
    while i < len(text):
        # "traps: prog[pid] general protection fault ip:..." is a user-space
        # fault the kernel reports (tests make programs crash on purpose)
        if KERNEL_FINDING.search(text[i]) and not USER_TRAP.search(text[i]):
            out += text[i : i + context]
            i += context
        else:
            i += 1
    return out


#: Finding kinds, for the summary: the first pattern a report line matches.
_FINDING_KINDS = (
    ("KASAN", re.compile(r"KASAN: ")),
    ("UBSAN", re.compile(r"UBSAN: ")),
    ("lockdep", re.compile(r"locking dependency|recursive locking|inconsistent lock state|"
                           r"suspicious RCU usage|lock held|bad unlock balance")),
    ("atomic-sleep", re.compile(r"sleeping function called from invalid context|"
                                r"scheduling while atomic")),
    ("kmemleak", re.compile(r"unreferenced object 0x")),
    ("WARN", re.compile(r"WARNING: ")),
    ("BUG/oops/panic", KERNEL_FINDING),
)


def finding_kinds(findings: Sequence[str]) -> dict[str, int]:
    """Report lines of kernel_findings() counted by kind (KASAN, UBSAN, ...)."""
    counts: dict[str, int] = {}
    for line in findings:
        if not KERNEL_FINDING.search(line) or USER_TRAP.search(line):
            continue
        kind = next(k for k, rx in _FINDING_KINDS if rx.search(line))
        counts[kind] = counts.get(kind, 0) + 1
    return counts


# ---------------------------------------------------- the debug flavour

#: The guest tests the debug flavour runs (with the selftests), as files or
#: test functions (every parameter).  Under TCG the debug kernel runs a test
#: that starts Python processes about 14 times slower than the normal one
#: (test_run_execs_under_every_example[allow_all]: 77.6 s against 5.4 s), so
#: the whole loader/daemon set (about 190 s normal) would take some 45
#: minutes.  Chosen instead, docs/vm.md: the SMP tests (TSYNC across CPUs,
#: maps updated from both CPUs, attach racing fork, release while another CPU
#: runs the filter) and the loader/daemon tests that load, attach, share and
#: release programs and maps in one process (each under 2.5 s normal), plus
#: one daemon round trip (program fds passed to a client that attaches).
DEBUG_TESTS = (
    "tests/vm/test_smp_net.py",
    "tests/vm/test_loader.py::test_every_example_loads_and_attaches",
    "tests/vm/test_loader.py::test_pinned_maps",
    "tests/vm/test_loader.py::test_root_loaded_fd_attached_by_nobody",
    "tests/vm/test_loader.py::test_attach_without_no_new_privs_is_eacces",
    "tests/vm/test_loader.py::test_attach_wrong_fds",
    "tests/vm/test_loader.py::test_user_namespace_rule",
    "tests/vm/test_loader.py::test_no_fd_leaks_over_many_loads",
    "tests/vm/test_loader.py::test_tsync_and_new_listener_flags",
    "tests/vm/test_loader.py::test_python_api_map_update_applies_to_next_child",
    "tests/vm/test_loader.py::test_read_only_maps_are_frozen_after_their_contents",
    "tests/vm/test_daemon.py::test_get_attach_and_filter",
)


def in_flavor_subset(nodeid: str, flavor: str) -> bool:
    """Whether a VM-marked test (by node id) runs on this flavour's kernel."""
    if flavor == "normal":
        return True
    return any(nodeid == t or nodeid.startswith((t + "::", t + "[")) for t in DEBUG_TESTS)


_KMEMLEAK_NAMES = re.compile(r"seccomp|bpf", re.I)


def kmemleak_reports(text: str) -> list[str]:
    """The blocks of a /sys/kernel/debug/kmemleak read, one per suspected leak."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("unreferenced object 0x"):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    return ["\n".join(b) for b in blocks]


def kmemleak_names_seccomp_or_bpf(report: str) -> bool:
    """Whether a leak's allocation backtrace names a seccomp or BPF function.

    Only the backtrace counts: the comm line names the task that allocated
    (the selftest binary is called seccomp_bpf) and the hex dump's text
    column is the object's contents.
    """
    _, sep, trace = report.partition("backtrace")
    return bool(sep) and bool(_KMEMLEAK_NAMES.search(trace))
