"""submit: each kind of object a user could send x each client credential.

Regression test for issue 12, defect 1: an object with an LRU hash map was
loaded for an unprivileged client, because the daemon predicted from a
summary of the object that did not carry map types.  Here, for every cell,
three answers must agree:

- the daemon's reply to a real `submit` frame (the request handler, with
  the real checker and the real prediction; only bpf(2) is replaced by a
  memfd, since the host kernel cannot load seccomp programs; the VM tests
  submit the same objects to the real daemon on the patched kernel),
- privilege.predict on Needs.from_program for the same program and
  credentials (kernel.unprivileged_bpf_disabled taken as 0: the daemon
  stands in for the load gate only),
- the expectation below, written out from the kernel's rules.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from submit_objects import SOURCES, build_all

from ebpfseccomp import elf, protocol
from ebpfseccomp.daemon import Audit, Backend, Options, Peer, Service
from ebpfseccomp.daemon.caps import CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE
from ebpfseccomp.privilege import Credentials, Needs, SystemPolicy, predict

#: client credentials: (uid, effective capabilities)
CLIENTS: dict[str, tuple[int, set[int]]] = {
    "nobody": (65534, set()),
    "ptrace": (1000, {CAP_SYS_PTRACE}),
    "bpf": (1000, {CAP_BPF}),
    "bpf+perfmon": (1000, {CAP_BPF, CAP_PERFMON}),
    "root": (0, {CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE}),
}
SCOPES = (1, 2, 3)


def expected(obj: str, client: str, scope: int) -> str:
    """The kernel's rules for a client loading OBJ itself (with the load gate open)."""
    caps = CLIENTS[client][1]
    hook = scope in (0, 1) or (scope == 2 and CAP_SYS_PTRACE in caps)  # Yama
    bpf = bool(caps & {CAP_BPF, CAP_SYS_ADMIN})
    perfmon = bool(caps & {CAP_PERFMON, CAP_SYS_ADMIN})
    if obj == "junk":
        return "invalid_object"
    ok = {
        "plain": True,
        "hashmap": hook,
        "arraymap": hook,
        "global": hook,
        "ktime": hook,
        "readuser": hook,
        "lru": hook and bpf,  # only CAP_BPF may create an LRU map
        "lru_percpu": hook and bpf,
        "tracing": hook and bpf and perfmon,
        "calls": bpf,
        "loop": bpf,
        "big": bpf,
    }[obj]
    return "ok" if ok else "refused"


