"""The arm64 guest: QEMU's `virt` machine under TCG, driven directly.

virtme-ng shares the host's root file system with the guest and runs the
host's binaries there, which an aarch64 guest cannot do (the host is
x86_64).  So the arm64 guest boots its own userland instead: an initramfs
holding one static program, vm/arm64/init.c, which mounts 9p shares at their
host paths (the run directory, the kernel's output directory, the project
tree, the aarch64 userland, and --share directories) and runs the jobs that
guest.conf lists: static aarch64 binaries only (the kernel's seccomp
selftests, vm/arm64/enforce.c).  See docs/vm.md, "arm64".

Standard library only, like vmlib (which calls run_in_vm here for a kernel
directory that holds an arm64 `Image`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import vmlib

SOURCES = ("init.c", "enforce.c")
SRC_DIR = vmlib.VM_DIR / "arm64"
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-system-aarch64"
#: the example the enforcement test builds with `ebpfseccomp build --arch aarch64`
ENFORCE_EXAMPLE = vmlib.REPO / "bpf" / "examples" / "allowlist_switch.c"
#: the selftests the arm64 suite runs (seccomp_benchmark measures, it does not test)
SELFTESTS = ("seccomp_bpf", "seccomp_ebpf")
SELFTEST_TIMEOUT = 1500


def baseline_list() -> Path:
    """The unpatched kernel's seccomp_bpf results on arm64 (vm/baselines/)."""
    return vmlib.baseline_list("normal", "arm64")


@dataclasses.dataclass
class Job:
    """One command init runs in the guest; output in RUNDIR/NAME.{out,err,status}."""

    name: str
    argv: list[str]
    timeout: int = 600
    uid: int = 0
    gid: int = 0
    cwd: str = "/tmp"
    merge_stderr: bool = False  # stderr into NAME.out too (a TAP stream with its diagnostics)


def _check_field(what: str, value: str) -> str:
    if "\t" in value or "\n" in value or "\0" in value:
        raise vmlib.VmError(
            f"the arm64 guest cannot take {what} {value!r}: it holds a tab, newline or NUL"
        )
    return value


def _check_path(what: str, path: Path) -> str:
    text = _check_field(what, str(path))
    if " " in text or not path.is_absolute():
        # The run directory travels on the kernel command line (no quoting).
        raise vmlib.VmError(f"the arm64 guest needs {what} as an absolute path "
                            f"without spaces: {text}")
    return text


# --------------------------------------------------------------- userland


