"""Pass 2, control flow and loops (the kernel's check_subprogs/check_cfg):
subprogram bounds, jumps inside their subprogram and not into an ld_imm64,
the last instruction of every subprogram, unreachable code, back-edges (loops
need CAP_BPF) and loops the verifier cannot bound."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..insn import (
    BPF_CALL,
    BPF_DW,
    BPF_EXIT,
    BPF_JA,
    BPF_JMP,
    BPF_JMP32,
    BPF_LD,
    BPF_PSEUDO_CALL,
    BPF_X,
    Insn,
)

if TYPE_CHECKING:
    from .checker import Checker

BPF_PSEUDO_FUNC = 4
BPF_JCOND = 0xE0


def jump_target(i: int, ins: Insn) -> int | None:
    """The branch target of a jump instruction (not calls/exits), else None."""
    if ins.cls not in (BPF_JMP, BPF_JMP32):
        return None
    if ins.op in (BPF_CALL, BPF_EXIT):
        return None
    if ins.cls == BPF_JMP32 and ins.op == BPF_JA:
        return i + ins.imm + 1
    return i + ins.off + 1


def is_cond_jump(ins: Insn) -> bool:
    return ins.cls in (BPF_JMP, BPF_JMP32) and ins.op not in (BPF_JA, BPF_CALL, BPF_EXIT)




def check_flow(ck: Checker) -> bool:
    ok = True
    starts = {0}
    insns = ck.insns
    for i in [i for i, ins in enumerate(insns) if ins.code in _CALL_OR_LD64]:
        ins = insns[i]
        if i in ck.second_slot:
            continue
        target = None
        if ins.is_pseudo_call():
            target = i + ins.imm + 1
            what = "call"
        elif ins.is_ld_imm64() and ins.src == BPF_PSEUDO_FUNC:
            target = i + ins.imm + 1
            what = "function pointer"
        if target is None:
            continue
        if not 0 <= target < ck.n:
            ck.problem(
                i,
                "jump-range",
                f"{what} out of range from insn {i} to {target}",
                "the object is corrupt; rebuild it",
            )
            ok = False
            continue
        starts.add(target)
    ck.subprog_starts = sorted(starts)
    if len(ck.subprog_starts) > 1:
        ck.cap_bpf("BPF-to-BPF calls (subprograms)")
    # jumps stay inside their subprogram; the last insn is exit or ja
    bounds = ck.subprog_starts + [ck.n]
    succs, targets = _successors(insns, ck.second_slot)
    ck.targets = targets
    for k in range(len(ck.subprog_starts)):
        lo, hi = bounds[k], bounds[k + 1]
        for i in [i for i in targets if lo <= i < hi]:
            t = targets[i]
            if not lo <= t < hi:
                name = ck.prog.subprogs.get(lo, f"subprogram at {lo}")
                ck.problem(
                    i,
                    "jump-range",
                    f"jump out of range from insn {i} to {t} ({name} is insns {lo}..{hi - 1})",
                    "jumps must stay inside their function",
                )
                ok = False
            elif t in ck.second_slot:
                ck.problem(
                    i,
                    "jump-range",
                    f"jump into the middle of ldimm64 insn {t - 1}",
                    "the object is corrupt; rebuild it",
                )
                ok = False
        last = hi - 1
        if hi > lo:
            li = ck.insns[last]
            is_end = li.is_exit() or (li.op == BPF_JA and li.cls in (BPF_JMP, BPF_JMP32))
            if last in ck.second_slot or not is_end:
                name = ck.prog.subprogs.get(lo, "the program")
                ck.problem(
                    last,
                    "no-exit",
                    f"last insn is not an exit or jmp (end of {name})",
                    "every function must end with `exit` (return a value)",
                )
                ok = False
    if not ok:
        return False
    # check_cfg: every successor in range, every instruction reachable, back-edges
    n = ck.n
    # the jumps stay inside their subprogram (above), so only the calls and
    # what falls through at the end can leave the program
    for i in [i for i in range(max(n - 2, 0), n)] + [i for i in targets] + [
            i for i, ins in enumerate(insns) if ins.code in _CALL_OR_LD64]:
        for t in _next(succs, i):
            if not 0 <= t < n:
                ck.problem(
                    i,
                    "jump-range",
                    f"jump out of range from insn {i} to {t}",
                    "the program falls off its end; end it with `exit`",
                )
                return False
    ck.succs = succs
    ck.cfg_ok = True
    if any(t <= i for i, t in targets.items()) or len(ck.subprog_starts) > 1:
        reached, back_edges = _dfs(succs, n)
    else:  # every edge goes forward: no loop, and one sweep finds what is reached
        reached, back_edges = _sweep(succs, n), []
    for i in ck.second_slot:
        reached[i] = 1
    i = reached.find(0)
    while i != -1:
        ck.problem(
            i,
            "unreachable",
            f"unreachable insn {i}",
            "remove dead code (the kernel refuses unreachable instructions)",
        )
        ok = False
        i = reached.find(0, i + 1)
    ck.back_edges = back_edges
    if back_edges:
        desc = ", ".join(f"{t}->{w}" for t, w in back_edges[:4])
        ck.cap_bpf(f"loops (back-edges {desc})")
        ck.notes.append(
            "the program has loops: the verifier must prove each one terminates "
            "(bounded loop); this checker only refuses loops that exit on a comparison "
            "with a register (a bound it cannot see to be constant)"
        )
        for t, w in back_edges:
            exit_cmp = _register_bounded_exit(ck, w, t)
            if exit_cmp is not None:
                ck.problem(
                    exit_cmp,
                    "loop-bound",
                    f"the loop from insn {w} to {t} ends on a comparison with a register "
                    f"(insn {exit_cmp}); unless that register is a constant the verifier "
                    f"cannot bound the loop and refuses the program after 1,000,000 "
                    f"instructions (E2BIG)",
                    "bound the loop by a constant as well, e.g. "
                    "`for (i = 0; i < 64 && i < n; i++)`",
                )
                ok = False
        if ck.unprivileged:
            t, w = back_edges[0]
            ck.problem(
                t,
                "loop",
                f"back-edge from insn {t} to {w}: loops need CAP_BPF",
                "unroll the loop (#pragma unroll with a constant bound) or load with CAP_BPF",
            )
            ok = False
    if len(ck.subprog_starts) > 1 and ck.unprivileged:
        first = next(
            i
            for i, ins in enumerate(ck.insns)
            if i not in ck.second_slot
            and (ins.is_pseudo_call() or (ins.is_ld_imm64() and ins.src == BPF_PSEUDO_FUNC))
        )
        ck.problem(
            first,
            "subprog",
            "loading/calling other bpf or kernel functions are allowed for CAP_BPF and "
            "CAP_SYS_ADMIN",
            "mark the function `static __always_inline`, or load with CAP_BPF",
        )
    return ok


def _register_bounded_exit(ck: Checker, head: int, tail: int) -> int | None:
    """The first conditional jump of the loop HEAD..TAIL (by position) that
    compares two registers and has an edge out of the loop, else None.
    Conservative: a register holding a constant is refused too (documented
    in docs/benchmarks.md among the checker's conservative refusals)."""
    lo, hi = min(head, tail), max(head, tail)
    for i in range(lo, hi + 1):
        ins = ck.insns[i]
        if not is_cond_jump(ins) or ins.source != BPF_X or ins.op == BPF_JCOND:
            continue
        outs = [i + 1, jump_target(i, ins)]
        if any(o is not None and not lo <= o <= hi for o in outs):
            return i
    return None


_CALL_OR_LD64 = frozenset({BPF_JMP | BPF_CALL, BPF_LD | BPF_DW})  # 0x85, 0x18


def _successors(insns: list[Insn], second_slot: set[int]
                ) -> tuple[list[tuple[int, ...] | None], dict[int, int]]:
    """Per instruction, where control goes next (calls: the next instruction and
    the callee; () for exits and the second slots of ld_imm64; None for only
    the next instruction, the common case, to keep a big program small); and
    jump -> its target for the jumps (not calls, not exits)."""
    out: list[tuple[int, ...] | None] = []
    targets: dict[int, int] = {}
    append = out.append
    none: tuple[int, ...] = ()
    for i, ins in enumerate(insns):
        code = ins.code
        cls = code & 0x07
        if cls == BPF_JMP or cls == BPF_JMP32:
            op = code & 0xF0
            if code == BPF_JMP | BPF_EXIT:
                append(none)
            elif op == BPF_JA:
                t = targets[i] = i + (ins.imm if cls == BPF_JMP32 else ins.off) + 1
                append((t,))
            elif op != BPF_CALL and op != BPF_EXIT:
                t = targets[i] = i + ins.off + 1
                append(None if op == BPF_JCOND else (i + 1, t))
            elif code == BPF_JMP | BPF_CALL and ins.src == BPF_PSEUDO_CALL:
                append((i + 1, i + ins.imm + 1))
            else:
                append(None)
        elif code == BPF_LD | BPF_DW:  # ld_imm64
            if ins.src == BPF_PSEUDO_FUNC:
                append((i + 2, i + ins.imm + 1))
            else:
                append((i + 2,))
        else:
            append(None)
    for i in second_slot:
        out[i] = none
        targets.pop(i, None)
    return out, targets


def _next(succs: list[tuple[int, ...] | None], i: int) -> tuple[int, ...]:
    """The successors of insn I (see _successors)."""
    out = succs[i]
    return (i + 1,) if out is None else out


def _sweep(succs: list[tuple[int, ...] | None], n: int) -> bytearray:
    """What is reached from insn 0 when every edge goes forward."""
    reached = bytearray(n)
    reached[0] = 1
    for i, out in enumerate(succs):
        if reached[i]:
            if out is None:
                reached[i + 1] = 1
            else:
                for t in out:
                    reached[t] = 1
    return reached


def _dfs(succs: list[tuple[int, ...] | None], n: int) -> tuple[bytearray, list[tuple[int, int]]]:
    """The kernel's check_cfg: depth-first from insn 0; an edge to an instruction
    still on the DFS stack is a back-edge (a loop)."""
    color = bytearray(n)  # 0 new, 1 on the stack, 2 done
    back_edges: list[tuple[int, int]] = []
    color[0] = 1
    stack: list[list[Any]] = [[0, _next(succs, 0), 0]]
    while stack:
        top = stack[-1]
        node, edges, k = top
        if k < len(edges):
            top[2] = k + 1
            w = edges[k]
            c = color[w]
            if c == 0:
                color[w] = 1
                stack.append([w, _next(succs, w), 0])
            elif c == 1:
                back_edges.append((node, w))
        else:
            color[node] = 2
            stack.pop()
    for i in range(n):
        if color[i]:
            color[i] = 1
    return color, back_edges