class MemfdProgram:
    def __init__(self) -> None:
        self.fd = os.memfd_create("submitted", os.MFD_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class HostBackend(Backend):
    """The real build, check and prediction; bpf(2) replaced by a memfd."""

    def __init__(self, scope: int) -> None:
        self.scope = scope
        self.loads: list[int] = []

    def ptrace_scope(self) -> int | None:
        return self.scope

    def load(self, path: Path, program: str | None, maps: Any, caps: int) -> MemfdProgram:
        self.loads.append(caps)
        return MemfdProgram()


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    if shutil.which("clang") is None:
        pytest.skip("clang is not installed")
    d = tmp_path_factory.mktemp("submit-objects")
    objs = build_all(d)
    junk = d / "junk.o"
    junk.write_bytes(b"\x7fELF not really")
    objs["junk"] = junk
    yield objs


def service(tmp: Path, scope: int) -> tuple[Service, HostBackend]:
    backend = HostBackend(scope)
    opts = Options(config=tmp, socket=str(tmp / "unused.sock"), submit=True)
    work = tmp / f"work{scope}"
    work.mkdir(exist_ok=True)
    return Service(opts, backend, Audit(None), Counter(), work), backend


def submit_frame(blob: bytes, **extra: Any) -> bytes:
    msg = protocol.request("submit", 7, object=base64.b64encode(blob).decode(), **extra)
    return json.dumps(msg).encode()


def test_object_kinds_cover_every_rule() -> None:
    assert {"lru", "tracing", "calls", "loop", "big", "readuser", "global"} <= set(SOURCES)


@pytest.mark.parametrize("scope", SCOPES)
def test_daemon_answer_equals_prediction_equals_rules(
    objects: dict[str, Path], tmp_path: Path, scope: int
) -> None:
    svc, backend = service(tmp_path, scope)
    fds_before = len(os.listdir("/proc/self/fd"))
    bad: list[str] = []
    cells = 0
    for name, path in sorted(objects.items()):
        blob = path.read_bytes()
        for client, (uid, caps) in CLIENTS.items():
            cells += 1
            mask = sum(1 << c for c in caps)
            peer = Peer(pid=os.getpid(), uid=uid, gid=uid, caps=mask, same_userns=True)
            reply, fds = svc.handle(peer, submit_frame(blob, name=f"{name}.o"))
            for fd in fds:
                os.close(fd)
            answer = "ok" if reply["ok"] else reply["error"]["code"]
            want = expected(name, client, scope)
            if name == "junk":
                predicted = "invalid_object"
            else:
                obj = elf.load_object(str(path))
                pred = predict(
                    Needs.from_program(obj, obj.program()),
                    Credentials.from_mask(uid, mask),
                    SystemPolicy(ptrace_scope=scope, unprivileged_bpf_disabled=0),
                )
                predicted = "ok" if pred.ok else "refused"
                if reply["ok"] and reply["tier"] != pred.tier.name.lower():
                    bad.append(f"{name} {client}: tier {reply['tier']}, predicted {pred.tier}")
            if not answer == predicted == want:
                detail = reply.get("error", {}).get("message", "")[:200]
                bad.append(
                    f"scope={scope} {name} as {client}: daemon {answer}, predict {predicted}, "
                    f"rules {want}: {detail}"
                )
            if answer == "ok":
                assert len(fds) == 1, (name, client)
            else:
                assert fds == [], (name, client)
    assert not bad, f"{len(bad)} of {cells} cells disagree:\n" + "\n".join(bad)
    assert cells == len(objects) * len(CLIENTS)
    # the loads that happened were the granted ones, and no fd was left behind
    ok_cells = sum(
        expected(n, c, scope) == "ok" for n in objects for c in CLIENTS
    )
    assert len(backend.loads) == ok_cells
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_lru_map_refused_for_nobody_with_the_rule(objects: dict[str, Path], tmp_path: Path) -> None:
    """The exact attack: an LRU hash map object, submitted by nobody at scope 1."""
    svc, backend = service(tmp_path, 1)
    peer = Peer(pid=os.getpid(), uid=65534, gid=65534)
    reply, fds = svc.handle(peer, submit_frame(objects["lru"].read_bytes(), name="lru.o"))
    assert fds == [] and backend.loads == []
    assert reply["ok"] is False and reply["error"]["code"] == "refused"
    msg = reply["error"]["message"]
    assert "lru_hash" in msg and "only CAP_BPF may create" in msg and "uid 65534" in msg


def test_submitted_program_loaded_with_client_caps_only(
    objects: dict[str, Path], tmp_path: Path
) -> None:
    """Granted submissions are loaded with CAP_BPF plus the client's own
    CAP_PERFMON/CAP_SYS_PTRACE, never more."""
    svc, backend = service(tmp_path, 1)
    for client, (uid, caps) in CLIENTS.items():
        mask = sum(1 << c for c in caps)
        peer = Peer(pid=os.getpid(), uid=uid, gid=uid, caps=mask, same_userns=True)
        reply, fds = svc.handle(peer, submit_frame(objects["plain"].read_bytes()))
        for fd in fds:
            os.close(fd)
        assert reply["ok"], reply
        want = 1 << CAP_BPF
        want |= mask & ((1 << CAP_PERFMON) | (1 << CAP_SYS_PTRACE))
        if CAP_SYS_ADMIN in caps:
            want |= 1 << CAP_PERFMON
        assert backend.loads[-1] == want, client
