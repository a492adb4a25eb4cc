"""Reading .BTF and .BTF.ext: the types behind BTF-defined maps, and line info.

Only what the toolchain needs is interpreted:

* the type graph, to resolve BTF-defined map definitions in ``.maps``
  (``__uint(type, ...)``, ``__type(key, T)``, ``max_entries``...) and to find
  the variables of a DATASEC;
* ``.BTF.ext`` line info, which maps instruction offsets of each code section
  to (file, line, column, source text).

The layout is the one of include/uapi/linux/btf.h and libbpf's
libbpf_internal.h (struct btf_ext_header).  Every malformed input becomes an
:class:`~ebpfseccomp.errors.ObjectError` naming the file and what is wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from .errors import ObjectError

BTF_MAGIC = 0xEB9F

# BTF kinds (include/uapi/linux/btf.h)
KIND_UNKN = 0
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

KIND_NAMES = {
    KIND_UNKN: "unknown", KIND_INT: "int", KIND_PTR: "ptr", KIND_ARRAY: "array",
    KIND_STRUCT: "struct", KIND_UNION: "union", KIND_ENUM: "enum", KIND_FWD: "fwd",
    KIND_TYPEDEF: "typedef", KIND_VOLATILE: "volatile", KIND_CONST: "const",
    KIND_RESTRICT: "restrict", KIND_FUNC: "func", KIND_FUNC_PROTO: "func_proto",
    KIND_VAR: "var", KIND_DATASEC: "datasec", KIND_FLOAT: "float",
    KIND_DECL_TAG: "decl_tag", KIND_TYPE_TAG: "type_tag", KIND_ENUM64: "enum64",
}  # fmt: skip

#: Kinds that only qualify another type (resolved through for sizes).
_MODIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}

_MAX_CHAIN = 64  # longest modifier/array chain followed before calling it a loop


@dataclass
class BtfType:
    """One BTF type record.  ``members`` holds the kind-specific entries:

    struct/union: (name, type_id, bit_offset); enum/enum64: (name, value, 0);
    func_proto: (name, type_id, 0); datasec: (type_id, offset, size).
    ``array`` is (elem_type, index_type, nelems) for arrays.
    """

    id: int
    kind: int
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int
    members: list[tuple] = field(default_factory=list)
    array: tuple[int, int, int] | None = None
    extra: int = 0  # int encoding, var linkage, decl_tag component index

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"kind#{self.kind}")


@dataclass
class SourceLine:
    """A source position from .BTF.ext line info."""

    file: str
    line: int
    col: int
    text: str

    def __str__(self) -> str:
        base = self.file.rsplit("/", 1)[-1]
        return f"{base}:{self.line}"


class Btf:
    """Parsed .BTF section: ``types[id]`` (0 is void) and the string table."""

    def __init__(self, data: bytes, path: str):
        self.path = path
        self.types: list[BtfType | None] = [None]
        self.strings = b""
        self._parse(data)

    # --- errors -----------------------------------------------------------

    def _err(self, what: str) -> ObjectError:
        return ObjectError(f"malformed .BTF section: {what}", path=self.path)

    # --- parsing ----------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        if len(data) < 24:
            raise self._err(f"{len(data)} bytes is shorter than the 24-byte header")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            if magic == 0x9FEB:
                raise self._err("big-endian BTF (compile with -target bpfel or bpf on x86/arm)")
            raise self._err(f"bad magic {magic:#06x} (expected {BTF_MAGIC:#06x})")
        if version != 1:
            raise self._err(f"unsupported version {version}")
        if hdr_len < 24 or hdr_len > len(data):
            raise self._err(f"header length {hdr_len} out of range")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        body = data[hdr_len:]
        if type_off + type_len > len(body):
            raise self._err(
                f"type section ({type_off}+{type_len}) runs past the end ({len(body)} bytes)"
            )
        if str_off + str_len > len(body):
            raise self._err(
                f"string section ({str_off}+{str_len}) runs past the end ({len(body)} bytes)"
            )
        self.strings = body[str_off : str_off + str_len]
        if self.strings and self.strings[0] != 0:
            raise self._err("string table does not start with an empty string")
        self._parse_types(body[type_off : type_off + type_len])

    def string(self, off: int) -> str:
        if off == 0:
            return ""
        if off < 0 or off >= len(self.strings):
            raise self._err(f"string offset {off} outside the {len(self.strings)}-byte table")
        end = self.strings.find(b"\0", off)
        if end < 0:
            raise self._err(f"string at offset {off} is not NUL-terminated")
        return self.strings[off:end].decode("utf-8", errors="replace")

    def _parse_types(self, data: bytes) -> None:
        pos = 0
        n = len(data)

        def need(count: int, what: str) -> None:
            if pos + count > n:
                raise self._err(f"type #{len(self.types)} ({what}) truncated")

        while pos < n:
            need(12, "header")
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            pos += 12
            vlen = info & 0xFFFF
            kind = (info >> 24) & 0x1F
            kflag = bool(info >> 31)
            t = BtfType(
                id=len(self.types),
                kind=kind,
                name=self.string(name_off),
                vlen=vlen,
                kind_flag=kflag,
                size_or_type=size_or_type,
            )
            if kind in (KIND_INT, KIND_VAR, KIND_DECL_TAG):
                need(4, KIND_NAMES[kind])
                (t.extra,) = struct.unpack_from("<I", data, pos)
                pos += 4
            elif kind == KIND_ARRAY:
                need(12, "array")
                t.array = struct.unpack_from("<III", data, pos)
                pos += 12
            elif kind in (KIND_STRUCT, KIND_UNION, KIND_DATASEC):
                need(12 * vlen, KIND_NAMES[kind])
                for i in range(vlen):
                    a, b, c = struct.unpack_from("<III", data, pos + 12 * i)
                    if kind == KIND_DATASEC:
                        t.members.append((a, b, c))
                    else:
                        t.members.append((self.string(a), b, c))
                pos += 12 * vlen
            elif kind == KIND_ENUM:
                need(8 * vlen, "enum")
                for i in range(vlen):
                    a, v = struct.unpack_from("<Ii", data, pos + 8 * i)
                    t.members.append((self.string(a), v, 0))
                pos += 8 * vlen
            elif kind == KIND_ENUM64:
                need(12 * vlen, "enum64")
                for i in range(vlen):
                    a, lo, hi = struct.unpack_from("<III", data, pos + 12 * i)
                    t.members.append((self.string(a), lo | hi << 32, 0))
                pos += 12 * vlen
            elif kind == KIND_FUNC_PROTO:
                need(8 * vlen, "func_proto")
                for i in range(vlen):
                    a, ty = struct.unpack_from("<II", data, pos + 8 * i)
                    t.members.append((self.string(a), ty, 0))
                pos += 8 * vlen
            elif kind in (
                KIND_PTR, KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST,
                KIND_RESTRICT, KIND_FUNC, KIND_FLOAT, KIND_TYPE_TAG,
            ):  # fmt: skip
                pass
            else:
                raise self._err(f"type #{t.id} has unknown kind {kind}")
            self.types.append(t)

    # --- queries ----------------------------------------------------------

    def type(self, tid: int) -> BtfType | None:
        """The type with id TID; None for void.  ObjectError if out of range."""
        if tid == 0:
            return None
        if tid < 0 or tid >= len(self.types):
            raise self._err(f"reference to type #{tid}, but there are {len(self.types) - 1}")
        return self.types[tid]

    def skip_modifiers(self, tid: int) -> BtfType | None:
        t = self.type(tid)
        for _ in range(_MAX_CHAIN):
            if t is None or t.kind not in _MODIFIERS:
                return t
            t = self.type(t.size_or_type)
        raise self._err(f"type #{tid}: modifier chain too long (a loop?)")

    def resolve_size(self, tid: int, _depth: int = 0) -> int:
        """sizeof() the type TID."""
        if _depth > _MAX_CHAIN:
            raise self._err(f"type #{tid}: type chain too long (a loop?)")
        t = self.skip_modifiers(tid)
        if t is None:
            raise self._err(f"type #{tid}: size of void")
        if t.kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64,
                      KIND_FLOAT, KIND_DATASEC):  # fmt: skip
            return t.size_or_type
        if t.kind == KIND_PTR:
            return 8
        if t.kind == KIND_ARRAY and t.array is not None:
            return t.array[2] * self.resolve_size(t.array[0], _depth + 1)
        raise self._err(f"type #{t.id} ({t.kind_name} {t.name!r}) has no size")

    def find_datasec(self, name: str) -> BtfType | None:
        for t in self.types:
            if t is not None and t.kind == KIND_DATASEC and t.name == name:
                return t
        return None

    def datasec_vars(self, name: str) -> dict[str, BtfType]:
        """Variable name -> the VAR's target type (modifiers kept) of DATASEC NAME."""
        sec = self.find_datasec(name)
        out: dict[str, BtfType] = {}
        if sec is None:
            return out
        for vtid, _off, _size in sec.members:
            v = self.type(vtid)
            if v is None or v.kind != KIND_VAR:
                raise self._err(f"DATASEC {name!r} member #{vtid} is not a variable")
            target = self.type(v.size_or_type)
            if target is None:
                raise self._err(f"variable {v.name!r} in {name!r} has type void")
            out[v.name] = target
        return out


