"""Talk to ebpfseccompd: list entries, get a program fd, submit an object.

    >>> from ebpfseccomp import client
    >>> fd, meta = client.get("deny-ptrace")       # then attach.attach(fd, ...)

`Client` keeps one connection and sends requests one at a time; replies are
matched by id.  Every failure is an EbpfSeccompError: `DaemonError` (with the
daemon's error ``code``) for a refusal, `DaemonUnavailable` when the socket
cannot be reached.
"""

from __future__ import annotations

import array
import base64
import contextlib
import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any

from . import protocol
from .errors import EbpfSeccompError
from .protocol import DaemonError

DEFAULT_SOCKET = "/run/ebpfseccomp/ebpfseccompd.sock"
SOCKET_ENV = "EBPFSECCOMP_SOCKET"
#: fds a reply may carry; more are closed unread.
MAX_FDS = 8
#: Largest reply frame the client accepts.
MAX_REPLY = 16 << 20

__all__ = ["Client", "DaemonError", "DaemonUnavailable", "default_socket", "get"]


class DaemonUnavailable(EbpfSeccompError):
    """The daemon's socket is missing, refuses connections, or hung up."""


def default_socket() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Client:
    """A connection to ebpfseccompd.

    ``retry``: seconds to keep retrying connect() while the socket is absent
    or refuses (a daemon being restarted); 0 tries once.  ``timeout``:
    seconds to wait for each reply."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        retry: float = 0.0,
    ):
        self.socket_path = str(socket_path) if socket_path else default_socket()
        self.timeout = timeout
        self.retry = retry
        self._sock: socket.socket | None = None
        self._parser = protocol.FrameParser(MAX_REPLY)
        self._pending_fds: list[int] = []
        self._ids = itertools.count(1)

    # --- connection ----------------------------------------------------------

    def connect(self) -> None:
        if self._sock is not None:
            return
        deadline = time.monotonic() + self.retry
        delay = 0.02
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise DaemonUnavailable(
                        f"cannot connect to ebpfseccompd: {exc.strerror}",
                        path=self.socket_path,
                        hint=f"is the daemon running? set ${SOCKET_ENV} or --socket for "
                        "another path",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            except PermissionError:
                sock.close()
                raise DaemonUnavailable(
                    "permission denied connecting to ebpfseccompd",
                    path=self.socket_path,
                    hint="the socket's group (SocketGroup=) decides who may connect",
                ) from None
            except OSError as exc:
                sock.close()
                raise DaemonUnavailable(
                    f"cannot connect to ebpfseccompd: {exc}", path=self.socket_path
                ) from None
            self._sock = sock
            self._parser = protocol.FrameParser(MAX_REPLY)
            return

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        _close_all(self._pending_fds)
        self._pending_fds = []

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one request ---------------------------------------------------------

    def _recv_frame(self) -> tuple[bytes, list[int]]:
        assert self._sock is not None
        fds_space = socket.CMSG_SPACE(MAX_FDS * 4)
        while True:
            frame = self._parser.next_frame()
            if frame is not None:
                fds, self._pending_fds = self._pending_fds, []
                return frame, fds
            try:
                data, anc, flags, _ = self._sock.recvmsg(65536, fds_space)
            except TimeoutError:
                raise DaemonUnavailable(
                    f"no reply from ebpfseccompd within {self.timeout:g} s", path=self.socket_path
                ) from None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(cdata[: len(cdata) - len(cdata) % arr.itemsize])
                    self._pending_fds.extend(arr)
            if flags & socket.MSG_CTRUNC:
                _close_all(self._pending_fds)
                self._pending_fds = []
                raise DaemonError("protocol", "reply carried more fds than expected")
            if not data:
                raise DaemonUnavailable("ebpfseccompd closed the connection", path=self.socket_path)
            self._parser.feed(data)

    def request(self, op: str, **args: Any) -> tuple[dict[str, Any], list[int]]:
        """Send one request; return (reply, fds).  Raises DaemonError on ok=false.

        The caller owns the fds returned."""
        self.connect()
        assert self._sock is not None
        rid = next(self._ids)
        frame = protocol.encode(protocol.request(op, rid, **args))
        try:
            self._sock.sendall(frame)
            while True:
                payload, fds = self._recv_frame()
                reply = protocol.loads(payload)
                if reply.get("id") == rid or reply.get("id") is None:
                    break
                _close_all(fds)  # a stray reply: not ours
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.close()
            raise DaemonUnavailable(
                f"connection to ebpfseccompd lost: {exc.strerror}", path=self.socket_path
            ) from None
        except protocol.ProtocolError as exc:
            self.close()
            raise DaemonError(exc.code, f"bad reply from ebpfseccompd: {exc.message}") from None
        if not reply.get("ok"):
            _close_all(fds)
            err = reply.get("error") or {}
            code = str(err.get("code", "unknown"))
            if protocol.ERROR_CODES.get(code, False):
                self.close()
            raise DaemonError(code, str(err.get("message", "request refused")))
        names = reply.get("fds", [])
        if not isinstance(names, list) or len(names) != len(fds):
            _close_all(fds)
            raise DaemonError("protocol", f"reply names {len(names)} fds but {len(fds)} arrived")
        return reply, fds

    # --- operations ----------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """The entries this user may get (metadata only)."""
        reply, _ = self.request("list")
        return list(reply.get("entries", []))

    def stats(self) -> dict[str, Any]:
        reply, _ = self.request("stats")
        return {k: v for k, v in reply.items() if k not in ("v", "id", "ok")}

    def get(self, name: str) -> tuple[int, dict[str, Any]]:
        """(program fd, metadata) of catalog entry NAME.  The caller closes the fd."""
        reply, fds = self.request("get", name=name)
        return _program_fd(reply, fds)

    def submit(
        self,
        obj: bytes | str | os.PathLike[str],
        *,
        program: str | None = None,
        tier: str | None = None,
        name: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Have the daemon load an object of our own, within our own tier.

        OBJ is the object's bytes or a path to it; TIER asks for at least that
        tier (e.g. "ptrace" for user-memory reads of non-dumpable tasks)."""
        if not isinstance(obj, bytes):
            path = Path(obj)
            obj = path.read_bytes()
            name = name or path.name
        args: dict[str, Any] = {"object": base64.b64encode(obj).decode("ascii")}
        for key, val in (("program", program), ("tier", tier), ("name", name)):
            if val is not None:
                args[key] = val
        reply, fds = self.request("submit", **args)
        return _program_fd(reply, fds)


def _program_fd(reply: dict[str, Any], fds: list[int]) -> tuple[int, dict[str, Any]]:
    names = reply.get("fds", [])
    if "program" not in names:
        _close_all(fds)
        raise DaemonError("protocol", "reply carries no program fd")
    i = names.index("program")
    fd = fds[i]
    _close_all([f for j, f in enumerate(fds) if j != i])
    meta = {k: v for k, v in reply.items() if k not in ("v", "id", "ok", "fds")}
    return fd, meta


def get(name: str, socket: str | None = None, *, retry: float = 0.0) -> tuple[int, dict[str, Any]]:
    """(program fd, metadata) for catalog entry NAME from the daemon at SOCKET.

    What `ebpfseccomp run --daemon NAME` calls.  The fd is the caller's to
    attach and close."""
    with Client(socket, retry=retry) as c:
        return c.get(name)