def userland() -> Path:
    """The directory with init, init.cpio and enforce, built for aarch64 once
    per version of vm/arm64/*.c (cached under $EBPFSECCOMP_CACHE)."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (SRC_DIR / name).read_bytes())
    out = vmlib.cache_dir() / "arm64-userland" / digest.hexdigest()[:16]
    if (out / "init.cpio").exists():
        return out
    # (mkdtemp makes 0700: `--user nobody` jobs must reach enforce)
    if shutil.which(CROSS_CC) is None:
        raise vmlib.VmError(f"{CROSS_CC} not found: run make deps (vm/install-deps)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        for name in SOURCES:
            binary = tmp / Path(name).stem
            proc = subprocess.run(
                [CROSS_CC, "-static", "-O2", "-Wall", "-o", str(binary), str(SRC_DIR / name)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                raise vmlib.VmError(f"cross-compiling vm/arm64/{name} failed:\n{proc.stderr}")
        _write_cpio(tmp / "init.cpio", {"init": (tmp / "init").read_bytes()},
                    dirs=("dev", "proc", "sys", "tmp", "run"))
        try:
            tmp.rename(out)
        except OSError:  # another run built it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_cpio(path: Path, files: dict[str, bytes], dirs: Sequence[str]) -> None:
    """A newc initramfs archive: directories (0755) and executables (0755)."""
    entries: list[tuple[str, int, bytes]] = [(d, 0o040755, b"") for d in dirs]
    entries += [(name, 0o100755, data) for name, data in files.items()]
    entries.append(("TRAILER!!!", 0, b""))
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries, start=1):
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data),
                  0, 0, 0, 0, len(raw), 0]  # fmt: skip
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    path.write_bytes(bytes(out))


# ------------------------------------------------------------------- boot


def _qemu_command(
    kdir: Path, initrd: Path, rundir: Path, mounts: list[tuple[str, Path, bool]],
    memory: str, cpus: int,
) -> list[str]:
    cmd = [
        QEMU, "-M", "virt",
        # pauth-impdef: QEMU's own pointer-authentication hash instead of
        # the architected QARMA, several times cheaper under TCG.
        "-cpu", "max,pauth-impdef=on",
        "-accel", "tcg", "-smp", str(cpus), "-m", memory,
        "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
        "-serial", f"file:{rundir / 'console.log'}",
        "-kernel", str(kdir / "Image"), "-initrd", str(initrd),
        "-device", "virtio-rng-device",
        "-append",
        "console=ttyAMA0 earlycon=pl011,0x9000000 loglevel=7 panic=-1 oops=panic "
        f"rdinit=/init ebpfseccomp.rundir={rundir}",
    ]  # fmt: skip
    for i, (tag, path, writable) in enumerate([("run", rundir, True), *mounts]):
        ro = "" if writable else ",readonly=on"
        cmd += [
            "-fsdev", f"local,id=fs{i},path={path},security_model=none{ro}",
            "-device", f"virtio-9p-device,fsdev=fs{i},mount_tag={tag}",
        ]  # fmt: skip
    return cmd


def boot(
    jobs: Sequence[Job],
    *,
    kdir: Path,
    rundir: Path,
    env: dict[str, str] | None = None,
    share: Sequence[Path] = (),
    memory: str = vmlib.DEFAULT_MEMORY,
    cpus: int = vmlib.DEFAULT_CPUS,
    timeout: float = 600.0,
    follow: tuple[vmlib.Sink, vmlib.Sink] | None = None,
    console_tail: int = 60,
) -> vmlib.RunResult:
    """Boot kdir/Image with the init and run `jobs` in turn.

    status in the result: the last job's (124 if it timed out in the guest,
    125 if the guest died before writing it, 124 if the whole boot outlived
    `timeout`).  `follow` relays the first job's stdout/stderr while it runs.
    """
    if not (kdir / "Image").exists():
        raise vmlib.VmError(f"{kdir / 'Image'} not found: run make kernel KARCH=arm64")
    if shutil.which(QEMU) is None:
        raise vmlib.VmError(f"{QEMU} not found: run make deps (vm/install-deps)")
    user_dir = userland()
    rundir.mkdir(parents=True, exist_ok=True)
    for stale in rundir.iterdir():
        if stale.is_file():
            stale.unlink()
    mounts: list[tuple[str, Path, bool]] = [("kernel", kdir, False), ("repo", vmlib.REPO, False),
                                            ("userland", user_dir, False)]
    mounts += [(f"share{i}", p, True) for i, p in enumerate(share)]
    genv = {vmlib.IN_VM_ENV: "1", vmlib.KERNEL_DIR_ENV: str(kdir), "HOME": "/tmp",
            "PATH": f"{user_dir}:{kdir / 'selftests'}", **(env or {})}
    lines = [f"mount\t{tag}\t{_check_path('a shared directory', p)}\t{'rw' if rw else 'ro'}"
             for tag, p, rw in mounts]
    lines += [f"env\t{_check_field('an environment entry', f'{k}={v}')}" for k, v in genv.items()]
    for job in jobs:
        lines.append(f"job\t{job.name}\t{int(job.timeout)}\t{job.uid}\t{job.gid}\t"
                     f"{_check_field('a directory', job.cwd)}\t"
                     f"{'merged' if job.merge_stderr else 'split'}")
        lines += [f"arg\t{_check_field('an argument', a)}" for a in job.argv]
    (rundir / "guest.conf").write_text("\n".join(lines) + "\n")
    cmd = _qemu_command(kdir, user_dir / "init.cpio", Path(_check_path("the run directory",
                        rundir)), mounts, memory, cpus)  # fmt: skip
    (rundir / "qemu.cmd").write_text(" ".join(cmd) + "\n")

    t0 = time.monotonic()
    started_wall = time.time()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    qemu_out: list[bytes] = []
    reader = threading.Thread(target=lambda: qemu_out.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    stop = threading.Event()
    followers: list[threading.Thread] = []
    if follow is not None and jobs:
        for suffix, sink, default in ((".out", follow[0], sys.stdout),
                                      (".err", follow[1], sys.stderr)):
            t = threading.Thread(
                target=_follow, args=(rundir / f"{jobs[0].name}{suffix}",
                                      vmlib._sink(sink, default), stop), daemon=True)  # fmt: skip
            t.start()
            followers.append(t)
    timed_out = False
    handlers = vmlib._trap_termination()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        vmlib._kill_group(proc)
    except (KeyboardInterrupt, vmlib.Terminated):
        vmlib.log("interrupted: stopping QEMU")
        vmlib._kill_group(proc)
        raise
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
        stop.set()
        for t in followers:
            t.join(timeout=10)
    reader.join(timeout=10)
    seconds = time.monotonic() - t0
    boot_seconds = None
    if jobs and (rundir / f"{jobs[0].name}.started").exists():
        boot_seconds = (rundir / f"{jobs[0].name}.started").stat().st_mtime - started_wall
    status_text = ""
    if jobs:
        try:
            status_text = (rundir / f"{jobs[-1].name}.status").read_text().strip()
        except OSError:
            status_text = ""
    guest_died = False
    if timed_out:
        status = vmlib.TIMED_OUT
        vmlib.log(f"the arm64 guest outlived --timeout {timeout:.0f}s: killed")
    elif status_text == "timeout":
        status = vmlib.TIMED_OUT
        vmlib.log(f"{jobs[-1].name} outlived its timeout in the guest: killed")
    elif status_text.isdigit():
        status = int(status_text)
    elif not jobs and (rundir / "done").exists():
        status = 0
    else:
        guest_died = True
        status = vmlib.GUEST_DIED
        text = b"".join(qemu_out).decode(errors="replace").strip()
        vmlib.log("the arm64 guest ended without an exit status (panic, or init failed)"
                  + (f"; QEMU said: {text}" if text else ""))
    console = rundir / "console.log"
    if status in (vmlib.TIMED_OUT, vmlib.GUEST_DIED) and console_tail:
        vmlib._print_console_tail(console, console_tail)
    return vmlib.RunResult(status=status, timed_out=timed_out or status_text == "timeout",
                           guest_died=guest_died, console_log=console, seconds=seconds,
                           boot_seconds=boot_seconds)  # fmt: skip


def _follow(path: Path, fd: int, stop: threading.Event) -> None:
    """Copy what the guest appends to `path` to `sink` until `stop`, then the rest."""
    pos = 0
    while True:
        done = stop.is_set()
        try:
            with path.open("rb") as f:
                f.seek(pos)
                chunk = f.read()
        except OSError:
            chunk = b""
        if chunk:
            pos += len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        if done:
            return
        stop.wait(0.2)


def _resolve(cmd: Sequence[str], kdir: Path) -> list[str]:
    """CMD's program: a path, or a name in the aarch64 userland or kdir/selftests."""
    prog = cmd[0]
    if "/" in prog:
        return [str(Path(prog).resolve()), *cmd[1:]]
    for d in (userland(), kdir / "selftests"):
        if (d / prog).is_file():
            return [str(d / prog), *cmd[1:]]
    raise vmlib.VmError(
        f"{prog}: not a static aarch64 program of the arm64 guest (the guest runs only "
        f"those: the selftests in {kdir / 'selftests'}, 'enforce', or a path to your own "
        "static aarch64 binary under a shared directory)"
    )


