"""The work the daemon asks of the rest of the toolchain: build, check,
predict, load.

The prediction for a submitted object is the loader's own
(`loader.preflight`: the static check, then `privilege.predict` on
`Needs.from_program`), applied to the client's credentials.  There is no
second way to learn what an object needs: a daemon that predicted from a
summary of the object once loaded an LRU map for an unprivileged client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..catalog import Entry
from ..contract import Tier
from ..errors import EbpfSeccompError, PrivilegeError
from ..privilege import Prediction
from .caps import effective_caps
from .peer import Peer


class LoadedProgram(Protocol):
    fd: int

    def close(self) -> None: ...


@dataclass
class Checked:
    """What the daemon needs to know of an object before loading it."""

    tier: Tier  # the lowest tier at which the kernel accepts the program
    loadable: bool
    problems: list[str]
    maps: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (key, value size)
    wants: Tier | None = None  # the tier it needs to work fully (PTRACE: reads user memory)
    program: str | None = None  # the program's name in the object
    path: str = ""
    obj: Any = None  # the elf.BpfObject and elf.Program the prediction is made on
    prog: Any = None


class Backend:
    """Build, check, predict and load through the toolchain's modules.

    Tests substitute a fake; the daemon never calls bpf(2) itself."""

    def ptrace_scope(self) -> int | None:
        from .. import privilege

        return privilege.SystemPolicy.current().ptrace_scope

    def build(self, entry: Entry, workdir: Path) -> Path:
        from .. import build

        assert entry.source is not None
        out = workdir / f"{entry.name}.build.o"
        return build.build(
            entry.source, out=out, include_dirs=entry.include_dirs, defines=entry.defines
        )

    def check(self, path: Path, program: str | None) -> Checked:
        from .. import elf
        from ..analysis.checker import check

        obj = elf.load_object(str(path))
        report = check(obj, program)
        maps = {
            name: (spec.key_size, spec.value_size)
            for name, spec in obj.maps.items()
            if not spec.is_global
        }
        return Checked(
            tier=Tier(report.load_tier),
            loadable=bool(report.loadable),
            problems=[p.render(str(path)) for p in report.problems],
            maps=maps,
            wants=Tier(report.tier),
            program=report.program,
            path=str(path),
            obj=obj,
            prog=obj.program(program),
        )

    def predict(self, checked: Checked, peer: Peer, ptrace_scope: int | None) -> Prediction:
        """What the kernel would answer PEER loading this object itself.

        The loader's own decision (`loader.preflight`) with the client's
        uid and effective capabilities, the given ptrace_scope, and
        kernel.unprivileged_bpf_disabled taken as 0: the daemon stands in
        for the CAP_BPF load gate and for nothing else.  Every other rule
        (map types, instruction limit, loops, subprograms, the unprivileged
        verifier's pointer rules, the helper tier by capabilities and
        ptrace_scope) is the client's.
        """
        from .. import loader, privilege

        creds = privilege.Credentials.from_mask(peer.uid, peer.caps)
        policy = privilege.SystemPolicy(ptrace_scope=ptrace_scope, unprivileged_bpf_disabled=0)
        try:
            _needs, prediction = loader.preflight(
                checked.obj, checked.prog, checked.path, creds, policy
            )
        except PrivilegeError as exc:
            pred = getattr(exc, "prediction", None)
            if isinstance(pred, Prediction):
                return pred
            # the unprivileged verifier's rules (pointer leaks and the like)
            return Prediction(
                False, privilege.granted_tier(creds, policy), [exc.message], errno=None
            )
        return prediction

    def load(
        self,
        path: Path,
        program: str | None,
        maps: dict[str, dict[bytes, bytes]],
        caps: int,
    ) -> LoadedProgram:
        """Load with the effective capability set lowered to CAPS."""
        from .. import loader

        with effective_caps(caps):
            return loader.load(str(path), program, maps=maps)


__all__ = ["Backend", "Checked", "EbpfSeccompError", "LoadedProgram", "Prediction"]
