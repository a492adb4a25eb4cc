"""ebpfseccompd's request path in-process: whatever a request holds, the
handler answers (never raises) and no fd is left behind."""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebpfseccomp import protocol
from ebpfseccomp.contract import Tier
from ebpfseccomp.daemon import Audit, Backend, Checked, Options, Peer, Service
from ebpfseccomp.daemon.server import Conn, Daemon
from ebpfseccomp.errors import ObjectError
from ebpfseccomp.privilege import Prediction


class Prog:
    def __init__(self) -> None:
        self.fd = os.memfd_create("inproc", os.MFD_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TextBackend(Backend):
    """Objects are text: b"OK" loads, anything else is not an object."""

    def ptrace_scope(self) -> int | None:
        return 1

    def check(self, path: Path, program: str | None) -> Checked:
        if Path(path).read_bytes() != b"OK":
            raise ObjectError("not an ELF object", path=str(path))
        return Checked(tier=Tier.NONE, loadable=True, problems=[])

    def predict(self, checked: Checked, peer: Peer, ptrace_scope: int | None) -> Prediction:
        return Prediction(True, Tier.EXTENDED, [])

    def load(self, path: Path, program: str | None, maps: Any, caps: int) -> Prog:
        return Prog()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


surrogate_text = st.lists(
    st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=5
).map("".join)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | surrogate_text | st.just("T0s="),  # "OK"
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(surrogate_text, inner, max_size=3),
    max_leaves=8,
)
requests = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1"]), "op": st.sampled_from([*protocol.OPS, "x"])},
    optional={
        "id": st.one_of(st.integers(), surrogate_text),
        "name": st.one_of(surrogate_text, st.just("e")),
        "object": st.one_of(st.just("T0s="), surrogate_text),  # base64 of b"OK"
        "program": surrogate_text,
        "tier": st.one_of(st.sampled_from(["none", "extended", "ptrace"]), surrogate_text),
        "maps": values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(requests)
def test_handle_never_raises_and_never_leaks(tmp_path: Path, req: dict[str, Any]) -> None:
    opts = Options(config=tmp_path, socket="unused", submit=True)
    svc = Service(opts, TextBackend(), Audit(None), Counter(), tmp_path)
    peer = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
    before = open_fds()
    reply, fds = svc.handle(peer, json.dumps(req).encode())
    frame = protocol.encode(reply)  # always encodes, as UTF-8
    frame[4:].decode("utf-8")
    assert "error_internal" not in svc.counters, reply
    if reply["ok"]:
        assert len(fds) == (1 if req["op"] in ("get", "submit") else 0)
    else:
        assert fds == []
    for fd in fds:
        os.close(fd)
    assert open_fds() == before


def test_unencodable_reply_closes_its_fds_and_answers_internal(tmp_path: Path) -> None:
    """The reply of last resort: if a reply cannot be encoded (a bug), the
    fds meant for it are closed and the client gets `internal`."""
    d = Daemon(Options(config=tmp_path, socket=str(tmp_path / "s")), TextBackend())
    a, b = socket.socketpair()
    try:
        now = time.monotonic()
        conn = Conn(a, a.fileno(), Peer(1, 0, 0), protocol.FrameParser(), now, now)
        d.conns[conn.fd] = conn
        before = open_fds()
        prog = os.memfd_create("x")
        d._queue(conn, {"v": 1, "id": 5, "ok": True, "x": object()}, [prog])
        assert open_fds() == before  # the memfd is closed
        assert conn.out_fds == 0 and d.held_fds == 0
        item = conn.out[0]
        assert item.fds == []
        reply = protocol.loads(item.data[4:])
        assert reply == {"v": 1, "id": 5, "ok": False,
                         "error": {"code": "internal", "message": "internal error"}}  # fmt: skip
        d._flush(conn)
        assert protocol.loads(b.recv(4096)[4:])["error"]["code"] == "internal"
    finally:
        d.shutdown()
        b.close()
