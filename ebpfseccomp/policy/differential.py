"""Run one stream of system calls through both filters of a profile and compare.

    report = compare(sel, minimum=100_000)

builds the eBPF object (`convert.write`), runs it in the project's emulator
(ebpfseccomp.analysis.emulator), runs libseccomp's classic program for the same
selection in the cBPF interpreter (cbpf.py), and checks both against the
plan's own answer (`Plan.decide`).  A disagreement is a semantic bug in the
converter (or in libseccomp): the report keeps the first ones verbatim.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.emulator import Emulator, SyscallInput
from ..elf import load_object
from . import cbpf, inputs, libseccomp, model, semantics
from .convert import write


@dataclass
class Disagreement:
    arch: int
    nr: int
    args: tuple[int, ...]
    ebpf: int
    classic: int
    plan: int

    def __str__(self) -> str:
        args = ", ".join(hex(a) for a in self.args)
        return (f"arch 0x{self.arch:08x} nr {self.nr:#x} args ({args}): eBPF 0x{self.ebpf:08x}, "
                f"libseccomp 0x{self.classic:08x}, plan 0x{self.plan:08x}")


@dataclass
class Report:
    compared: int = 0
    disagreements: int = 0
    examples: list[Disagreement] = field(default_factory=list)
    classic_insns: int = 0
    ebpf_insns_total: int = 0
    classic_insns_total: int = 0
    #: calls where libseccomp's program compared a stale accumulator (its gen_bpf
    #: bug, docs/policies.md) and so answered other than the profile; the eBPF
    #: filter and the plan agreed on them
    libseccomp_stale_accumulator: int = 0
    stale_examples: list[Disagreement] = field(default_factory=list)
    ambiguous_jumps: int = 0
    #: calls of syscalls whose rules libseccomp 2.5's rule tree merges wrongly
    #: (semantics.libseccomp_tree_risk) where its answer is not the profile's;
    #: the eBPF filter and the plan agreed on them
    libseccomp_tree_merge: int = 0
    tree_examples: list[Disagreement] = field(default_factory=list)
    #: calls of syscalls libseccomp's own table lacks on that ABI (it skips
    #: the name there, docs/policies.md): the eBPF filter and the plan follow
    #: Linux 6.12's table and agreed; "abi:name" of each such syscall met
    libseccomp_table_gap: int = 0
    table_gap_names: set[str] = field(default_factory=set)


def table_gaps(plan: semantics.Plan) -> dict[tuple[int, int], str]:
    """(seccomp_data.arch, nr) -> "abi:name" for the plan's syscalls that
    libseccomp's table does not have at that number (2.5.4: names newer than
    its table, x32's map_shadow_stack)."""
    gaps: dict[tuple[int, int], str] = {}
    for ap in plan.arches:
        for nr, sp in ap.syscalls.items():
            if libseccomp.name_of(nr, ap.scmp) != sp.name:
                gaps[(ap.audit, nr)] = f"{ap.name}:{sp.name}"
    return gaps


def compare(sel: model.Selection, minimum: int = 100_000, seed: int = 0,
            calls: list[inputs.Call] | None = None, workdir: str | None = None,
            product_cap: int = 60_000) -> Report:
    plan = semantics.compile(sel)
    classic = libseccomp.build(sel)
    with tempfile.TemporaryDirectory(prefix="ebpfseccomp-diff-", dir=workdir) as tmp:
        obj = write(plan, Path(tmp) / "profile.o")
        emu = Emulator(load_object(str(obj)))
    ambiguous = cbpf.ambiguous_jumps(classic.insns)
    risky = semantics.libseccomp_tree_risk(plan)
    gaps = table_gaps(plan)
    report = Report(classic_insns=len(classic.insns), ambiguous_jumps=len(ambiguous))
    stream = calls if calls is not None else inputs.generate(plan, minimum, seed, product_cap)
    for arch, nr, args in stream:
        res = emu.run(SyscallInput(nr=nr, arch=arch, args=args))
        e = res.verdict.value
        k = cbpf.run(classic.insns, nr, arch, args)
        r = plan.decide(arch, nr, args)
        report.compared += 1
        report.ebpf_insns_total += res.insns_executed
        if not e == k == r:
            if e == r and ambiguous:
                path: list[int] = []
                cbpf.run(classic.insns, nr, arch, args, trace=path)
                if ambiguous.intersection(path):
                    report.libseccomp_stale_accumulator += 1
                    if len(report.stale_examples) < 5:
                        report.stale_examples.append(Disagreement(arch, nr, args, e, k, r))
                    continue
            if e == r and (arch, nr & 0xFFFFFFFF) in risky:
                report.libseccomp_tree_merge += 1
                if len(report.tree_examples) < 5:
                    report.tree_examples.append(Disagreement(arch, nr, args, e, k, r))
                continue
            gap = gaps.get((arch, nr & 0xFFFFFFFF))
            if e == r and gap:
                report.libseccomp_table_gap += 1
                report.table_gap_names.add(gap)
                continue
            report.disagreements += 1
            if len(report.examples) < 20:
                report.examples.append(Disagreement(arch, nr, args, e, k, r))
    return report
