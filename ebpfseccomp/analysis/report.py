"""The checker's verdict: problems (what the kernel will refuse), helper uses,
tiers, notes and warnings, as objects and as JSON-ready dicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..contract import Tier
from ..elf import SourceLine


@dataclass
class Problem:
    """Something the kernel will refuse (or would refuse for this loader)."""

    insn: int | None  # index into Program.insns; None for whole-program problems
    line: SourceLine | None
    message: str
    fix: str
    code: str = ""  # short stable identifier, e.g. "ctx-store"

    def where(self, path: str) -> str:
        text = path
        if self.insn is not None:
            text += f":insn {self.insn}"
            if self.line is not None:
                text += f" ({self.line})"
        return text

    def render(self, path: str) -> str:
        text = f"{self.where(path)}: {self.message}"
        if self.fix:
            text += f"; {self.fix}"
        return text

    def __str__(self) -> str:
        where = ""
        if self.insn is not None:
            where = f"insn {self.insn}" + (f" ({self.line})" if self.line is not None else "")
            where += ": "
        return where + self.message + (f"; {self.fix}" if self.fix else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "insn": self.insn,
            "line": None
            if self.line is None
            else {
                "file": self.line.file,
                "line": self.line.line,
                "col": self.line.col,
                "text": self.line.text,
            },
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass
class HelperUse:
    id: int
    name: str
    tier: Tier | None  # None: not available to seccomp programs at any tier
    insns: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "tier": None if self.tier is None else self.tier.name,
            "insns": self.insns,
        }


@dataclass
class Report:
    """The checker's verdict on one program.

    Stable attributes (the loader predicts privileges from them):
    ``helpers``, ``maps``, ``tier``, ``needs_cap_bpf``, ``problems``,
    ``loadable``.

    ``tier`` is what the program needs to work fully: PTRACE when it reads
    user memory (it loads at EXTENDED, but reads of non-dumpable tasks then
    fail with -EPERM unless the loader has CAP_SYS_PTRACE); ``load_tier`` is
    the lowest tier at which the kernel accepts it.  ``needs_cap_bpf``
    covers the verifier's reasons (subprograms, loops, more than 4096
    instructions), listed in ``cap_bpf_reasons``; the TRACING tier
    additionally needs CAP_BPF and CAP_PERFMON.
    """

    path: str
    program: str
    section: str
    insn_count: int
    helpers: list[HelperUse]
    maps: list[str]  # names of the maps and global sections the program uses
    tier: Tier
    load_tier: Tier
    needs_cap_bpf: bool
    cap_bpf_reasons: list[str]
    problems: list[Problem]
    notes: list[str]
    unprivileged: bool = False
    license: str | None = None
    stack_depth: int = 0
    #: likely mistakes the kernel accepts (e.g. the 64-bit argument trap)
    warnings: list[str] = field(default_factory=list)
    #: map or global section -> the first instruction referring to it and its
    #: source line: what raised the tier (a const table that landed in .rodata)
    map_refs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def loadable(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "program": self.program,
            "section": self.section,
            "insn_count": self.insn_count,
            "license": self.license,
            "loadable": self.loadable,
            "tier": self.tier.name,
            "load_tier": self.load_tier.name,
            "needs_cap_bpf": self.needs_cap_bpf,
            "cap_bpf_reasons": self.cap_bpf_reasons,
            "unprivileged": self.unprivileged,
            "stack_depth": self.stack_depth,
            "helpers": [h.to_dict() for h in self.helpers],
            "maps": self.maps,
            "problems": [p.to_dict() for p in self.problems],
            "notes": self.notes,
            "warnings": self.warnings,
            "map_refs": self.map_refs,
        }
