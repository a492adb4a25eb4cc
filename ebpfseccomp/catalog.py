"""The daemon's catalog: one TOML file per filter the administrator approves.

``ebpfseccompd --config DIR`` reads every ``DIR/*.toml`` (sorted by name).
Each file describes one entry; docs/daemon.md lists the keys.  A file that
fails validation is reported (file name and the rule it breaks) and skipped;
the other entries still load.  ``DIR/ebpfseccompd.conf`` (TOML too, optional)
holds the daemon's own settings, see `DaemonSettings`.

Nothing here talks to the kernel: the daemon builds, checks and loads the
entries this module describes.
"""

from __future__ import annotations

import grp
import hashlib
import pwd
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contract import Tier
from .errors import EbpfSeccompError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SETTINGS_FILE = "ebpfseccompd.conf"
MAX_ENTRY_FILE = 1 << 20

TIERS: dict[str, Tier] = {t.name.lower(): t for t in Tier}

#: Every key an entry file may hold; anything else is a typo and an error.
ENTRY_KEYS = frozenset(
    {
        "name",
        "description",
        "object",
        "source",
        "include_dirs",
        "defines",
        "program",
        "tier",
        "per_client",
        "users",
        "groups",
        "maps",
    }
)

#: A key or value of a map entry: an integer (stored little-endian in the
#: map's key or value size), a list of byte values, or a string as the
#: loader reads it (a syscall name, stored as its number on the daemon's
#: architecture; "0x.."; "hex:00ff.."; "str:TEXT").
MapItem = int | str | list[int]


class CatalogError(EbpfSeccompError):
    """An entry file that breaks a rule; the entry is skipped."""


@dataclass(frozen=True)
class Principals:
    """Who may get an entry: uids and gids, or everyone."""

    everyone: bool = False
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    shown: tuple[str, ...] = ()

    def allows(self, uid: int, gids: Iterable[int]) -> bool:
        if self.everyone or uid in self.uids:
            return True
        return any(g in self.gids for g in gids)

    def describe(self) -> str:
        return ", ".join(self.shown) if self.shown else "nobody"


@dataclass
class Entry:
    name: str
    file: Path
    description: str
    object: Path | None
    source: Path | None
    include_dirs: tuple[Path, ...]
    defines: dict[str, str]
    program: str | None
    tier: Tier
    per_client: bool
    allowed: Principals
    maps: dict[str, list[tuple[MapItem, MapItem]]]
    fingerprint: str = ""

    def allows(self, uid: int, gids: Iterable[int]) -> bool:
        return self.allowed.allows(uid, gids)


@dataclass
class Problem:
    file: Path
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class Catalog:
    directory: Path
    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


# --- principals ---------------------------------------------------------------


def _uid(item: object, where: str) -> int:
    if isinstance(item, bool):
        raise CatalogError(f"{where}: {item!r} is not a user name or uid")
    if isinstance(item, int):
        if not 0 <= item < 2**32 - 1:
            raise CatalogError(f"{where}: uid {item} out of range")
        return item
    if isinstance(item, str):
        try:
            return pwd.getpwnam(item).pw_uid
        except KeyError:
            raise CatalogError(f"{where}: no user named {item!r} on this system") from None
    raise CatalogError(f"{where}: {item!r} is not a user name or uid")


def _gid(item: object, where: str) -> int:
    if isinstance(item, bool):
        raise CatalogError(f"{where}: {item!r} is not a group name or gid")
    if isinstance(item, int):
        if not 0 <= item < 2**32 - 1:
            raise CatalogError(f"{where}: gid {item} out of range")
        return item
    if isinstance(item, str):
        try:
            return grp.getgrnam(item).gr_gid
        except KeyError:
            raise CatalogError(f"{where}: no group named {item!r} on this system") from None
    raise CatalogError(f"{where}: {item!r} is not a group name or gid")


def principals(users: object, groups: object, where: str = "") -> Principals:
    """Resolve `users = [...]` and `groups = [...]` ("*" in users: anyone)."""
    pre = f"{where}: " if where else ""
    for key, val in (("users", users), ("groups", groups)):
        if not isinstance(val, list):
            raise CatalogError(f"{pre}'{key}' must be a list of names or ids")
    assert isinstance(users, list) and isinstance(groups, list)
    everyone = "*" in users
    uids = frozenset(_uid(u, f"{pre}users") for u in users if u != "*")
    gids = frozenset(_gid(g, f"{pre}groups") for g in groups)
    shown = tuple(["everyone"] if everyone else []) + tuple(
        [f"user {u}" for u in users if u != "*"] + [f"group {g}" for g in groups]
    )
    return Principals(everyone=everyone, uids=uids, gids=gids, shown=shown)


# --- entries -----------------------------------------------------------------


def _str(data: dict[str, Any], key: str, *, default: str | None = None) -> str | None:
    val = data.get(key, default)
    if val is not None and not isinstance(val, str):
        raise CatalogError(f"'{key}' must be a string, not {type(val).__name__}")
    return val


