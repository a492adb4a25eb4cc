"""The ebpfseccompd wire protocol (docs/protocol.md is the full description).

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON, which must be an object.  Requests carry ``{"v": 1, "id": ..., "op":
...}``; replies echo ``v`` and ``id`` and carry ``"ok": true`` with the
result, or ``"ok": false`` with ``{"error": {"code": ..., "message": ...}}``.
File descriptors (the loaded program of a ``get``) travel beside the reply
frame as SCM_RIGHTS ancillary data, and the reply's ``"fds"`` list names
them in order.

This module does no I/O: `FrameParser` turns bytes into frames, `decode`
turns a frame into a checked `Request`, `encode` turns a message into bytes.
Every failure is a `ProtocolError` carrying a stable ``code``; the parser
never raises anything else and never buffers more than one frame.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import EbpfSeccompError

#: The protocol version this module speaks; requests carry it as "v".
VERSION = 1
SUPPORTED_VERSIONS = (1,)

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size

#: Default limit on one frame's JSON (not counting the 4-byte header).  A
#: ``submit`` carries its object base64-encoded, so this bounds object size
#: to about three quarters of it.
DEFAULT_MAX_FRAME = 1 << 20
#: The smallest limit a daemon may be configured with.
MIN_MAX_FRAME = 256

OPS = ("list", "get", "submit", "stats")

#: Error codes, with whether the daemon closes the connection after sending
#: them (framing errors leave the stream unusable).
ERROR_CODES: dict[str, bool] = {
    "frame_too_large": True,  # length header above the limit
    "bad_frame": True,  # zero length
    "timeout": True,  # frame not finished within the client timeout
    "busy": True,  # too many clients
    "bad_json": False,  # not UTF-8 JSON, or not an object
    "unsupported_version": False,
    "bad_request": False,  # a field missing or of the wrong type
    "unknown_op": False,
    "not_found": False,  # no catalog entry of that name
    "forbidden": False,  # the entry does not list this user or group
    "refused": False,  # submit beyond the client's own tier
    "invalid_object": False,  # submit: not a usable seccomp object
    "load_failed": False,  # the kernel (verifier) refused the program
    "unavailable": False,  # entry failed to load; see the daemon's log
    "overloaded": False,  # the daemon is short of file descriptors; retry
    "internal": False,
}

#: JSON types accepted for a request id (echoed verbatim in the reply).
_ID_TYPES = (int, str, type(None))
_MAX_ID_LEN = 128


class ProtocolError(EbpfSeccompError):
    """A frame or message that breaks the protocol.

    ``code`` is one of ERROR_CODES; ``fatal`` says the byte stream cannot be
    trusted any more (the connection must be closed)."""

    def __init__(self, code: str, message: str, *, request_id: Any = None):
        self.code = code
        self.request_id = request_id
        super().__init__(message)

    @property
    def fatal(self) -> bool:
        return ERROR_CODES.get(self.code, True)


class DaemonError(EbpfSeccompError):
    """The daemon answered ``ok: false``; ``code`` is its error code."""

    def __init__(self, code: str, message: str, *, hint: str | None = None):
        self.code = code
        super().__init__(f"{message} [{code}]", hint=hint)


# --- framing ----------------------------------------------------------------


def encode(message: dict[str, Any], *, max_frame: int | None = None) -> bytes:
    """One frame: header + compact UTF-8 JSON of MESSAGE.

    A string that is not valid Unicode (a lone surrogate) is written as a
    JSON escape rather than failing: the frame is always valid UTF-8."""
    try:
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode()
    if max_frame is not None and len(body) > max_frame:
        raise ProtocolError(
            "frame_too_large", f"message of {len(body)} bytes exceeds the {max_frame}-byte limit"
        )
    if len(body) > 0xFFFFFFFF:
        raise ProtocolError("frame_too_large", "message does not fit a 32-bit length")
    return HEADER.pack(len(body)) + body


def error_frame(request_id: Any, code: str, message: str) -> bytes:
    """An error reply's frame that cannot fail to encode: REQUEST_ID is
    echoed only if it is an int or a valid-Unicode string, MESSAGE is made
    ASCII; on any failure the fixed INTERNAL_FRAME is returned."""
    try:
        rid = request_id if _plain_id(request_id) else None
        body = json.dumps(
            error_reply(rid, str(code), str(message)), separators=(",", ":"), ensure_ascii=True
        ).encode("ascii")
        return HEADER.pack(len(body)) + body
    except Exception:  # noqa: BLE001 - the last resort must not raise
        return INTERNAL_FRAME


def _plain_id(value: Any) -> bool:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return True
    return isinstance(value, str) and len(value) <= _MAX_ID_LEN and not has_lone_surrogate(value)


class FrameParser:
    """Incremental frame splitter.

    ``feed(data)`` appends bytes; iterate ``frames()`` (or call
    ``next_frame()``) for each complete payload.  A length of zero or above
    ``max_frame`` raises ProtocolError as soon as the header is complete,
    before the body is buffered, and the parser stays failed: every later
    call raises the same error.  At most one incomplete frame is held, so the
    memory a client can make the daemon hold is ``max_frame + 4`` plus the
    bytes of one ``feed``.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame (or not yet taken)."""
        return len(self._buf) - self._pos

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has arrived but not all of it."""
        return self.buffered > 0

    @property
    def has_frame(self) -> bool:
        """True when a complete frame is buffered (next_frame() would return it)."""
        avail = len(self._buf) - self._pos
        if self._error is not None or avail < HEADER_SIZE:
            return False
        (length,) = HEADER.unpack_from(self._buf, self._pos)
        return avail >= HEADER_SIZE + length

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        self._check_header()

    def _check_header(self) -> None:
        if len(self._buf) - self._pos < HEADER_SIZE:
            return
        (length,) = HEADER.unpack_from(self._buf, self._pos)
        if length == 0:
            self._fail(ProtocolError("bad_frame", "frame of length 0"))
        if length > self.max_frame:
            self._fail(
                ProtocolError(
                    "frame_too_large",
                    f"frame of {length} bytes exceeds the {self.max_frame}-byte limit",
                )
            )

    def _fail(self, err: ProtocolError) -> None:
        self._error = err
        self._buf = bytearray()
        self._pos = 0
        raise err

    def next_frame(self) -> bytes | None:
        """The next complete payload, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        avail = len(self._buf) - self._pos
        if avail < HEADER_SIZE:
            return None
        self._check_header()
        (length,) = HEADER.unpack_from(self._buf, self._pos)
        if avail < HEADER_SIZE + length:
            return None
        start = self._pos + HEADER_SIZE
        payload = bytes(self._buf[start : start + length])
        self._pos = start + length
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        return payload

    def frames(self) -> Iterator[bytes]:
        while (frame := self.next_frame()) is not None:
            yield frame


# --- messages ---------------------------------------------------------------


def loads(payload: bytes) -> dict[str, Any]:
    """Decode a frame's JSON object (ProtocolError 'bad_json' otherwise)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("bad_json", f"frame is not UTF-8: {exc.reason}") from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ProtocolError("bad_json", "JSON nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError("bad_json", f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", f"frame holds a JSON {type(obj).__name__}, not an object")
    return obj


