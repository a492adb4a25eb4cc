"""The daemon's wire format: frames, requests, replies (docs/protocol.md)."""

from __future__ import annotations

import json
import struct

import pytest

from ebpfseccomp import protocol
from ebpfseccomp.protocol import FrameParser, ProtocolError


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_encode_is_length_prefixed_compact_json() -> None:
    data = protocol.encode({"v": 1, "id": 7, "op": "list"})
    (n,) = struct.unpack(">I", data[:4])
    assert n == len(data) - 4
    assert data[4:] == b'{"v":1,"id":7,"op":"list"}'


def test_encode_respects_limit_and_utf8() -> None:
    data = protocol.encode({"d": "é"})
    assert "é".encode() in data
    with pytest.raises(ProtocolError) as ei:
        protocol.encode({"x": "a" * 100}, max_frame=50)
    assert ei.value.code == "frame_too_large"


def test_parser_splits_across_feeds() -> None:
    msgs = [protocol.encode({"v": 1, "id": i, "op": "list"}) for i in range(5)]
    blob = b"".join(msgs)
    p = FrameParser()
    out = []
    for b in blob:
        p.feed(bytes([b]))
        out += list(p.frames())
    assert [json.loads(f)["id"] for f in out] == list(range(5))
    assert p.buffered == 0 and not p.in_frame


def test_parser_many_frames_in_one_feed() -> None:
    p = FrameParser()
    p.feed(frame(b"{}") * 3 + frame(b'{"a":1}')[:5])
    assert list(p.frames()) == [b"{}"] * 3
    assert p.in_frame
    p.feed(frame(b'{"a":1}')[5:])
    assert list(p.frames()) == [b'{"a":1}']


def test_zero_length_frame_is_fatal() -> None:
    p = FrameParser()
    with pytest.raises(ProtocolError) as ei:
        p.feed(struct.pack(">I", 0))
    assert ei.value.code == "bad_frame" and ei.value.fatal
    assert p.failed
    with pytest.raises(ProtocolError):
        p.feed(b"{}")  # stays failed


def test_oversized_frame_fails_on_header_alone() -> None:
    p = FrameParser(max_frame=100)
    p.feed(b"\x00\x00")
    with pytest.raises(ProtocolError) as ei:
        p.feed(b"\x00\x65")  # 101
    assert ei.value.code == "frame_too_large"
    assert "101" in ei.value.message and "100" in ei.value.message
    assert p.buffered == 0


def test_oversized_frame_after_good_one_in_same_feed() -> None:
    p = FrameParser(max_frame=10)
    p.feed(frame(b"{}") + struct.pack(">I", 11))
    it = p.frames()
    assert next(it) == b"{}"
    with pytest.raises(ProtocolError):
        next(it)


def test_exact_limit_is_allowed() -> None:
    p = FrameParser(max_frame=4)
    p.feed(frame(b"1234"))
    assert p.next_frame() == b"1234"


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"\xff", "bad_json"),
        (b"{", "bad_json"),
        (b"[]", "bad_json"),
        (b"12", "bad_json"),
        (b"[" * 100000 + b"]" * 100000, "bad_json"),
        (b'{"v":1,"id":1,"x":' + b"9" * 5000 + b"}", "bad_json"),
        (b'{"id":1,"op":"list"}', "unsupported_version"),
        (b'{"v":2,"id":1,"op":"list"}', "unsupported_version"),
        (b'{"v":true,"id":1,"op":"list"}', "unsupported_version"),
        (b'{"v":1,"id":1}', "bad_request"),
        (b'{"v":1,"id":1,"op":5}', "bad_request"),
        (b'{"v":1,"id":1.5,"op":"list"}', "bad_request"),
        (b'{"v":1,"id":true,"op":"list"}', "bad_request"),
        (b'{"v":1,"id":"' + b"x" * 200 + b'","op":"list"}', "bad_request"),
        (b'{"v":1,"id":1,"op":"reboot"}', "unknown_op"),
    ],
)
def test_decode_errors(payload: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        protocol.decode(payload)
    assert ei.value.code == code
    assert not ei.value.fatal
    assert ei.value.message


def test_decode_keeps_id_for_errors_after_it() -> None:
    with pytest.raises(ProtocolError) as ei:
        protocol.decode(b'{"v":1,"id":"abc","op":"reboot"}')
    assert ei.value.request_id == "abc"


def test_decode_ok() -> None:
    req = protocol.decode(b'{"v":1,"id":"r1","op":"get","name":"x"}')
    assert (req.id, req.op, req.args) == ("r1", "get", {"name": "x"})
    assert req.str_arg("name") == "x"
    assert req.str_arg("program", required=False) is None
    with pytest.raises(ProtocolError):
        req.str_arg("program")
    req2 = protocol.decode(b'{"v":1,"op":"list"}')
    assert req2.id is None


def test_replies() -> None:
    ok = protocol.ok_reply(3, entries=[])
    assert ok == {"v": 1, "id": 3, "ok": True, "entries": []}
    err = protocol.error_reply(3, "forbidden", "no")
    assert err == {"v": 1, "id": 3, "ok": False, "error": {"code": "forbidden", "message": "no"}}


def test_every_error_code_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    for code in protocol.ERROR_CODES:
        assert f"`{code}`" in doc, code
    for op in protocol.OPS:
        assert f"`{op}`" in doc, op