def _path(base: Path, val: str) -> Path:
    p = Path(val)
    return p if p.is_absolute() else (base / p)


def _map_item(val: object, where: str, *, key: bool) -> MapItem:
    if isinstance(val, bool):
        raise CatalogError(f"{where}: booleans are not map data; use 0 or 1")
    if isinstance(val, int):
        if val < 0:
            raise CatalogError(f"{where}: negative numbers are not map data")
        return val
    if isinstance(val, str):
        return val
    if isinstance(val, list) and all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in val
    ):
        return list(val)
    raise CatalogError(
        f"{where}: {val!r} is not an integer, a string (syscall name, 0x number, "
        '"hex:..", "str:..") or a list of byte values'
    )


def _maps(val: object) -> dict[str, list[tuple[MapItem, MapItem]]]:
    if not isinstance(val, dict):
        raise CatalogError("'maps' must be a table: [maps.NAME] entries = [[key, value], ...]")
    out: dict[str, list[tuple[MapItem, MapItem]]] = {}
    for name, spec in val.items():
        where = f"maps.{name}"
        if not isinstance(spec, dict) or set(spec) - {"entries"}:
            raise CatalogError(f"{where}: expected only 'entries = [[key, value], ...]'")
        items = spec.get("entries", [])
        if not isinstance(items, list):
            raise CatalogError(f"{where}.entries must be a list of [key, value] pairs")
        pairs: list[tuple[MapItem, MapItem]] = []
        for i, pair in enumerate(items):
            if not isinstance(pair, list) or len(pair) != 2:
                raise CatalogError(f"{where}.entries[{i}] must be a [key, value] pair")
            pairs.append(
                (
                    _map_item(pair[0], f"{where}.entries[{i}] key", key=True),
                    _map_item(pair[1], f"{where}.entries[{i}] value", key=False),
                )
            )
        out[str(name)] = pairs
    return out