@dataclass
class Request:
    id: Any
    op: str
    args: dict[str, Any] = field(default_factory=dict)

    def str_arg(self, name: str, *, required: bool = True, max_len: int = 256) -> str | None:
        value = self.args.get(name)
        if value is None:
            if required:
                raise ProtocolError(
                    "bad_request", f"'{self.op}' needs a string field '{name}'", request_id=self.id
                )
            return None
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise ProtocolError(
                "bad_request",
                f"field '{name}' must be a non-empty string of at most {max_len} characters",
                request_id=self.id,
            )
        return value


_SURROGATE = re.compile("[\ud800-\udfff]")
#: A JSON escape of a UTF-16 surrogate: the only way a surrogate gets into a
#: decoded frame (raw UTF-8 bytes cannot encode one).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def has_lone_surrogate(text: str) -> bool:
    """True when TEXT holds a UTF-16 surrogate on its own (JSON "\\ud800"):
    not a Unicode character, so it cannot be encoded as UTF-8."""
    return _SURROGATE.search(text) is not None


def _surrogate_field(obj: dict[str, Any]) -> str | None:
    """The top-level field of OBJ whose name or value (at any depth) holds a
    lone surrogate, shown safely; None when there is none."""
    for key, value in obj.items():
        where = ascii(key)
        if has_lone_surrogate(key):
            return where
        stack: list[Any] = [value]
        while stack:
            v = stack.pop()
            if isinstance(v, str):
                if has_lone_surrogate(v):
                    return where
            elif isinstance(v, dict):
                for k, x in v.items():
                    if has_lone_surrogate(k):
                        return where
                    stack.append(x)
            elif isinstance(v, list):
                stack.extend(v)
    return None