def run_command(
    cmd: Sequence[str],
    *,
    kdir: Path,
    rundir: Path | None,
    user: str | None,
    cwd: Path,
    timeout: float,
    follow: tuple[vmlib.Sink, vmlib.Sink],
    **boot_options: Any,
) -> vmlib.RunResult:
    """vmlib.run_in_vm for an arm64 kernel: one job, its output relayed live
    (`follow`: stdout and stderr sinks); boot_options go to boot()."""
    uid = gid = 0
    if user:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise vmlib.VmError(f"no user {user!r} on the host (the arm64 guest has no "
                                "user database: names are resolved on the host)") from None
        uid, gid = pw.pw_uid, pw.pw_gid
    if rundir is None:
        runs = vmlib.cache_dir() / "runs"
        runs.mkdir(exist_ok=True)
        rundir = Path(tempfile.mkdtemp(prefix="run-arm64-", dir=runs))
    jobs = []
    if cmd:
        jobs.append(Job("cmd", _resolve(cmd, kdir), timeout=int(timeout), uid=uid, gid=gid,
                        cwd=str(cwd)))  # fmt: skip
    res = boot(jobs, kdir=kdir, rundir=rundir, timeout=timeout + 120, follow=follow,
               **boot_options)  # fmt: skip
    if not cmd and (rundir / "guest.txt").exists():  # no command: what booted
        os.write(vmlib._sink(follow[0], sys.stdout), (rundir / "guest.txt").read_bytes())
    return res


# ------------------------------------------------------------ test suite