def parse_entry(file: Path, data: dict[str, Any]) -> Entry:
    """Validate one entry's TOML table (CatalogError names the broken rule)."""
    unknown = sorted(set(data) - ENTRY_KEYS)
    if unknown:
        raise CatalogError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(known: {', '.join(sorted(ENTRY_KEYS))})"
        )
    name = _str(data, "name", default=file.stem)
    assert name is not None
    if not NAME_RE.match(name):
        raise CatalogError(
            f"name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    base = file.parent
    obj = _str(data, "object")
    src = _str(data, "source")
    if (obj is None) == (src is None):
        raise CatalogError("give exactly one of 'object' (a built .o) or 'source' (a .c file)")
    obj_path = _path(base, obj) if obj else None
    src_path = _path(base, src) if src else None
    for p in (obj_path, src_path):
        if p is not None and not p.is_file():
            raise CatalogError(f"{p}: no such file")
    inc = data.get("include_dirs", [])
    if not isinstance(inc, list) or not all(isinstance(i, str) for i in inc):
        raise CatalogError("'include_dirs' must be a list of directory names")
    if inc and src_path is None:
        raise CatalogError("'include_dirs' only applies to 'source' entries")
    defines = data.get("defines", {})
    if not isinstance(defines, dict):
        raise CatalogError("'defines' must be a table NAME = value")
    if defines and src_path is None:
        raise CatalogError("'defines' only applies to 'source' entries")
    defs: dict[str, str] = {}
    for k, v in defines.items():
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise CatalogError(f"defines.{k} must be a string or an integer")
        defs[str(k)] = str(v)
    tier_name = _str(data, "tier", default="extended")
    assert tier_name is not None
    if tier_name.lower() not in TIERS:
        raise CatalogError(f"tier {tier_name!r} is not one of {', '.join(TIERS)}")
    per_client = data.get("per_client", False)
    if not isinstance(per_client, bool):
        raise CatalogError("'per_client' must be true or false")
    users = data.get("users", [])
    groups = data.get("groups", [])
    allowed = principals(users, groups)
    if not (allowed.everyone or allowed.uids or allowed.gids):
        raise CatalogError("lists no 'users' or 'groups': nobody could get it")
    return Entry(
        name=name,
        file=file,
        description=_str(data, "description", default="") or "",
        object=obj_path,
        source=src_path,
        include_dirs=tuple(_path(base, i) for i in inc),
        defines=defs,
        program=_str(data, "program"),
        tier=TIERS[tier_name.lower()],
        per_client=per_client,
        allowed=allowed,
        maps=_maps(data.get("maps", {})),
    )


def _fingerprint(raw: bytes, entry: Entry) -> str:
    """Changes whenever the entry file or the object/source it names changes."""
    h = hashlib.sha256(raw)
    for p in (entry.object, entry.source):
        if p is not None:
            h.update(str(p).encode() + b"\0" + p.read_bytes())
    if entry.source is not None:
        for inc in entry.include_dirs:
            if inc.is_dir():
                for hdr in sorted(inc.rglob("*.h")):
                    h.update(str(hdr).encode() + b"\0" + hdr.read_bytes())
    # Principals resolve names through the user database: a change there
    # changes who may get the entry, not the program.
    return h.hexdigest()


def load_entry(file: Path) -> Entry:
    try:
        if file.stat().st_size > MAX_ENTRY_FILE:
            raise CatalogError(f"larger than {MAX_ENTRY_FILE} bytes")
        raw = file.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CatalogError("not UTF-8", path=str(file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"invalid TOML: {exc}", path=str(file)) from None
    except OSError as exc:
        raise CatalogError(exc.strerror or str(exc), path=str(file)) from None
    try:
        entry = parse_entry(file, data)
        entry.fingerprint = _fingerprint(raw, entry)
    except CatalogError as exc:
        raise CatalogError(exc.message, path=str(file), hint=exc.hint) from None
    except OSError as exc:
        raise CatalogError(f"{exc.filename}: {exc.strerror}", path=str(file)) from None
    return entry


def load_catalog(directory: str | Path) -> Catalog:
    """Read DIR/*.toml; bad files go to `problems`, the rest to `entries`."""
    d = Path(directory)
    cat = Catalog(directory=d)
    try:
        files = sorted(p for p in d.iterdir() if p.suffix == ".toml" and not p.name.startswith("."))
    except OSError as exc:
        raise CatalogError(
            f"cannot read the catalog directory: {exc.strerror}", path=str(d)
        ) from None
    for f in files:
        try:
            entry = load_entry(f)
        except CatalogError as exc:
            cat.problems.append(Problem(f, exc.message if exc.path else exc.render()))
            continue
        if entry.name in cat.entries:
            other = cat.entries[entry.name].file.name
            cat.problems.append(Problem(f, f"name {entry.name!r} already used by {other}; skipped"))
            continue
        cat.entries[entry.name] = entry
    return cat


# --- daemon settings ---------------------------------------------------------


@dataclass
class DaemonSettings:
    """DIR/ebpfseccompd.conf; command-line options override each key."""

    socket: str | None = None
    socket_mode: int = 0o660
    socket_group: str | None = None
    max_frame: int | None = None
    max_clients: int | None = None  # None: from RLIMIT_NOFILE
    client_timeout: float = 10.0
    idle_timeout: float = 300.0
    audit_log: str | None = None
    drop_privileges: bool = False
    user: str | None = None
    submit: bool = False  # off unless [submit] enabled = true
    submit_users: Principals = field(default_factory=lambda: Principals(everyone=True))


SETTINGS_KEYS = {
    "socket": str,
    "socket_mode": (int, str),
    "socket_group": str,
    "max_frame": int,
    "max_clients": int,
    "client_timeout": (int, float),
    "idle_timeout": (int, float),
    "audit_log": str,
    "drop_privileges": bool,
    "user": str,
    "submit": dict,
}


def parse_mode(val: int | str) -> int:
    if isinstance(val, str):
        try:
            val = int(val, 8)
        except ValueError:
            raise CatalogError(f"socket mode {val!r} is not an octal number") from None
    if not 0 <= val <= 0o777:
        raise CatalogError(f"socket mode {oct(val)} out of range")
    return val


def load_settings(directory: str | Path) -> DaemonSettings:
    path = Path(directory) / SETTINGS_FILE
    s = DaemonSettings()
    if not path.exists():
        return s
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"cannot read: {exc}", path=str(path)) from None
    for key, val in data.items():
        want = SETTINGS_KEYS.get(key)
        if want is None:
            raise CatalogError(
                f"unknown setting {key!r} (known: {', '.join(SETTINGS_KEYS)})", path=str(path)
            )
        if isinstance(val, bool) and want is not bool or not isinstance(val, want):
            raise CatalogError(f"setting {key!r} has the wrong type", path=str(path))
    try:
        for key in ("socket", "socket_group", "audit_log", "user"):
            if key in data:
                setattr(s, key, data[key])
        if "socket_mode" in data:
            s.socket_mode = parse_mode(data["socket_mode"])
        for key in ("max_frame", "max_clients"):
            if key in data:
                if data[key] < 1:
                    raise CatalogError(f"{key} must be positive")
                setattr(s, key, data[key])
        for key in ("client_timeout", "idle_timeout"):
            if key in data:
                if data[key] <= 0:
                    raise CatalogError(f"{key} must be positive")
                setattr(s, key, float(data[key]))
        if "drop_privileges" in data:
            s.drop_privileges = data["drop_privileges"]
        sub = data.get("submit", {})
        unknown = set(sub) - {"enabled", "users", "groups"}
        if unknown:
            raise CatalogError(f"unknown submit setting(s) {', '.join(sorted(unknown))}")
        if "enabled" in sub:
            if not isinstance(sub["enabled"], bool):
                raise CatalogError("submit.enabled must be true or false")
            s.submit = sub["enabled"]
        if "users" in sub or "groups" in sub:
            s.submit_users = principals(sub.get("users", []), sub.get("groups", []), "submit")
    except CatalogError as exc:
        raise CatalogError(exc.message, path=str(path)) from None
    return s
