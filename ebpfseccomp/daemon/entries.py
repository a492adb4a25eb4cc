"""The catalog as loaded: one `Loaded` per serving entry, and how an entry
becomes one (build, private copy, check, map contents, load)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..catalog import CatalogError, Entry
from ..errors import EbpfSeccompError
from .backend import Backend, Checked, LoadedProgram
from .caps import CAP_SYS_PTRACE, cap_bit, tier_caps

log = logging.getLogger("ebpfseccompd")


@dataclass
class Loaded:
    entry: Entry
    object: Path
    checked: Checked
    maps: dict[str, dict[bytes, bytes]]
    caps: int  # effective capabilities it is loaded with
    program: LoadedProgram | None  # None for per_client entries
    sha256: str
    loaded_at: float

    def metadata(self) -> dict[str, Any]:
        e = self.entry
        return {
            "name": e.name,
            "description": e.description,
            "tier": e.tier.name.lower(),
            "needs_tier": self.checked.tier.name.lower(),
            "reads_any_task": bool(self.caps & cap_bit(CAP_SYS_PTRACE)),
            "program": e.program or self.checked.program or e.name,
            "per_client": e.per_client,
            "maps": sorted(self.checked.maps),
            "sha256": self.sha256,
            "loaded_at": self.loaded_at,
        }

    def close(self) -> None:
        if self.program is not None:
            with contextlib.suppress(Exception):
                self.program.close()
            self.program = None


def _map_bytes(value: int | str | list[int], size: int, where: str) -> bytes:
    if isinstance(value, list):
        if len(value) != size:
            raise CatalogError(f"{where}: {len(value)} bytes given, the map holds {size}")
        return bytes(value)
    from ..loader import encode

    try:
        return encode(value, size, what=where)
    except EbpfSeccompError as exc:
        raise CatalogError(exc.message) from None


def encode_maps(entry: Entry, checked: Checked) -> dict[str, dict[bytes, bytes]]:
    """The entry's `maps` as the loader's {map: {key bytes: value bytes}}."""
    out: dict[str, dict[bytes, bytes]] = {}
    for name, pairs in entry.maps.items():
        if name not in checked.maps:
            known = ", ".join(sorted(checked.maps)) or "none"
            raise CatalogError(f"maps.{name}: the object has no such map (maps: {known})")
        ksize, vsize = checked.maps[name]
        out[name] = {
            _map_bytes(k, ksize, f"maps.{name}: key {k!r}"): _map_bytes(
                v, vsize, f"maps.{name}: value {v!r}"
            )
            for k, v in pairs
        }
    return out


def prepare(entry: Entry, backend: Backend, workdir: Path, ptrace_scope: int | None) -> Loaded:
    """Build (for a `source` entry), check and load ENTRY; CatalogError or
    EbpfSeccompError naming the rule when it cannot serve."""
    if entry.source is not None:
        obj = backend.build(entry, workdir)
    else:
        assert entry.object is not None
        obj = entry.object
    # Load from a private copy so that the file checked is the file loaded.
    private = workdir / f"{entry.name}.{entry.fingerprint[:12]}.o"
    if obj != private:
        shutil.copyfile(obj, private)
    checked = backend.check(private, entry.program)
    if not checked.loadable:
        raise CatalogError(
            "the object would not pass the verifier: "
            + "; ".join(checked.problems or ["(no reason given)"])
        )
    if checked.tier > entry.tier:
        need = checked.tier.name.lower()
        raise CatalogError(
            f"the program needs tier {need} but the entry approves "
            f'{entry.tier.name.lower()}; set tier = "{need}" to approve it'
        )
    if checked.wants is not None and checked.wants > entry.tier:
        log.warning(
            "catalog: %s reads user memory; approved at tier %s, its reads of "
            'non-dumpable tasks fail with EPERM (tier = "ptrace" allows them)',
            entry.name,
            entry.tier.name.lower(),
        )
    checked.obj = checked.prog = None  # only a submission is predicted from them: free them
    maps = encode_maps(entry, checked)
    digest = hashlib.sha256(private.read_bytes()).hexdigest()
    caps = tier_caps(entry.tier, ptrace_scope)
    program = backend.load(private, entry.program, maps, caps)
    if entry.per_client:
        # Loaded once now only so that a program the kernel refuses is
        # reported at startup rather than at the first request.
        program.close()
        program = None
    return Loaded(entry, private, checked, maps, caps, program, digest, time.time())


__all__ = ["EbpfSeccompError", "Loaded", "LoadedProgram", "encode_maps", "prepare"]
