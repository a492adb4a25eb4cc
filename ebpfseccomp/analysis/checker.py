"""The checker's driver: ``check(obj, program=None) -> Report`` predicts what
the kernel's verifier will refuse for BPF_PROG_TYPE_SECCOMP
(../shared/DESIGN-NOTES.md, the contract) and which helper tier the program
needs.

``Checker`` holds what the passes share (the program, the problems found,
the settled data-flow states); each pass is a module of this package, named
for what it checks:

* ``encoding``: known opcodes (the kernel's instruction table), reserved
  fields, register numbers, writes to r10, ld_imm64 pairs, division by a zero
  constant, shift amounts, ``BPF_LD_[ABS|IND]`` (socket filters only);
* ``cfg``: control flow and loops (check_subprogs/check_cfg): jumps inside
  their subprogram, not into an ld_imm64, the last instruction of every
  subprogram, unreachable instructions, back-edges (loops: CAP_BPF), loops
  bounded only by a register, BPF-to-BPF calls (CAP_BPF);
* ``helpers``: helpers and tiers: known ids, available to seccomp programs in
  some tier, GPL-only helpers need a GPL-compatible license, no kfuncs;
* ``state``: stack and register state, the one forward data-flow analysis
  (which registers and stack slots may hold the context, stack, map and map
  value pointers, maybe-NULL lookup results, whole seccomp_data fields);
  registers and stack bytes read before they are written;
* ``access``: context and map access on the settled states: no store to the
  context; context loads of 1, 2, 4 or 8 bytes, naturally aligned, inside the
  64 bytes of struct seccomp_data, through the unmoved pointer; stack
  accesses inside 512 bytes; map values inside their size and NULL-checked;
  pointer arithmetic, comparisons and leaks; map declarations; the 64-bit
  argument-width warning;
* ``limits``: 4096 instructions without CAP_BPF, 1,000,000 with it; call
  depth and the combined stack size.

With ``unprivileged=True`` the rules of a loader without CAP_BPF apply too:
no loops, no subprograms, no tracing-tier helpers, no pointer comparisons, no
pointers returned or stored into maps, no read of uninitialised stack.

What it does not prove (and says so in ``Report.notes`` when it matters):
value ranges (the kernel tracks them and may refuse an access this checker
lets through, e.g. a variable index into a map value), loop termination, and
the verifier's complexity limit.
"""

from __future__ import annotations

from .._gcpause import paused_gc
from ..elf import BpfObject, Program, Reloc, SourceLine
from . import access, cfg, encoding, helpers, limits, state
from .report import HelperUse, Problem, Report
from .state import _State


class Checker:
    """What the passes share while checking one program."""

    def __init__(self, obj: BpfObject, prog: Program, unprivileged: bool):
        self.obj = obj
        self.prog = prog
        self.insns = prog.insns
        self.n = len(prog.insns)
        self.unprivileged = unprivileged
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.cap_bpf_reasons: list[str] = []
        self.relocs: dict[int, Reloc] = {r.insn: r for r in prog.relocs}
        self.helpers: dict[int, HelperUse] = {}
        self.maps_used: list[str] = []
        self.states: list[_State | None] = []  # per insn, None: not reached (state)
        self.interned: dict[_State, _State] = {}  # the distinct states (state.dataflow)
        self.second_slot: set[int] = set()
        self.subprog_starts: list[int] = [0]
        self.stack_depth: dict[int, int] = {}
        self._seen: set[tuple[int | None, str]] = set()
        self.cfg_ok = False  # set once every edge of the control-flow graph is in range
        #: per insn, where control goes next; None: only to the next insn (cfg)
        self.succs: list[tuple[int, ...] | None] = []
        self.back_edges: list[tuple[int, int]] = []
        self.targets: dict[int, int] = {}  # jump -> its target (cfg)
        self.jump_targets: set[int] = set()
        self.total_stack = 0

    # --- reporting ------------------------------------------------------------

    def line_for(self, i: int | None) -> SourceLine | None:
        if i is None:
            return None
        lines = self.prog.lines
        start = max((s for s in self.subprog_starts if s <= i), default=0)
        for j in range(i, start - 1, -1):
            if j in lines:
                return lines[j]
        return None

    def problem(self, i: int | None, code: str, message: str, fix: str) -> None:
        key = (i, code)
        if key in self._seen:
            return
        self._seen.add(key)
        self.problems.append(Problem(i, self.line_for(i), message, fix, code))

    def cap_bpf(self, reason: str) -> None:
        if reason not in self.cap_bpf_reasons:
            self.cap_bpf_reasons.append(reason)


    def subprog_of(self, i: int) -> int:
        return max(s for s in self.subprog_starts if s <= i)

    def run(self) -> Report:
        n = self.n
        if n == 0:
            self.problem(None, "empty", "the program has no instructions", "")
        limits.check_size(self)
        if n:
            encoding_ok = encoding.check_encoding(self)
            if encoding_ok:
                cfg.check_flow(self)
            helpers.check_helpers(self)
            access.check_maps(self)
            if encoding_ok and self.cfg_ok:
                state.dataflow(self)
                state.check_registers(self)
                access.check_accesses(self)
                state.check_stack_init(self)
                access.check_arg_widths(self)
                limits.check_frames(self)
            else:
                self.notes.append(
                    "structural problems stopped the data-flow checks (context, stack, NULL)"
                )
        tier, load_tier = helpers.tiers(self)
        if self.obj.license is None:
            self.notes.append('no "license" section')
        return Report(
            path=self.obj.path,
            program=self.prog.name,
            section=self.prog.section,
            insn_count=n,
            helpers=sorted(self.helpers.values(), key=lambda h: h.id),
            maps=self.maps_used,
            map_refs=access.map_refs(self),
            tier=tier,
            load_tier=load_tier,
            needs_cap_bpf=bool(self.cap_bpf_reasons),
            cap_bpf_reasons=self.cap_bpf_reasons,
            problems=sorted(
                self.problems, key=lambda p: (-1 if p.insn is None else p.insn, p.code)
            ),
            notes=list(dict.fromkeys(self.notes)),
            warnings=list(dict.fromkeys(self.warnings)),
            unprivileged=self.unprivileged,
            license=self.obj.license,
            stack_depth=self.stack_depth.get(0, 0),
        )


def check(obj: BpfObject, program: str | None = None, *, unprivileged: bool = False) -> Report:
    """Check PROGRAM of OBJ against the kernel's rules for seccomp programs.

    With ``unprivileged=True``, also apply the rules for a loader without
    CAP_BPF (no loops, no subprograms, 4096 instructions, no tracing helpers,
    no pointer leaks).  ObjectError if the program is absent or ambiguous.
    """
    prog = obj.program(program)
    with paused_gc():
        return Checker(obj, prog, unprivileged).run()
