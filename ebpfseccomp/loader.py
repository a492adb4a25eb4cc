"""Load a seccomp program through libbpf: `load(path) -> Program`.

    with load("filter.o", maps={"allowed": {"openat": 1}}) as prog:
        prog.maps["allowed"].update("getppid", 1)
        prog.attach(["tsync"])

The steps, each with its own clear error:

1. read the object (elf.load_object) and choose the program;
2. check it statically (analysis.checker.check, when check=True) and predict the
   kernel's answer for this loader (privilege.predict): refuse early with a
   PrivilegeError naming the helper or map access, the rule and the fix;
3. open it with libbpf, set the program type to seccomp (33: libbpf 1.1 does
   not know the section name), give the verifier a log buffer, apply the
   preloaded map contents, load;
4. when the kernel still refuses: a KernelError with the errno's meaning and
   the verifier log's relevant lines, mapped to instruction and source line;
   EINVAL with an empty log on a kernel that does not know the flag: "this
   kernel lacks the eBPF seccomp patch".

The resulting Program owns duplicates of the program and map fds; libbpf's
object is closed before load() returns, also on every error path.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from . import contract, insn
from . import sys as _sys
from .analysis.checker import check as static_check
from .attach import LACKS_PATCH, attach, extended_flag_supported
from .btf import Btf
from .btf import decode as btf_decode
from .contract import Tier
from .errors import EbpfSeccompError, KernelError, ObjectError, PrivilegeError, UsageError
from .privilege import Credentials, Needs, Prediction, SystemPolicy, predict

PERCPU_TYPES = frozenset({5, 6, 10})  # percpu_hash, percpu_array, lru_percpu_hash

KeyLike = int | str | bytes
ValueLike = int | str | bytes


# --- values for map keys and values --------------------------------------------------


def encode(value: KeyLike, size: int, *, what: str = "value", arch: str | None = None) -> bytes:
    """VALUE as SIZE bytes for a map key or value.

    int: little-endian (negative: two's complement); bytes: as they are;
    str: a decimal or 0x integer, a syscall name (its number on ARCH, the
    running machine by default), "hex:00ff.." raw bytes, or "str:TEXT" a
    NUL-padded string.
    """
    if isinstance(value, bytes):
        if len(value) != size:
            raise UsageError(f"{what}: {len(value)} bytes given, the map needs {size}")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("hex:"):
            try:
                raw = bytes.fromhex(text[4:])
            except ValueError:
                raise UsageError(f"{what}: {value!r} is not hex digits") from None
            return encode(raw, size, what=what)
        if text.startswith("str:"):
            raw = text[4:].encode()
            if len(raw) > size:
                raise UsageError(f"{what}: {value!r} is {len(raw)} bytes, the map holds {size}")
            return raw.ljust(size, b"\0")
        try:
            number = int(text, 0)
        except ValueError:
            from . import syscalls

            try:
                number = syscalls.nr(text, arch or _native_arch())
            except EbpfSeccompError:
                raise UsageError(
                    f"{what}: {value!r} is neither a number, a syscall name, hex:BYTES "
                    f"nor str:TEXT") from None
        return encode(number, size, what=what)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{what}: {value!r}: give an int, bytes or a string")
    if size > 8 and value >= 0:
        return value.to_bytes(size, "little")
    lo, hi = -(1 << (8 * size - 1)), (1 << (8 * size)) - 1
    if not lo <= value <= hi:
        raise UsageError(f"{what}: {value} does not fit in {size} bytes")
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _native_arch() -> str:
    return {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
        os.uname().machine, "x86_64")


def parse_map_assignment(text: str) -> tuple[str, str, str]:
    """"NAME:KEY=VALUE" -> (NAME, KEY, VALUE) as strings (encoded later, per map)."""
    name, sep, rest = text.partition(":")
    key, sep2, value = rest.partition("=")
    if not sep or not sep2 or not name or not key.strip() or not value.strip():
        raise UsageError(f"--map {text!r}: expected NAME:KEY=VALUE, e.g. allowed:openat=1 "
                         f"or counts:0=0x10 or prefix:0=str:/tmp/")
    return name.strip(), key.strip(), value.strip()


def group_assignments(items: Iterable[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        name, key, value = parse_map_assignment(item)
        out.setdefault(name, {})[key] = value
    return out


# --- maps ---------------------------------------------------------------------------


@dataclass
class Map:
    """A kernel map, read and written through its fd.

    Raw access: lookup/update/delete/keys/items (bytes), lookup_int and
    items_int.  Typed access, as a bcc table answers: `m[key]` (KeyError if
    absent), `m[key] = value`, `del m[key]`, `key in m`, `m.get(key)` and
    items_decoded(), with keys and values decoded through the object's BTF
    (btf.decode: ints, structs as dicts, char arrays as text; per-CPU maps
    a list with one value per CPU).  Without BTF a key or value of 1, 2, 4
    or 8 bytes is an unsigned int, anything else "hex:...".  Keys are given
    as for lookup (int, syscall name, bytes...).
    """

    name: str
    fd: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    is_global: bool = False
    btf: Btf | None = field(default=None, repr=False, compare=False)
    key_type: int = 0  # BTF ids of the key and value types (0: unknown)
    value_type: int = 0

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_TYPES

    @property
    def _slot(self) -> int:
        return (self.value_size + 7) // 8 * 8

    @property
    def _buf_size(self) -> int:
        return self._slot * _sys.possible_cpus() if self.percpu else self.value_size

    def key(self, key: KeyLike) -> bytes:
        return encode(key, self.key_size, what=f"key of map '{self.name}'")

    def value(self, value: ValueLike) -> bytes:
        raw = encode(value, self.value_size, what=f"value of map '{self.name}'")
        if self.percpu:
            return raw.ljust(self._slot, b"\0") * _sys.possible_cpus()
        return raw

    def lookup(self, key: KeyLike) -> bytes | None:
        """The value under KEY (per-CPU maps: every CPU's slot, concatenated)."""
        return _sys.map_lookup(self.fd, self.key(key), self._buf_size)

    def lookup_int(self, key: KeyLike) -> int | None:
        """The value as an unsigned little-endian int (per-CPU maps: summed)."""
        raw = self.lookup(key)
        if raw is None:
            return None
        if self.percpu:
            return sum(int.from_bytes(raw[i:i + self.value_size], "little")
                       for i in range(0, len(raw), self._slot))
        return int.from_bytes(raw, "little")

    def update(self, key: KeyLike, value: ValueLike, flags: int = _sys.BPF_ANY) -> None:
        try:
            _sys.map_update(self.fd, self.key(key), self.value(value), flags)
        except OSError as exc:
            raise KernelError(self._why(exc, "update")) from None

    def delete(self, key: KeyLike) -> bool:
        try:
            return _sys.map_delete(self.fd, self.key(key))
        except OSError as exc:
            raise KernelError(self._why(exc, "delete")) from None

    def keys(self) -> Iterator[bytes]:
        k = _sys.map_next_key(self.fd, None, self.key_size)
        seen = 0
        while k is not None and seen <= max(self.max_entries, 1):
            yield k
            seen += 1
            k = _sys.map_next_key(self.fd, k, self.key_size)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in self.keys():
            v = _sys.map_lookup(self.fd, k, self._buf_size)
            if v is not None:
                yield k, v

    def items_int(self) -> Iterator[tuple[int, int]]:
        for k, _ in self.items():
            v = self.lookup_int(k)
            if v is not None:
                yield int.from_bytes(k, "little"), v

    # --- typed access (BTF) -------------------------------------------------------

    def decode_key(self, raw: bytes) -> Any:
        """RAW key bytes as the key's BTF type describes them."""
        return self._decode(self.key_type, raw)

    def decode_value(self, raw: bytes) -> Any:
        """RAW value bytes (as lookup returns them) as the value's BTF type
        describes them; per-CPU maps: a list, one value per CPU."""
        if self.percpu:
            return [self._decode(self.value_type, raw[i:i + self.value_size])
                    for i in range(0, len(raw), self._slot)]
        return self._decode(self.value_type, raw)

    def _decode(self, tid: int, raw: bytes) -> Any:
        if self.btf is not None and tid:
            return btf_decode(self.btf, tid, raw)
        if len(raw) in (1, 2, 4, 8):
            return int.from_bytes(raw, "little")
        return "hex:" + raw.hex()

    def __getitem__(self, key: KeyLike) -> Any:
        raw = self.lookup(key)
        if raw is None:
            raise KeyError(key)
        return self.decode_value(raw)

    def get(self, key: KeyLike, default: Any = None) -> Any:
        raw = self.lookup(key)
        return default if raw is None else self.decode_value(raw)

    def __setitem__(self, key: KeyLike, value: ValueLike) -> None:
        self.update(key, value)

    def __delitem__(self, key: KeyLike) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (int, str, bytes)):
            return False
        return self.lookup(key) is not None

    def items_decoded(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs decoded with BTF, as bcc's Table.items() gives them."""
        for k, v in self.items():
            yield self.decode_key(k), self.decode_value(v)

    def _why(self, exc: OSError, op: str) -> str:
        err = exc.errno or 0
        base = f"cannot {op} map '{self.name}': {os.strerror(err)}"
        if err == _errno.E2BIG:
            return f"{base} (the map is full: {self.max_entries} entries)"
        if err in (_errno.EPERM, _errno.EACCES):
            return f"{base} (the map is read-only here: opened read-only, or .rodata)"
        if err == _errno.EINVAL and self.type == contract.BPF_MAP_TYPE_ARRAY:
            return f"{base} (array maps take keys 0..{self.max_entries - 1} and cannot delete)"
        return base

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- programs --------------------------------------------------------------------------


@dataclass
class Program:
    """A loaded seccomp program: its fd, maps, and the tier it was loaded with.

    tier is the tier the kernel granted (None for a program opened from a pin
    or an fd, whose loader is unknown); tier_confirmed is True when the load
    itself proved it (the program uses helpers or maps, so the kernel granted
    at least EXTENDED).
    """

    fd: int
    name: str
    tier: Tier | None = None
    needed: Tier | None = None
    prediction: Prediction | None = None
    tier_confirmed: bool = False
    maps: dict[str, Map] = field(default_factory=dict)
    path: str | None = None
    pinned: str | None = None
    log: str = ""
    messages: list[str] = field(default_factory=list)

    def fileno(self) -> int:
        return self.fd

    def attach(self, flags: Iterable[str | int] | int = (), *,
               set_no_new_privs: bool = True) -> int:
        """seccomp(2) with this program on the calling thread; see attach.attach."""
        if self.fd < 0:
            raise UsageError(f"program '{self.name}' is closed")
        return attach(self.fd, flags, set_no_new_privs=set_no_new_privs)

    def pin(self, path: str | os.PathLike[str], *, mode: int | None = None,
            maps: bool = True) -> str:
        """Pin the program at PATH in bpffs (maps under PATH_maps/), chmod to MODE."""
        p = os.fspath(path)
        _check_bpffs(p)
        try:
            _sys.obj_pin(self.fd, p)
        except OSError as exc:
            raise KernelError(_pin_error(exc, p)) from None
        created = [p]
        try:
            if mode is not None:
                os.chmod(p, mode)
            if maps and self.maps:
                d = maps_dir(p)
                os.mkdir(d)
                created.append(d)
                if mode is not None:
                    os.chmod(d, _dir_mode(mode))
                for name, m in self.maps.items():
                    mp = os.path.join(d, pin_name(name))
                    _sys.obj_pin(m.fd, mp)
                    created.append(mp)
        except OSError as exc:
            for c in reversed(created):
                _remove(c)
            raise KernelError(_pin_error(exc, p)) from None
        self.pinned = p
        return p

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Program:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def summary(self) -> str:
        tier = self.tier.name.lower() if self.tier is not None else "unknown (not loaded here)"
        maps = ", ".join(f"{n} ({contract.MAP_TYPES.get(m.type, m.type)}, {m.max_entries})"
                         for n, m in self.maps.items()) or "none"
        return f"program '{self.name}' fd {self.fd}, tier {tier}, maps: {maps}"


def _dir_mode(mode: int) -> int:
    m = mode | stat.S_IRUSR | stat.S_IWUSR | stat.S_IXUSR
    if mode & stat.S_IRGRP:
        m |= stat.S_IXGRP
    if mode & stat.S_IROTH:
        m |= stat.S_IXOTH
    return m


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def maps_dir(pin: str) -> str:
    """Where the maps of the program pinned at PIN are pinned (bpffs forbids '.')."""
    return pin + "_maps"


def pin_name(map_name: str) -> str:
    """A map's name in bpffs: '.' is reserved there, so ".data" becomes "_data"."""
    return map_name.replace(".", "_")


def unpin_name(entry: str) -> str:
    for sec in ("data", "rodata", "bss"):
        if entry == "_" + sec or entry.startswith(f"_{sec}_"):
            return "." + entry[1:].replace("_", ".", 1) if entry != "_" + sec else "." + sec
    return entry


def _check_bpffs(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path)) or "/"
    if not os.path.isdir(parent):
        raise UsageError(f"cannot pin at {path}: directory {parent} does not exist",
                         hint="pins live in a bpf file system, e.g. /sys/fs/bpf "
                              "(mount -t bpf bpf /sys/fs/bpf)")
    if "." in os.path.basename(path):
        raise UsageError(f"cannot pin at {path}: names in a bpf file system may not contain "
                         f"'.'", hint="e.g. /sys/fs/bpf/allowlist")
    if not is_bpffs(parent):
        raise UsageError(f"cannot pin at {path}: {parent} is not in a bpf file system",
                         hint="pin under /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")


def _pin_error(exc: OSError, path: str) -> str:
    err = exc.errno or 0
    base = f"cannot pin at {path}: {os.strerror(err)}"
    if err == _errno.EEXIST:
        return f"{base} (something is pinned there already: rm it first)"
    if err in (_errno.EPERM, _errno.EINVAL):
        return f"{base} (pins must be inside a bpf file system such as /sys/fs/bpf)"
    if err == _errno.EACCES:
        return f"{base} (no write permission on the directory)"
    return base


# --- verifier logs ------------------------------------------------------------------

_INSN_LINE = re.compile(r"^(\d+): \(([0-9a-f]{2})\)")
_ERRNO_WORDS: dict[int, str] = {
    _errno.EINVAL: "EINVAL: the verifier rejected the program",
    _errno.EACCES: "EACCES: the verifier refused an access (maps or globals without the "
                   "extended tier, or a context access outside struct seccomp_data)",
    _errno.EPERM: "EPERM: not permitted for this loader (privilege or sysctl)",
    _errno.E2BIG: "E2BIG: the program is too large for this loader",
    _errno.ENOSPC: "ENOSPC: the verifier log did not fit",
    _errno.ENOMEM: "ENOMEM: out of memory (or RLIMIT_MEMLOCK)",
    _errno.EFAULT: "EFAULT: bad address passed to the kernel",
}


def relevant_log(log: str, lines: Mapping[int, object] | None = None, *,
                 context: int = 6) -> tuple[list[str], int | None]:
    """The verifier log's last instructions and its error line, with source lines.

    Returns (lines, index of the failing instruction or None).
    """
    rows = [r for r in log.splitlines() if r.strip()]
    if not rows:
        return [], None
    # the message the verifier ends with sits after the last instruction line
    tail_start = len(rows)
    for i in range(len(rows) - 1, -1, -1):
        if _INSN_LINE.match(rows[i]):
            tail_start = i
            break
    failing: int | None = None
    if tail_start < len(rows):
        m = _INSN_LINE.match(rows[tail_start])
        failing = int(m.group(1)) if m else None
    start = max(0, tail_start - context)
    shown = [r for r in rows[start:] if not r.startswith("processed ")
             and not r.startswith("verification time")]
    out = []
    for r in shown:
        out.append("    " + r)
        m = _INSN_LINE.match(r)
        if m and lines is not None:
            src = lines.get(int(m.group(1)))
            if src is not None and not any(str(src) in s for s in out[-3:]):
                text = getattr(src, "text", "")
                out.append(f"      ^ {src}: {text.strip()}" if text else f"      ^ {src}")
    if failing is None:
        # some errors carry "insn N" or "func#N" instead
        for r in reversed(rows):
            m = re.search(r"\binsn (\d+)\b", r)
            if m:
                failing = int(m.group(1))
                break
    return out, failing


# --- load ----------------------------------------------------------------------------

_LOG_SIZES = (1 << 22, 1 << 26)


def load(
    path: str | os.PathLike[str],
    program: str | None = None,
    *,
    maps: Mapping[str, Mapping[KeyLike, ValueLike]] | None = None,
    pin: str | os.PathLike[str] | None = None,
    pin_mode: int | None = None,
    log_level: int = 1,
    creds: Credentials | None = None,
    policy: SystemPolicy | None = None,
    check: bool = True,
) -> Program:
    """Load PROGRAM (the only one if None) of the object at PATH; see the module doc.

    maps preloads {map name: {key: value}} (names as in the source; globals as
    ".data"/".rodata"/".bss"), before the load for global sections (so
    .rodata constants take effect) and after it for other maps.  creds and
    policy default to the calling process and the running system; check=False
    skips the static check and the prediction and asks the kernel directly.
    """
    from . import elf

    spath = os.fspath(path)
    if not os.path.exists(spath):
        raise ObjectError("no such file", path=spath,
                          hint="build one with `ebpfseccomp build FILTER.c -o FILTER.o`")
    obj = elf.load_object(spath)
    prog = obj.program(program)
    needs = Needs.from_program(obj, prog)
    for name, content in (maps or {}).items():
        spec = obj.maps.get(name)
        if spec is None:
            raise UsageError(f"--map {name}: the object has no map {name!r}",
                             path=spath, hint=f"maps: {', '.join(obj.maps) or 'none'}")
        if spec.is_global:
            patch_global(name, spec.initial or bytes(spec.value_size), content)
            continue
        for k, v in content.items():  # bad keys and values stop us before bpf(2)
            encode(k, spec.key_size, what=f"key of map '{name}'")
            encode(v, spec.value_size, what=f"value of map '{name}'")

    if pin is not None:
        _check_bpffs(os.fspath(pin))
    creds = creds or Credentials.current()
    policy = policy or SystemPolicy.current()
    if check:
        needs, prediction = preflight(obj, prog, spath, creds, policy)
    else:
        prediction = predict(needs, creds, policy)

    result = _load_with_libbpf(spath, prog, obj, needs, maps or {}, log_level)
    result.prediction = prediction
    result.tier = prediction.tier
    result.needed = needs.tier
    result.tier_confirmed = needs.tier >= Tier.EXTENDED and prediction.tier >= needs.tier
    if pin is not None:
        try:
            result.pin(pin, mode=pin_mode)
        except BaseException:
            result.close()
            raise
    return result


def preflight(obj: object, prog: object, path: str, creds: Credentials,
              policy: SystemPolicy) -> tuple[Needs, Prediction]:
    """Everything load() decides before bpf(2), for a loader with CREDS under POLICY.

    The static check (the checker's problems, and the unprivileged
    verifier's when CREDS lack CAP_BPF), then privilege.predict on
    Needs.from_program.  Raises ObjectError for an object no loader could
    load and PrivilegeError (with .prediction) for one beyond CREDS; returns
    what the object needs and the predicted tier.  The loader daemon judges
    a client's submitted object with this same function.
    """
    needs = Needs.from_program(obj, prog)
    prediction = predict(needs, creds, policy)
    _static_check(obj, prog, path, creds, prediction.tier)
    if not prediction.ok:
        raise _predicted_refusal(prediction, prog.name, path)  # type: ignore[attr-defined]
    return needs, prediction


#: Checker problem codes that privilege.predict explains itself (with the fix).
PREDICTED_CODES = frozenset({"loop", "subprog", "too-big", "tracing", "helper-tier"})


def _predicted_refusal(prediction: Prediction, name: str, path: str) -> PrivilegeError:
    code = _errno.errorcode.get(prediction.errno or 0, "?")
    exc = PrivilegeError(f"program '{name}' would be refused by the kernel ({code}): "
                         + " ".join(prediction.reasons), path=path)
    exc.errno = prediction.errno  # type: ignore[attr-defined]
    exc.prediction = prediction  # type: ignore[attr-defined]
    return exc


#: What the kernel's unprivileged verifier rules refuse that CAP_PERFMON would
#: allow; below the TRACING tier a seccomp program gets those rules whatever
#: the loader's capabilities (kernel-patches 0005).
PERFMON_ONLY_CODES = frozenset({"uninit-stack", "ptr-leak", "ptr-return", "ptr-compare"})


def _static_check(obj: object, prog: object, path: str, creds: Credentials,
                  tier: Tier = Tier.TRACING) -> None:
    """The checker's problems stop the load before bpf(2).

    Problems under the privileged rules are the object's fault (ObjectError).
    The verifier's unprivileged rules apply to a loader without CAP_BPF, and
    (for the pointer and stack rules, PERFMON_ONLY_CODES) to any program
    below the TRACING tier; what they refuse further is a PrivilegeError,
    unless privilege.predict already explains it (PREDICTED_CODES).
    """
    name = getattr(prog, "name", None)
    report = static_check(obj, name)  # type: ignore[arg-type]
    fatal = list(report.problems)
    if fatal:
        text = "; ".join(str(p) for p in fatal[:8])
        more = f" (and {len(fatal) - 8} more)" if len(fatal) > 8 else ""
        raise ObjectError(f"the kernel's verifier would refuse program '{name}': {text}{more}",
                          path=path, hint="`ebpfseccomp check` lists every problem")
    if creds.bpf_capable and tier == Tier.TRACING:
        return  # the privileged rules, already checked
    ureport = static_check(obj, name, unprivileged=True)  # type: ignore[arg-type]
    refused = [p for p in ureport.problems
               if (p.code in PERFMON_ONLY_CODES if creds.bpf_capable else
                   p.code not in PREDICTED_CODES and "CAP_PERFMON" not in p.message)]
    if not refused:
        return
    text = "; ".join(str(p) for p in refused[:8])
    if creds.bpf_capable:
        raise PrivilegeError(
            f"program '{name}' would get tier {tier.name.lower()}, where the verifier "
            f"applies its unprivileged rules whatever this loader's CAP_PERFMON, and "
            f"refuses: {text}", path=path,
            hint="initialise what the program reads and keep pointers out of maps")
    raise PrivilegeError(f"without CAP_BPF the verifier would refuse program '{name}': "
                         f"{text}", path=path,
                         hint="load with CAP_BPF, or change the program as suggested")


def _freeze_read_only(result: Program) -> None:
    """Freeze every map the program may only read (BPF_F_RDONLY_PROG), now
    that its contents are in: from here on neither the program (the verifier
    refuses its writes) nor anyone holding an fd of it (BPF_MAP_FREEZE) can
    change it, so a filter's table cannot be loosened after it is handed out.
    libbpf freezes .rodata itself."""
    for m in result.maps.values():
        if m.flags & _sys.BPF_F_RDONLY_PROG and m.name != ".rodata":
            try:
                _sys.map_freeze(m.fd)
            except OSError as exc:
                raise KernelError(f"cannot freeze read-only map '{m.name}': "
                                  f"{os.strerror(exc.errno or 0)}") from None


def _load_with_libbpf(path: str, prog: object, obj: object, needs: Needs,
                      maps: Mapping[str, Mapping[KeyLike, ValueLike]],
                      log_level: int) -> Program:
    name: str = prog.name  # type: ignore[attr-defined]
    lines = getattr(prog, "lines", {})
    specs = getattr(obj, "maps", {})
    _sys.prog_handler("seccomp+", contract.BPF_PROG_TYPE_SECCOMP)
    restore = _helper_restorer(name, getattr(prog, "insns", []), path)
    for size in _LOG_SIZES:
        with _sys.libbpf_messages() as msgs:
            try:
                handle = _sys.object_open(path)
            except OSError as exc:
                raise ObjectError(f"libbpf cannot open the object: {os.strerror(exc.errno or 0)}",
                                  path=path) from None
            try:
                target = None
                for p in _sys.object_programs(handle):
                    if _sys.program_name(p) == name:
                        target = p
                    else:
                        _sys.program_set_autoload(p, False)
                if target is None:
                    raise ObjectError(f"libbpf finds no program named {name!r}", path=path)
                _sys.program_set_type(target, contract.BPF_PROG_TYPE_SECCOMP)
                log = _sys.LogBuffer(size) if log_level else None
                _sys.program_set_log(target, log, log_level)
                post: list[tuple[str, Mapping[KeyLike, ValueLike]]] = []
                for mname in specs:
                    # ".rodata.init.<map>" only carries <map>'s first entries (maps.h):
                    # the program never reads it, so the kernel needs no map for it
                    if mname.startswith(MAP_INIT_PREFIX):
                        m = _sys.object_find_map(handle, mname)
                        if m is not None:
                            _sys.map_set_autocreate(m, False)
                for mname, content in maps.items():
                    spec = specs.get(mname)
                    m = _sys.object_find_map(handle, mname)
                    if m is None:
                        raise UsageError(f"--map {mname}: libbpf finds no such map", path=path)
                    initial = _sys.map_initial_value(m)
                    if spec is not None and spec.is_global and initial is not None:
                        _sys.map_set_initial_value(m, patch_global(mname, initial, content))
                    else:
                        post.append((mname, content))
                try:
                    with _sys.prepare_hook(restore):
                        _sys.object_load(handle)
                except OSError as exc:
                    text = log.text() if log is not None else ""
                    if exc.errno == _errno.ENOSPC and size != _LOG_SIZES[-1]:
                        continue
                    raise _load_error(exc.errno or 0, text, msgs, name, path, lines,
                                      needs) from None
                result = _adopt(handle, target, name, path, specs)
                result.log = log.text() if log is not None else ""
                result.messages = [t.rstrip() for _, t in msgs]
            finally:
                _sys.object_close(handle)
        try:
            _apply_map_init(result, specs, path)
            for mname, content in post:
                target_map = result.maps[mname]
                for k, v in content.items():
                    target_map.update(k, v)
            _freeze_read_only(result)
        except BaseException:
            result.close()
            raise
        return result
    raise AssertionError("unreachable")


# libbpf 1.1 "sanitizes" programs for kernels where its feature probe for
# bpf_probe_read_{kernel,user}[_str] fails, rewriting those calls into the
# old bpf_probe_read[_str].  The probe loads a tracepoint program, so it
# fails on kernels without CONFIG_BPF_EVENTS and for loaders without
# CAP_PERFMON, and seccomp programs may call only the new helpers: the
# rewrite would turn a loadable filter into one the verifier refuses.
_LIBBPF_REWRITES = {
    4: (112, 113, 4),  # probe_read <- probe_read_user, probe_read_kernel
    45: (114, 115, 45),  # probe_read_str <- probe_read_user_str, probe_read_kernel_str
}
_HELPER_CALL = insn.BPF_JMP | insn.BPF_CALL  # with src_reg 0: a helper, not a subprogram


def _helper_restorer(name: str, original: list[Any], path: str) -> Callable[[int], None]:
    """A prepare-load hook giving back the helper ids the object was built with."""
    used = {ins.imm for ins in original if ins.is_helper_call}

    def restore(handle: int) -> None:
        if _sys.program_name(handle) != name:
            return
        insns = _sys.program_insns(handle)
        for i, ins in enumerate(insns):
            if ins.code != _HELPER_CALL or ins.src != 0 or ins.imm not in _LIBBPF_REWRITES:
                continue
            choices = [h for h in _LIBBPF_REWRITES[ins.imm] if h in used]
            if len(choices) > 1 and i < len(original) and original[i].is_helper_call:
                choices = [original[i].imm] if original[i].imm in choices else []
            if len(choices) != 1:
                raise ObjectError(
                    f"program '{name}' instruction {i}: libbpf rewrote a call to helper "
                    f"#{ins.imm} and the original helper cannot be told apart",
                    path=path, hint="call only one of bpf_probe_read_user(_str) and "
                    "bpf_probe_read_kernel(_str) in one program")
            ins.imm = choices[0]

    return restore


MAP_INIT_PREFIX = ".rodata.init."


def _apply_map_init(prog: Program, specs: Mapping[str, object], path: str) -> None:
    """Write the entries of every ".rodata.init.<map>" section into <map>."""
    for name, spec in specs.items():
        if not name.startswith(MAP_INIT_PREFIX):
            continue
        target = prog.maps.get(name[len(MAP_INIT_PREFIX):])
        if target is None or target.is_global:
            raise ObjectError(f"section {name} initialises map "
                              f"{name[len(MAP_INIT_PREFIX):]!r}, which the object does not "
                              f"define", path=path)
        data = bytes(getattr(spec, "initial", None) or b"")
        step = target.key_size + target.value_size
        if len(data) % step:
            raise ObjectError(f"section {name} is {len(data)} bytes, not a multiple of the "
                              f"{step}-byte key+value entries of map '{target.name}'", path=path)
        for off in range(0, len(data), step):
            target.update(data[off:off + target.key_size], data[off + target.key_size:off + step])


def patch_global(name: str, initial: bytes, content: Mapping[KeyLike, ValueLike]) -> bytes:
    """Global sections are one-entry arrays: key 0 (or an "offset" int) -> bytes."""
    data = bytearray(initial)
    for k, v in content.items():
        try:
            off = int(k, 0) if isinstance(k, str) else int.from_bytes(k, "little") if \
                isinstance(k, bytes) else k
        except ValueError:
            raise UsageError(f"--map {name}:{k}: the key of a global section is a byte "
                             f"offset, not {k!r}", hint=f"e.g. --map {name}:0=5") from None
        if not 0 <= off < len(data):
            raise UsageError(f"--map {name}:{k}: offset {off} is outside the "
                             f"{len(data)}-byte section",
                             hint=f"offsets of {name} are 0..{len(data) - 1}"
                             if data else f"{name} has no bytes to set")
        if isinstance(v, bytes):
            raw = v
        elif isinstance(v, str) and (v.startswith("hex:") or v.startswith("str:")):
            raw = encode(v, len(v[4:]) if v.startswith("str:") else len(v[4:]) // 2)
        else:
            raw = encode(v, 4 if len(data) - off >= 4 else len(data) - off,
                         what=f"value for {name}+{off}")
        if off < 0 or off + len(raw) > len(data):
            raise UsageError(f"--map {name}:{k}: offset {off} + {len(raw)} bytes is outside "
                             f"the {len(data)}-byte section")
        data[off:off + len(raw)] = raw
    return bytes(data)


def _adopt(handle: int, target: int, name: str, path: str, specs: Mapping[str, object]) -> Program:
    """Duplicate the program's and maps' fds so the libbpf object can be closed."""
    fd = os.dup(_sys.program_fd(target))
    result = Program(fd=fd, name=name, path=path)
    try:
        for m in _sys.object_maps(handle):
            d = _sys.map_describe(m)
            mfd = _sys.map_fd(m)
            label = _elf_name(d.name, specs)
            if mfd < 0 or label.startswith(MAP_INIT_PREFIX):
                continue
            spec = specs.get(label)
            result.maps[label] = Map(label, os.dup(mfd), d.type, d.key_size, d.value_size,
                                     d.max_entries, d.flags,
                                     bool(getattr(spec, "is_global", False)),
                                     btf=getattr(spec, "btf", None),
                                     key_type=int(getattr(spec, "key_type", 0) or 0),
                                     value_type=int(getattr(spec, "value_type", 0) or 0))
    except BaseException:
        result.close()
        raise
    return result


def _elf_name(libbpf_name: str, specs: Mapping[str, object]) -> str:
    if libbpf_name in specs:
        return libbpf_name
    for name, spec in specs.items():
        if getattr(spec, "is_global", False) and libbpf_name.endswith(name[:15]):
            return name
    return libbpf_name


def _load_error(err: int, log: str, msgs: list[tuple[int, str]], name: str, path: str,
                lines: Mapping[int, object], needs: Needs) -> KernelError:
    exc = _load_error_text(err, log, msgs, name, path, lines, needs)
    exc.errno = err  # type: ignore[attr-defined]  # the kernel's answer, for tests and callers
    exc.log = log  # type: ignore[attr-defined]
    return exc


def _load_error_text(err: int, log: str, msgs: list[tuple[int, str]], name: str, path: str,
                     lines: Mapping[int, object], needs: Needs) -> KernelError:
    words = _ERRNO_WORDS.get(err, f"{_errno.errorcode.get(err, err)}: {os.strerror(err)}")
    failed_map = next((t.strip() for _, t in msgs if "failed to create" in t
                       or "failed to create map" in t), None)
    if err == _errno.EINVAL and not log.strip() and failed_map is None:
        if not extended_flag_supported():
            return KernelError(f"cannot load program '{name}': {LACKS_PATCH}", path=path)
    if failed_map is not None:
        detail = failed_map.removeprefix("libbpf: ")
        extra = ""
        if err == _errno.EPERM:
            extra = (" (creating maps needs CAP_BPF when kernel.unprivileged_bpf_disabled is "
                     "not 0, and always for some map types)")
        return _kernel_or_priv(err, f"cannot load program '{name}': {detail}{extra}", path)
    if err == _errno.EPERM and not log.strip():
        return PrivilegeError(
            f"cannot load program '{name}': {words}. Loading BPF programs needs CAP_BPF (or "
            f"CAP_SYS_ADMIN) unless kernel.unprivileged_bpf_disabled=0; an unprivileged user "
            f"can attach a program an administrator pinned (ebpfseccomp run --pinned PATH) "
            f"or one from the loader daemon (--daemon NAME)", path=path)
    shown, failing = relevant_log(log, lines)
    where = ""
    if failing is not None:
        src = lines.get(failing)
        where = f" at instruction {failing}" + (f" ({src})" if src is not None else "")
    body = "\n".join(shown) if shown else "    (the kernel wrote no verifier log)"
    return _kernel_or_priv(err, f"the kernel refused program '{name}'{where}: {words}.\n"
                                f"verifier log (last lines):\n{body}", path)


def _kernel_or_priv(err: int, message: str, path: str) -> KernelError:
    if err in (_errno.EPERM, _errno.EACCES):
        return PrivilegeError(message, path=path)
    return KernelError(message, path=path)


# --- programs from pins and fds ---------------------------------------------------------


def open_pinned(path: str | os.PathLike[str]) -> Program:
    """Open a program pinned in bpffs (read-only is enough: it only gets attached)."""
    p = os.fspath(path)
    fd = _open_pin(p, "program")
    try:
        prog = from_fd(fd, path=p)
    except BaseException:
        os.close(fd)
        raise
    prog.pinned = p
    d = maps_dir(p)
    if os.path.isdir(d):
        try:
            for entry in sorted(os.listdir(d)):
                mfd = _open_pin(os.path.join(d, entry), "map")
                try:
                    info = _sys.map_info(mfd)
                except OSError:
                    os.close(mfd)
                    continue
                name = unpin_name(entry)
                prog.maps[name] = Map(name, mfd, info.type, info.key_size, info.value_size,
                                      info.max_entries, info.flags)
        except (OSError, EbpfSeccompError):
            pass  # maps are a convenience; the program is what gets attached
    return prog


def _open_pin(path: str, what: str) -> int:
    try:
        return _sys.obj_get(path)
    except OSError as exc:
        if exc.errno == _errno.EACCES:
            try:
                return _sys.obj_get(path, _sys.BPF_F_RDONLY)
            except OSError as exc2:
                exc = exc2
        err = exc.errno or 0
        base = f"cannot open pinned {what}: {os.strerror(err)}"
        if err == _errno.ENOENT:
            base += " (nothing is pinned there; an administrator pins with `ebpfseccomp load "\
                    "OBJ.o --pin PATH --mode 0644`)"
        elif err == _errno.EACCES:
            base += " (the pin's file mode or a directory on the way does not let you read it)"
        elif err == _errno.EPERM:
            base += " (not a file in a bpf file system?)"
        raise KernelError(base, path=path) from None


def from_fd(fd: int, *, name: str | None = None, path: str | None = None) -> Program:
    """Wrap a program fd (from a pin, the daemon, SCM_RIGHTS); checks its type.

    The Program takes ownership of FD.
    """
    try:
        info = _sys.prog_info(fd)
    except OSError:
        raise ObjectError(f"fd {fd} is not a BPF program", path=path) from None
    if info.type != contract.BPF_PROG_TYPE_SECCOMP:
        raise ObjectError(f"a BPF program of type {info.type}, not a seccomp program "
                          f"(type {contract.BPF_PROG_TYPE_SECCOMP})", path=path)
    return Program(fd=fd, name=name or info.name or "?", path=path)


def is_bpffs(path: str) -> bool:
    """Is PATH (a directory, or the directory that would hold it) on a bpf file system?"""
    real = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1]
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        return False
    return fstype == "bpf"


def default_pin_dir() -> Path:
    return Path("/sys/fs/bpf")
