"""`ebpfseccomp record` on the patched kernel (in the VM, as root).

The eBPF backend (a filter logging to a ring buffer) records real programs,
whose profiles then run them again under both the eBPF filter and
libseccomp's classic filter; auto picks it for root and falls back to user
notification for an unprivileged user; a ring buffer too small for the
program makes record refuse to write a profile.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import record_programs as rp

pytestmark = pytest.mark.vm


@pytest.fixture(autouse=True)
def _patched(kernel_has_extended: bool) -> None:
    if not kernel_has_extended:
        pytest.skip("the kernel lacks SECCOMP_FILTER_FLAG_EXTENDED (not the patched kernel)")


def _record_and_replay(cmd: list[str], tmp_path: Path, *extra: str) -> dict:
    profile = tmp_path / "profile.json"
    rec = rp.record(cmd, profile, *extra)
    assert rec.returncode == 0, rec.stderr
    info = rp.summary(rec)
    assert info["backend"] == "ebpf-seccomp", info["notes"]
    assert info["lost"] == 0
    for backend in ("ebpf", "classic"):
        again = rp.replay(cmd, profile, backend)
        assert again.returncode == 0, f"{backend}: {again.stderr}"
        assert again.stdout.strip() == rp.program_output(rec), f"{backend}: {again.stderr}"
        assert f"attached the {'eBPF' if backend == 'ebpf' else 'classic'} filter" \
            in again.stderr
    return info


def test_auto_records_a_pipeline_with_the_ebpf_filter(tmp_path: Path) -> None:
    info = _record_and_replay(rp.PIPELINE, tmp_path)
    assert "execve" in info["syscalls"]["x86_64"]
    assert info["tasks"] >= 3


def test_python_with_threads_and_a_child(tmp_path: Path) -> None:
    info = _record_and_replay([rp.TARGET_PY, "-c", rp.PYTHON_WORK], tmp_path, "--with-args")
    assert "mmap" in info["arg_values"]["x86_64"]


def test_tcp_server_and_client_with_argument_rules(tmp_path: Path) -> None:
    info = _record_and_replay([rp.TARGET_PY, "-c", rp.TCP_PAIR], tmp_path, "--with-args")
    assert any(v["args"]["0:family"] == hex(2)
               for v in info["arg_values"]["x86_64"]["socket"])
    for backend in ("ebpf", "classic"):
        other = rp.replay([rp.TARGET_PY, "-c", rp.UNIX_SOCKET], tmp_path / "profile.json", backend)
        assert other.stdout.strip() == f"unix socket: {errno.ENOSYS}", other.stderr


def test_compat_calls_are_recorded_under_i386(tmp_path: Path) -> None:
    proc = rp.record([rp.TARGET_PY, "-c", rp.INT80_GETPID], tmp_path / "a.json")
    assert proc.returncode == 0, proc.stderr
    assert "same pid: True" in proc.stdout
    assert rp.summary(proc)["syscalls"]["i386"] == {"getpid": 1}
    prog = rp.elf32_getpid_exit(tmp_path / "prog32", status=5)
    proc = rp.record(["sh", "-c", f"{prog}; echo status $?"], tmp_path / "b.json")
    assert "status 5" in proc.stdout, proc.stderr
    info = rp.summary(proc)
    assert {"getpid", "exit"} <= set(info["syscalls"]["i386"])
    assert json.loads((tmp_path / "b.json").read_text())["architectures"] == [
        "SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]


def test_the_notify_backend_in_the_vm(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    rec = rp.record(rp.PIPELINE, profile, "--backend", "notify")
    assert rec.returncode == 0, rec.stderr
    assert rp.summary(rec)["backend"] == "user-notification"
    again = rp.replay(rp.PIPELINE, profile, "ebpf")
    assert again.returncode == 0 and again.stdout.strip() == rp.program_output(rec), again.stderr


def test_a_full_ring_buffer_means_no_profile(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    proc = rp.record([rp.TARGET_PY, "-c", rp.PYTHON_WORK], profile, "--backend", "ebpf",
                  "--ring-size", str(os.sysconf("SC_PAGE_SIZE")))
    assert proc.returncode == 1
    assert "did not fit in the ring buffer" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not profile.exists()


def test_unprivileged_auto_falls_back_to_notify(unprivileged) -> None:
    with tempfile.TemporaryDirectory(prefix="record-") as tmp:  # pytest's tmp_path is 0700
        os.chmod(tmp, 0o777)
        _unprivileged_auto(Path(tmp), unprivileged)


def _unprivileged_auto(tmp_path: Path, unprivileged) -> None:
    profile = tmp_path / "p.json"
    base = [rp.PY, "-m", "ebpfseccomp", "record", "--json", "-o", str(profile)]
    proc = unprivileged.run([*base, "--", *rp.PIPELINE], cwd=str(rp.REPO))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["backend"] == "user-notification"
    assert any("ebpf:" in n and "CAP_BPF" in n for n in info["notes"]), info["notes"]
    forced = unprivileged.run([*base, "--backend", "ebpf", "--", "true"], cwd=str(rp.REPO))
    assert forced.returncode == 2
    assert "--backend ebpf:" in forced.stderr and "Traceback" not in forced.stderr


def test_help_mentions_both_backends() -> None:
    out = subprocess.run([rp.PY, "-m", "ebpfseccomp", "record", "--help"], capture_output=True,
                         text=True, cwd=rp.REPO).stdout
    assert "ebpf" in out and "notify" in out


def test_a_setuid_binary_gains_no_privilege_while_recorded(unprivileged) -> None:
    with tempfile.TemporaryDirectory(prefix="record-suid-") as tmp:
        os.chmod(tmp, 0o755)
        suid = Path(tmp) / "id"
        shutil.copy("/usr/bin/id", suid)
        os.chmod(suid, 0o4755)
        plain = unprivileged.run([str(suid), "-u"])
        if plain.stdout.strip() != "0":
            pytest.skip(f"setuid does not take effect in {tmp} ({plain.stdout.strip()!r})")
        out = Path(tempfile.mkdtemp(prefix="record-out-"))
        os.chmod(out, 0o777)
        proc = unprivileged.run([rp.PY, "-m", "ebpfseccomp", "record", "--json", "-o",
                                 str(out / "p.json"), "--", str(suid), "-u"], cwd=str(rp.REPO))
        shutil.rmtree(out)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == "65534"  # no_new_privs: the bit is ignored
