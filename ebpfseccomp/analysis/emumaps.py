"""The emulator's BPF maps: hash, array, their per-CPU forms, LRU hash and
the ring buffer.

Each map keeps real byte buffers (bytearray) as values, so that a program
that loads and stores through a pointer returned by map_lookup_elem changes
the map, as in the kernel.  Per-CPU maps are modelled as one CPU: a value is
one value_size buffer, not one per possible CPU.

The methods without an underscore are the user-space view (what
bpf(BPF_MAP_*_ELEM) does from a loader); the ones with `_bpf_` are what the
helpers call and answer with the kernel's return conventions (0 or -errno).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ..contract import MAP_TYPES
from ..errors import EmulationError

# map_update_elem flags (include/uapi/linux/bpf.h)
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4

# errno values the map helpers return (negated)
ENOENT = 2
E2BIG = 7
EAGAIN = 11
EEXIST = 17
EINVAL = 22

ERRNO_NAMES = {ENOENT: "ENOENT", E2BIG: "E2BIG", EAGAIN: "EAGAIN", EEXIST: "EEXIST",
               EINVAL: "EINVAL"}

ARRAY_TYPES = frozenset({2, 6})  # array, percpu_array
HASH_TYPES = frozenset({1, 5})  # hash, percpu_hash
LRU_TYPES = frozenset({9, 10})  # lru_hash, lru_percpu_hash
RINGBUF_TYPE = 27
RINGBUF_HDR = 8  # BPF_RINGBUF_HDR_SZ: each record's header in the ring


def _as_bytes(what: str, data: bytes | bytearray | int, size: int, map_name: str) -> bytes:
    """KEY or VALUE as exactly SIZE bytes; integers are little-endian."""
    if isinstance(data, int):
        if not -(1 << (8 * size - 1)) <= data < (1 << (8 * size)):
            raise EmulationError(
                f"map {map_name}: {what} {data} does not fit in {size} bytes"
            )
        return (data & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    data = bytes(data)
    if len(data) != size:
        raise EmulationError(
            f"map {map_name}: {what} is {len(data)} bytes, the map's {what} size is {size}"
        )
    return data


class EmuMap:
    """One map of the emulated program.  Create with `EmuMap.from_spec`."""

    kind = "map"

    def __init__(self, spec: Any):
        self.spec = spec
        self.name: str = spec.name
        self.type: int = spec.type
        self.key_size: int = spec.key_size
        self.value_size: int = spec.value_size
        self.max_entries: int = spec.max_entries
        self.flags: int = spec.flags
        self.is_global: bool = bool(getattr(spec, "is_global", False))
        #: Program stores into a value are refused (.rodata: libbpf freezes it).
        self.read_only_for_program: bool = self.is_global and self.name.startswith(".rodata")

    @staticmethod
    def from_spec(spec: Any) -> EmuMap:
        if spec.type in ARRAY_TYPES:
            return ArrayMap(spec)
        if spec.type in HASH_TYPES:
            return HashMap(spec)
        if spec.type in LRU_TYPES:
            return LruHashMap(spec)
        if spec.type == RINGBUF_TYPE:
            return RingbufMap(spec)
        allowed = ", ".join(f"{n} ({t})" for t, n in MAP_TYPES.items())
        raise EmulationError(
            f"map {spec.name} has type {spec.type}, which the emulator does not model "
            f"(it runs {allowed})"
        )

    # --- user-space view --------------------------------------------------

    def key(self, key: bytes | bytearray | int) -> bytes:
        return _as_bytes("key", key, self.key_size, self.name)

    def value(self, value: bytes | bytearray | int) -> bytes:
        return _as_bytes("value", value, self.value_size, self.name)

    def lookup(self, key: bytes | bytearray | int) -> bytes | None:
        buf = self._find(self.key(key))
        return None if buf is None else bytes(buf)

    def update(
        self, key: bytes | bytearray | int, value: bytes | bytearray | int, flags: int = BPF_ANY
    ) -> None:
        err = self._bpf_update(self.key(key), self.value(value), flags)
        if err:
            raise EmulationError(
                f"map {self.name}: update failed with {ERRNO_NAMES.get(-err, err)}"
            )

    def delete(self, key: bytes | bytearray | int) -> None:
        err = self._bpf_delete(self.key(key))
        if err:
            raise EmulationError(
                f"map {self.name}: delete failed with {ERRNO_NAMES.get(-err, err)}"
            )

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        raise NotImplementedError

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    # --- helper view (kernel return conventions) ----------------------------

    def _find(self, key: bytes) -> bytearray | None:
        """The value buffer for KEY without touching LRU state."""
        raise NotImplementedError

    def _bpf_lookup(self, key: bytes) -> bytearray | None:
        return self._find(key)

    def _bpf_update(self, key: bytes, value: bytes, flags: int) -> int:
        raise NotImplementedError

    def _bpf_delete(self, key: bytes) -> int:
        raise NotImplementedError


class ArrayMap(EmuMap):
    """BPF_MAP_TYPE_ARRAY / PERCPU_ARRAY: fixed elements, zero-initialised.

    Element buffers are created on first use and never replaced, so a pointer
    to an element stays valid for the life of the emulator (as in the kernel).
    Globals (.data, .rodata, .bss) are 1-entry arrays holding the section.
    """

    kind = "array"

    def __init__(self, spec: Any):
        super().__init__(spec)
        if self.key_size != 4:
            raise EmulationError(f"array map {self.name} has key size {self.key_size}, not 4")
        self._elems: dict[int, bytearray] = {}
        initial = getattr(spec, "initial", None)
        if initial is not None:
            data = bytes(initial)[: self.value_size]
            self.element(0)[: len(data)] = data

    def element(self, index: int) -> bytearray:
        buf = self._elems.get(index)
        if buf is None:
            buf = self._elems[index] = bytearray(self.value_size)
        return buf

    def _index(self, key: bytes) -> int:
        return int.from_bytes(key, "little")

    def _find(self, key: bytes) -> bytearray | None:
        idx = self._index(key)
        if idx >= self.max_entries:
            return None
        return self.element(idx)

    def _bpf_update(self, key: bytes, value: bytes, flags: int) -> int:
        if flags & ~BPF_F_LOCK > BPF_EXIST or flags & BPF_F_LOCK:
            return -EINVAL
        idx = self._index(key)
        if idx >= self.max_entries:
            return -E2BIG
        if flags == BPF_NOEXIST:
            return -EEXIST  # every element of an array exists
        self.element(idx)[:] = value
        return 0

    def _bpf_delete(self, key: bytes) -> int:
        return -EINVAL

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        zero = bytes(self.value_size)
        for idx in range(self.max_entries):
            buf = self._elems.get(idx)
            yield idx.to_bytes(4, "little"), zero if buf is None else bytes(buf)


class HashMap(EmuMap):
    """BPF_MAP_TYPE_HASH / PERCPU_HASH: at most max_entries keys (then E2BIG).

    An update of an existing key installs a new value buffer, as the kernel
    installs a new element: a pointer from an earlier lookup sees the old one.
    """

    kind = "hash"

    def __init__(self, spec: Any):
        super().__init__(spec)
        self._data: dict[bytes, bytearray] = self._new_table()

    def _new_table(self) -> dict[bytes, bytearray]:
        return {}

    def _find(self, key: bytes) -> bytearray | None:
        return self._data.get(key)

    def _bpf_update(self, key: bytes, value: bytes, flags: int) -> int:
        if flags > BPF_EXIST:
            return -EINVAL
        exists = key in self._data
        if flags == BPF_NOEXIST and exists:
            return -EEXIST
        if flags == BPF_EXIST and not exists:
            return -ENOENT
        if not exists and len(self._data) >= self.max_entries:
            err = self._make_room()
            if err:
                return err
        self._insert(key, bytearray(value))
        return 0

    def _make_room(self) -> int:
        return -E2BIG

    def _insert(self, key: bytes, buf: bytearray) -> None:
        self._data[key] = buf

    def _bpf_delete(self, key: bytes) -> int:
        if self._data.pop(key, None) is None:
            return -ENOENT
        return 0

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k, v in list(self._data.items()):
            yield k, bytes(v)

    def __len__(self) -> int:
        return len(self._data)


class LruHashMap(HashMap):
    """BPF_MAP_TYPE_LRU_HASH / LRU_PERCPU_HASH with exact LRU eviction.

    A program's lookup or update makes the key the most recently used; when
    the map is full, an update of a new key evicts the least recently used
    one.  (The kernel's LRU is approximate, per-CPU lists with a reference
    bit; exact LRU is the deterministic model of its intent.)  Lookups from
    user space (EmuMap.lookup) do not change the order, as in the kernel.
    """

    kind = "lru_hash"

    def _new_table(self) -> dict[bytes, bytearray]:
        return OrderedDict()

    def _bpf_lookup(self, key: bytes) -> bytearray | None:
        buf = self._data.get(key)
        if buf is not None:
            self._data.move_to_end(key)  # type: ignore[attr-defined]
        return buf

    def _make_room(self) -> int:
        if not self._data:
            return -E2BIG
        self._data.popitem(last=False)  # type: ignore[call-arg]
        return 0

    def _insert(self, key: bytes, buf: bytearray) -> None:
        self._data[key] = buf
        self._data.move_to_end(key)  # type: ignore[attr-defined]


class RingbufMap(EmuMap):
    """BPF_MAP_TYPE_RINGBUF, minimally: what a consumer would read.

    bpf_ringbuf_reserve hands out a record buffer (None when the ring has no
    room), bpf_ringbuf_submit appends it to `records`, bpf_ringbuf_discard
    drops it, bpf_ringbuf_output copies data in directly.  The room is the
    kernel's: max_entries bytes, each record taking an 8-byte header plus its
    size rounded up to 8, counted from reservation until a consumer reads it
    (`drain()`; nothing reads during a run, so a ring nobody drains fills
    up).  Flags (wake-up hints) change nothing here.  There are no keys:
    lookup/update/delete from user space are refused, as the kernel does.
    """

    kind = "ringbuf"

    def __init__(self, spec: Any):
        super().__init__(spec)
        self.records: list[bytes] = []
        self._used = 0  # bytes of the ring taken by records and open reservations
        self._open: dict[int, int] = {}  # id(reserved buffer) -> bytes it holds

    @staticmethod
    def _cost(size: int) -> int:
        return RINGBUF_HDR + (size + 7) // 8 * 8

    def drain(self) -> list[bytes]:
        """The submitted records, oldest first; their room is free again."""
        out, self.records = self.records, []
        self._used = sum(self._open.values())
        return out

    def _no_keys(self) -> EmulationError:
        return EmulationError(f"map {self.name} is a ring buffer: it has no keys "
                              "(read its records, or drain() them)")

    def lookup(self, key: bytes | bytearray | int) -> bytes | None:
        raise self._no_keys()

    def update(self, key: bytes | bytearray | int, value: bytes | bytearray | int,
               flags: int = BPF_ANY) -> None:
        raise self._no_keys()

    def delete(self, key: bytes | bytearray | int) -> None:
        raise self._no_keys()

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(record index as 4 bytes, record) for each submitted record."""
        for i, rec in enumerate(list(self.records)):
            yield i.to_bytes(4, "little"), rec

    # --- helper view ------------------------------------------------------------

    def _find(self, key: bytes) -> bytearray | None:
        return None

    def _bpf_update(self, key: bytes, value: bytes, flags: int) -> int:
        return -EINVAL

    def _bpf_delete(self, key: bytes) -> int:
        return -EINVAL

    def _reserve(self, size: int) -> bytearray | None:
        """A record buffer of SIZE bytes (zeroed), or None: no room, or too big."""
        cost = self._cost(size)
        if size > self.max_entries - RINGBUF_HDR or self._used + cost > self.max_entries:
            return None
        buf = bytearray(size)
        self._open[id(buf)] = cost
        self._used += cost
        return buf

    def _submit(self, buf: bytearray) -> None:
        if self._open.pop(id(buf), None) is not None:
            self.records.append(bytes(buf))

    def _discard(self, buf: bytearray) -> None:
        cost = self._open.pop(id(buf), None)
        if cost is not None:
            self._used -= cost

    def _output(self, data: bytes) -> int:
        buf = self._reserve(len(data))
        if buf is None:
            return -EAGAIN
        buf[:] = data
        self._submit(buf)
        return 0
