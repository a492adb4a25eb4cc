"""Fuzz the frame parser and request decoder (hypothesis).

Whatever bytes arrive, in whatever pieces: the parser yields frames or
raises ProtocolError, nothing else, and never holds more than one frame's
worth of bytes once the complete frames are taken."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpfseccomp import protocol
from ebpfseccomp.protocol import HEADER_SIZE, FrameParser, ProtocolError

MAX = 64


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


def drain(p: FrameParser, data: bytes, cuts: list[int]) -> tuple[list[bytes], ProtocolError | None]:
    frames: list[bytes] = []
    try:
        for piece in chunks(data, cuts):
            p.feed(piece)
            for f in p.frames():
                assert 0 < len(f) <= MAX
                frames.append(f)
            # bounded memory: after draining, less than one whole frame is held
            assert p.buffered < HEADER_SIZE + MAX
    except ProtocolError as exc:
        assert exc.code in ("bad_frame", "frame_too_large")
        assert exc.fatal
        return frames, exc
    return frames, None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=20))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    drain(FrameParser(MAX), data, cuts)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=MAX), max_size=12),
    st.lists(st.integers(min_value=0), max_size=30),
)
def test_valid_frames_survive_any_split(bodies: list[bytes], cuts: list[int]) -> None:
    data = b"".join(struct.pack(">I", len(b)) + b for b in bodies)
    frames, err = drain(FrameParser(MAX), data, cuts)
    assert err is None
    assert frames == bodies


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=MAX), max_size=5),
    st.integers(min_value=MAX + 1, max_value=2**32 - 1),
    st.binary(max_size=100),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_oversized_stops_after_good_frames(
    bodies: list[bytes], big: int, tail: bytes, cuts: list[int]
) -> None:
    data = b"".join(struct.pack(">I", len(b)) + b for b in bodies)
    data += struct.pack(">I", big) + tail
    frames, err = drain(FrameParser(MAX), data, cuts)
    assert frames == bodies
    assert err is not None and err.code == "frame_too_large"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_decode_random_bytes(payload: bytes) -> None:
    try:
        req = protocol.decode(payload)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES and not exc.fatal
    else:
        assert req.op in protocol.OPS


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "id", "op", "name", "object", "tier", "x"]), json_values, max_size=6
    )
)
def test_decode_random_objects(obj: dict[str, object]) -> None:
    import json

    payload = json.dumps(obj).encode()
    try:
        req = protocol.decode(payload)
    except ProtocolError as exc:
        assert exc.code in ("bad_request", "unsupported_version", "unknown_op", "bad_json")
    else:
        assert obj["v"] == 1 and req.op == obj["op"]
        for name in ("name", "tier"):
            try:
                req.str_arg(name, required=False)
            except ProtocolError as exc:
                assert exc.code == "bad_request"


# --- lone surrogates (issue 12, defect 2) -----------------------------------------------

#: text that may hold lone UTF-16 surrogates, as JSON's "\ud800" escapes produce
surrogate_text = st.lists(
    st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=6
).map("".join)
lone = st.integers(0xD800, 0xDFFF).map(chr)

#: every string field of a request the daemon reads, and a nested one
STRING_FIELDS = ("id", "op", "name", "object", "program", "tier", "extra", "nested", "key")


def _request_with(field: str, bad: str) -> dict[str, object]:
    req: dict[str, object] = {"v": 1, "id": 7, "op": "submit", "name": "n", "object": "AA==",
                              "program": "p", "tier": "none"}  # fmt: skip
    if field in ("id", "op", "name", "object", "program", "tier"):
        req[field] = bad
    elif field == "extra":
        req["extra"] = bad
    elif field == "nested":
        req["maps"] = {"m": {"entries": [[1, bad]]}}
    else:  # a key, at the top and deeper
        req[bad] = 1
    return req


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(STRING_FIELDS), surrogate_text, lone, surrogate_text)
def test_lone_surrogate_in_every_string_field(
    field: str, before: str, bad: str, after: str
) -> None:
    import json

    from hypothesis import assume

    text = before + bad + after
    # a high surrogate followed by a low one is a valid pair (one character)
    assume(protocol.has_lone_surrogate(json.loads(json.dumps(text))))
    req = _request_with(field, text)
    payload = json.dumps(req).encode()  # ASCII with \ud800-style escapes
    try:
        protocol.decode(payload)
    except ProtocolError as exc:
        assert exc.code == "bad_request", exc
        assert "surrogate" in exc.message
        assert exc.request_id == (None if field == "id" else 7)
        # the error reply always encodes, as valid UTF-8
        frame = protocol.encode(protocol.error_reply(exc.request_id, exc.code, exc.message))
        frame[4:].decode("utf-8")
    else:
        raise AssertionError(f"accepted a lone surrogate in {field}: {req!r}")


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(["v", "id", "op", "name", "object", "tier", "program"]),
                  surrogate_text),
        st.one_of(json_values, surrogate_text, st.just(1), st.sampled_from(protocol.OPS)),
        max_size=7,
    )
)  # fmt: skip
def test_decode_with_surrogates_never_escapes(obj: dict[str, object]) -> None:
    import json

    payload = json.dumps(obj).encode()
    try:
        req = protocol.decode(payload)
    except ProtocolError as exc:
        assert not exc.fatal
        protocol.encode(protocol.error_reply(exc.request_id, exc.code, exc.message))
        return
    # accepted: then nothing in it is a lone surrogate, and it encodes back
    protocol.encode({"id": req.id, "op": req.op, **req.args})[4:].decode("utf-8")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.integers(), surrogate_text, st.lists(st.integers())),
       surrogate_text, surrogate_text)  # fmt: skip
def test_error_frame_never_fails(rid: object, code: str, message: str) -> None:
    frame = protocol.error_frame(rid, code, message)
    reply = protocol.loads(frame[4:])
    assert reply["ok"] is False
    assert frame[4:].decode("ascii")