# --- BTF-defined map definitions ----------------------------------------------


@dataclass
class MapDef:
    """The fields of one BTF-defined map (as in libbpf's parse_btf_map_def)."""

    type: int | None = None
    key_size: int | None = None
    value_size: int | None = None
    max_entries: int | None = None
    map_flags: int = 0
    numa_node: int = 0
    pinning: int = 0
    key_type: int = 0  # BTF type id of __type(key, ...); 0: none (key_size only)
    value_type: int = 0
    unsupported: list[str] = field(default_factory=list)


def _uint_field(btf: Btf, map_name: str, member: str, tid: int) -> int:
    """__uint(name, val) is `int (*name)[val]`: a pointer to an array of VAL."""
    t = btf.skip_modifiers(tid)
    if t is None or t.kind != KIND_PTR:
        raise ObjectError(
            f"map {map_name!r}: field {member!r} is not declared with __uint()",
            path=btf.path,
        )
    arr = btf.skip_modifiers(t.size_or_type)
    if arr is None or arr.kind != KIND_ARRAY or arr.array is None:
        raise ObjectError(
            f"map {map_name!r}: field {member!r} is not declared with __uint()",
            path=btf.path,
        )
    return arr.array[2]


def _type_size_field(btf: Btf, map_name: str, member: str, tid: int) -> int:
    """__type(name, T) is `typeof(T) *name`: the size of T."""
    t = btf.skip_modifiers(tid)
    if t is None or t.kind != KIND_PTR:
        raise ObjectError(
            f"map {map_name!r}: field {member!r} is not declared with __type()",
            path=btf.path,
        )
    return btf.resolve_size(t.size_or_type)