def run_suite(
    results: Path, *, kdir: Path, selftests: Sequence[str] = SELFTESTS, enforce: bool = True,
    timeout: float = 3000.0,
) -> vmlib.RunResult:
    """One boot: the selftests (RESULTS/NAME.tap, .status) and the enforcement
    check (RESULTS/enforce.jsonl, .status, and the object it loaded)."""
    jobs: list[Job] = []
    for name in selftests:
        if (kdir / "selftests" / name).is_file():
            jobs.append(Job(name, [str(kdir / "selftests" / name)], timeout=SELFTEST_TIMEOUT,
                            merge_stderr=True))  # fmt: skip
        else:
            vmlib.log(f"no selftest {name} in {kdir / 'selftests'}: not run")
    if enforce:
        obj = results / f"{ENFORCE_EXAMPLE.stem}.o"
        build_enforce_object(obj)
        jobs.append(Job("enforce", [str(userland() / "enforce"), str(obj)], timeout=300))
    rundir = results / "run"
    vmlib.log(f"booting {kdir}/Image (arm64, TCG): {', '.join(j.name for j in jobs)}")
    res = boot(jobs, kdir=kdir, rundir=rundir, share=[results], timeout=timeout)
    for job in jobs:
        out = rundir / f"{job.name}.out"
        target = results / (f"{job.name}.jsonl" if job.name == "enforce" else f"{job.name}.tap")
        if out.exists():
            shutil.copyfile(out, target)
        if (rundir / f"{job.name}.err").exists():
            shutil.copyfile(rundir / f"{job.name}.err", results / f"{job.name}.err")
        status = rundir / f"{job.name}.status"
        if status.exists():
            text = status.read_text().strip()
            (results / f"{job.name}.status").write_text(
                f"{vmlib.TIMED_OUT if text == 'timeout' else text}\n")
    if (rundir / "guest.txt").exists():
        shutil.copyfile(rundir / "guest.txt", results / "guest.txt")
    if all((rundir / f"{job.name}.status").exists() for job in jobs):
        # Every job ran: their own failures are judged from their output.
        res = dataclasses.replace(res, status=0, timed_out=False)
    return res


def build_enforce_object(obj: Path) -> None:
    """`ebpfseccomp build --arch aarch64` of the enforcement example, on the host."""
    cli = vmlib.REPO / ".venv" / "bin" / "ebpfseccomp"
    if not cli.exists():
        raise vmlib.VmError(f"{cli} not found: run make deps (vm/install-deps)")
    proc = subprocess.run(
        [str(cli), "build", str(ENFORCE_EXAMPLE), "--arch", "aarch64", "-o", str(obj)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise vmlib.VmError(f"ebpfseccomp build --arch aarch64 {ENFORCE_EXAMPLE} failed:\n"
                            f"{proc.stderr.strip()}")


def read_enforce(path: Path) -> list[dict[str, object]]:
    """The JSON lines vm/arm64/enforce.c printed."""
    out: list[dict[str, object]] = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def enabled() -> bool:
    """Whether the arm64 phase of `pytest --vm` runs ($EBPFSECCOMP_ARM64=0 turns it off)."""
    return os.environ.get("EBPFSECCOMP_ARM64", "1") != "0"


#: What vm/arm64/enforce.c's checks must observe under allowlist_switch built
#: for aarch64: "pid"/"ppid" (the call returned the child's / parent's pid),
#: "fd" (a file descriptor), or the errno of a -1 return: EPERM (1) is the
#: filter's ERRNO(EPERM); EFAULT (14) means the filter allowed the call and
#: the kernel's implementation refused the NULL pointer.
EXPECTED_CHECKS: dict[str, str | int] = {
    "getpid": "pid",
    "getppid": "ppid",
    "openat": "fd",
    "uname_null": 14,
    "mkdirat": 1,
    "socket": 1,
    "getpgid": 1,
    "nr39": 1,  # x86_64's getpid, aarch64's umount2: not allowed
    "nr172": "pid",  # aarch64's getpid (x86_64's iopl)
}


def judge_enforcement(records: Sequence[dict[str, object]]) -> dict[str, tuple[bool, str]]:
    """{step or check -> (as expected, what was seen)} for enforce.jsonl."""
    steps = {str(r["step"]): r for r in records if "step" in r}
    checks = {str(r["check"]): r for r in records if "check" in r}
    child = steps.get("child", {})
    out: dict[str, tuple[bool, str]] = {}
    load = steps.get("load")
    out["load"] = (
        load is not None and _int(load.get("fd")) >= 0 and _int(load.get("jited_len")) > 0,
        f"load: {load} (jited_len > 0: the arm64 JIT compiled it)",
    )
    attach = steps.get("attach")
    out["attach"] = (attach is not None and attach.get("ret") == 0, f"attach as nobody: {attach}")
    out["child"] = (
        child.get("status") == 0 and child.get("signal") == 0, f"the filtered child: {child}"
    )
    for name, want in EXPECTED_CHECKS.items():
        rec = checks.get(name)
        if rec is None:
            out[name] = (False, f"{name}: no result (the guest's enforce output ends early)")
            continue
        ret, err = _int(rec.get("ret")), _int(rec.get("errno"))
        if want == "pid":
            ok = ret == _int(child.get("pid"), -2)
        elif want == "ppid":
            ok = ret == _int(child.get("ppid"), -2)
        elif want == "fd":
            ok = ret >= 0
        else:
            ok = ret == -1 and err == want
        out[name] = (ok, f"{name} (nr {rec.get('nr')}): ret {ret}, errno {err}; expected {want}")
    return out


def _int(value: object, default: int = -1) -> int:
    return value if isinstance(value, int) else default