def _shown(value: Any, limit: int = 32) -> str:
    """VALUE for an error message: short and ASCII whatever the client sent."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = ascii(value)
        return text if len(text) <= limit else text[:limit] + "..."
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"


def decode(payload: bytes) -> Request:
    """Check a request frame: version, id, op.  Arguments are left to the op.

    Every string in it (ids, op, names, map keys, tiers, at any depth) must
    be valid Unicode: a lone surrogate escape is a bad_request."""
    obj = loads(payload)
    rid = obj.get("id")
    if (
        isinstance(rid, bool)
        or not isinstance(rid, _ID_TYPES)
        or (isinstance(rid, str) and len(rid) > _MAX_ID_LEN)
    ):
        raise ProtocolError(
            "bad_request",
            f"'id' must be an integer or a string of at most {_MAX_ID_LEN} characters",
        )
    if isinstance(rid, str) and has_lone_surrogate(rid):
        raise ProtocolError(
            "bad_request",
            "'id' holds a lone UTF-16 surrogate (an escape like \\ud800 without its pair), "
            "which is not Unicode; send valid Unicode strings",
        )
    rid_ok = rid
    if _SURROGATE_ESCAPE.search(payload) is not None:
        bad = _surrogate_field(obj)
        if bad is not None:
            raise ProtocolError(
                "bad_request",
                f"field {bad} holds a lone UTF-16 surrogate (an escape like \\ud800 without "
                "its pair), which is not Unicode; send valid Unicode strings",
                request_id=rid_ok,
            )
    version = obj.get("v")
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {_shown(version)} not supported; this daemon speaks "
            + ", ".join(str(v) for v in SUPPORTED_VERSIONS),
            request_id=rid_ok,
        )
    op = obj.get("op")
    if not isinstance(op, str):
        raise ProtocolError("bad_request", "request needs a string field 'op'", request_id=rid_ok)
    if op not in OPS:
        raise ProtocolError(
            "unknown_op",
            f"unknown op {_shown(op)}; known: {', '.join(OPS)}",
            request_id=rid_ok,
        )
    args = {k: v for k, v in obj.items() if k not in ("v", "id", "op")}
    return Request(id=rid_ok, op=op, args=args)


def request(op: str, request_id: Any, **args: Any) -> dict[str, Any]:
    return {"v": VERSION, "id": request_id, "op": op, **args}


def ok_reply(request_id: Any, **result: Any) -> dict[str, Any]:
    return {"v": VERSION, "id": request_id, "ok": True, **result}


def error_reply(request_id: Any, code: str, message: str, **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, **extra}
    return {"v": VERSION, "id": request_id, "ok": False, "error": err}


#: An error frame encoded once, at import: the reply of last resort.
INTERNAL_FRAME = encode(error_reply(None, "internal", "internal error (see the daemon's log)"))