def _pointee(btf: Btf, tid: int) -> int:
    t = btf.skip_modifiers(tid)
    return t.size_or_type if t is not None else 0


def parse_map_def(btf: Btf, map_name: str, t: BtfType) -> MapDef:
    """Interpret the struct type T of a variable in the .maps DATASEC."""
    st = btf.skip_modifiers(t.id)
    if st is None or st.kind != KIND_STRUCT:
        raise ObjectError(
            f"map {map_name!r} in .maps is not a struct (use the "
            '`struct { __uint(type, ...); ... } name SEC(".maps")` form)',
            path=btf.path,
        )
    d = MapDef()
    for mname, mtid, _off in st.members:
        if mname == "type":
            d.type = _uint_field(btf, map_name, mname, mtid)
        elif mname == "max_entries":
            d.max_entries = _uint_field(btf, map_name, mname, mtid)
        elif mname == "map_flags":
            d.map_flags = _uint_field(btf, map_name, mname, mtid)
        elif mname == "numa_node":
            d.numa_node = _uint_field(btf, map_name, mname, mtid)
        elif mname == "pinning":
            d.pinning = _uint_field(btf, map_name, mname, mtid)
        elif mname == "key_size":
            size = _uint_field(btf, map_name, mname, mtid)
            if d.key_size is not None and d.key_size != size:
                raise ObjectError(
                    f"map {map_name!r}: key_size {size} conflicts with key type size {d.key_size}",
                    path=btf.path,
                )
            d.key_size = size
        elif mname == "value_size":
            size = _uint_field(btf, map_name, mname, mtid)
            if d.value_size is not None and d.value_size != size:
                raise ObjectError(
                    f"map {map_name!r}: value_size {size} conflicts with value type "
                    f"size {d.value_size}",
                    path=btf.path,
                )
            d.value_size = size
        elif mname == "key":
            size = _type_size_field(btf, map_name, mname, mtid)
            if d.key_size is not None and d.key_size != size:
                raise ObjectError(
                    f"map {map_name!r}: key type size {size} conflicts with key_size {d.key_size}",
                    path=btf.path,
                )
            d.key_size = size
            d.key_type = _pointee(btf, mtid)
        elif mname == "value":
            size = _type_size_field(btf, map_name, mname, mtid)
            if d.value_size is not None and d.value_size != size:
                raise ObjectError(
                    f"map {map_name!r}: value type size {size} conflicts with "
                    f"value_size {d.value_size}",
                    path=btf.path,
                )
            d.value_size = size
            d.value_type = _pointee(btf, mtid)
        elif mname in ("values", "inner_map", "extra"):
            d.unsupported.append(mname)
        else:
            raise ObjectError(
                f"map {map_name!r}: unknown map definition field {mname!r}", path=btf.path
            )
    return d


# --- values as the program's types see them --------------------------------------

_MAX_DEPTH = 16
_INT_SIGNED, _INT_CHAR, _INT_BOOL = 1, 2, 4


def decode(btf: Btf, tid: int, raw: bytes, _depth: int = 0) -> Any:
    """RAW (the bytes of a map key or value, or of a global section) as the
    BTF type TID describes it, JSON-ready: integers (signed where the type
    is), enum names, char arrays as text, arrays as lists, structs and unions
    as {member: value}, a DATASEC as {variable: value}.  Bytes no type
    describes stay hex ("hex:..."); never raises on short or odd input."""
    try:
        return _decode(btf, tid, raw, _depth)
    except ObjectError:  # a type id out of range, a modifier loop: a crafted object
        return "hex:" + raw.hex()


def _decode(btf: Btf, tid: int, raw: bytes, _depth: int) -> Any:
    t = btf.skip_modifiers(tid) if tid else None
    if t is None or _depth > _MAX_DEPTH:
        return "hex:" + raw.hex()
    kind = t.kind
    if kind == KIND_INT:
        size, enc = t.size_or_type, (t.extra >> 24) & 0xF
        offset, bits = (t.extra >> 16) & 0xFF, t.extra & 0xFF
        if size > len(raw) or size == 0:
            return "hex:" + raw.hex()
        value = int.from_bytes(raw[:size], "little") >> offset
        if 0 < bits < 8 * size:
            value &= (1 << bits) - 1
        nbits = bits or 8 * size
        if enc & _INT_SIGNED and value >> (nbits - 1):
            value -= 1 << nbits
        return bool(value) if enc & _INT_BOOL else value
    if kind in (KIND_ENUM, KIND_ENUM64):
        size = t.size_or_type
        if size > len(raw) or size == 0:
            return "hex:" + raw.hex()
        value = int.from_bytes(raw[:size], "little", signed=t.kind_flag)
        names = [name for name, v, _ in t.members if v == value or v == value % (1 << 64)]
        return names[0] if names else value
    if kind == KIND_PTR:
        return int.from_bytes(raw[:8], "little")
    if kind == KIND_FLOAT and t.size_or_type in (4, 8) and len(raw) >= t.size_or_type:
        return struct.unpack_from("<f" if t.size_or_type == 4 else "<d", raw)[0]
    if kind == KIND_ARRAY and t.array is not None:
        elem, _index, count = t.array
        try:
            esize = btf.resolve_size(elem)
        except ObjectError:
            return "hex:" + raw.hex()
        e = btf.skip_modifiers(elem)
        if esize == 1 and e is not None and e.kind == KIND_INT and \
                ((e.extra >> 24) & _INT_CHAR or e.name == "char"):
            text = raw[:count].split(b"\0", 1)[0]
            try:
                return text.decode("utf-8") if text.isascii() and text.decode().isprintable() \
                    else "hex:" + raw[:count].hex()
            except UnicodeDecodeError:
                return "hex:" + raw[:count].hex()
        if esize <= 0:
            return []
        return [_decode(btf, elem, raw[i * esize:(i + 1) * esize], _depth + 1)
                for i in range(min(count, len(raw) // esize))]
    if kind in (KIND_STRUCT, KIND_UNION):
        out: dict[str, Any] = {}
        for k, (name, mtid, bit_offset) in enumerate(t.members):
            key = name or f"_anon{k}"
            if t.kind_flag and bit_offset >> 24:  # a bitfield: size in the top byte
                size, off = bit_offset >> 24, bit_offset & 0xFFFFFF
                whole = int.from_bytes(raw, "little")
                out[key] = (whole >> off) & ((1 << size) - 1)
                continue
            off = (bit_offset & 0xFFFFFF) // 8
            try:
                msize = btf.resolve_size(mtid)
            except ObjectError:
                msize = len(raw) - off
            value = _decode(btf, mtid, raw[off:off + msize], _depth + 1)
            if not name and isinstance(value, dict):
                out.update(value)  # anonymous struct/union: its members are ours
            else:
                out[key] = value
        return out
    if kind == KIND_DATASEC:
        out = {}
        for vtid, off, size in t.members:
            v = btf.type(vtid)
            if v is None or v.kind != KIND_VAR:
                continue
            out[v.name] = _decode(btf, v.size_or_type, raw[off:off + size], _depth + 1)
        return out
    return "hex:" + raw.hex()


# --- .BTF.ext -----------------------------------------------------------------


def parse_line_info(data: bytes, btf: Btf | None, path: str) -> dict[str, dict[int, SourceLine]]:
    """Section name -> {byte offset of the instruction in that section: SourceLine}."""

    def err(what: str) -> ObjectError:
        return ObjectError(f"malformed .BTF.ext section: {what}", path=path)

    if btf is None:
        raise err("there is .BTF.ext but no .BTF section to hold its strings")
    if len(data) < 24:
        raise err(f"{len(data)} bytes is shorter than the 24-byte header")
    magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        raise err(f"bad magic {magic:#06x}")
    if version != 1:
        raise err(f"unsupported version {version}")
    if hdr_len < 24 or hdr_len > len(data):
        raise err(f"header length {hdr_len} out of range")
    _fi_off, _fi_len, li_off, li_len = struct.unpack_from("<IIII", data, 8)
    body = data[hdr_len:]
    out: dict[str, dict[int, SourceLine]] = {}
    if li_len == 0:
        return out
    if li_off + li_len > len(body):
        raise err(f"line info ({li_off}+{li_len}) runs past the end ({len(body)} bytes)")
    info = body[li_off : li_off + li_len]
    if len(info) < 4:
        raise err("line info has no record size")
    (rec_size,) = struct.unpack_from("<I", info, 0)
    if rec_size < 16:
        raise err(f"line info record size {rec_size} is smaller than 16")
    pos = 4
    while pos < len(info):
        if pos + 8 > len(info):
            raise err("line info section header truncated")
        sec_off, num = struct.unpack_from("<II", info, pos)
        pos += 8
        if num == 0:
            raise err("line info section with zero records")
        if pos + num * rec_size > len(info):
            raise err(f"line info: {num} records of {rec_size} bytes run past the end")
        sec_name = btf.string(sec_off)
        lines = out.setdefault(sec_name, {})
        for i in range(num):
            insn_off, file_off, line_off, line_col = struct.unpack_from(
                "<IIII", info, pos + i * rec_size
            )
            if line_col >> 10 == 0:
                continue  # compiler-generated code with no source line
            lines[insn_off] = SourceLine(
                file=btf.string(file_off),
                line=line_col >> 10,
                col=line_col & 0x3FF,
                text=btf.string(line_off).strip(),
            )
        pos += num * rec_size
    return out
