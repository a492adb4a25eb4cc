"""Pass 2, control flow and loops (the kernel's check_subprogs/check_cfg):
subprogram bounds, jumps inside their subprogram and not into an ld_imm64,
the last instruction of every subprogram, unreachable code, back-edges (loops
need CAP_BPF) and loops the verifier cannot bound."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..insn import (
    BPF_CALL,
    BPF_EXIT,
    BPF_JA,
    BPF_JMP,
    BPF_JMP32,
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
    for i, ins in enumerate(ck.insns):
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
    for k in range(len(ck.subprog_starts)):
        lo, hi = bounds[k], bounds[k + 1]
        for i in range(lo, hi):
            if i in ck.second_slot:
                continue
            ins = ck.insns[i]
            t = jump_target(i, ins)
            if t is not None and not lo <= t < hi:
                name = ck.prog.subprogs.get(lo, f"subprogram at {lo}")
                ck.problem(
                    i,
                    "jump-range",
                    f"jump out of range from insn {i} to {t} ({name} is insns {lo}..{hi - 1})",
                    "jumps must stay inside their function",
                )
                ok = False
            elif t is not None and t in ck.second_slot:
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
    # check_cfg: DFS from insn 0 following jumps and calls
    succ: dict[int, list[int]] = {}
    for i, ins in enumerate(ck.insns):
        if i in ck.second_slot:
            continue
        nxt = i + 2 if ins.is_ld_imm64() else i + 1
        out: list[int] = []
        if ins.is_exit():
            pass
        elif ins.cls in (BPF_JMP, BPF_JMP32) and ins.op == BPF_JA:
            out.append(jump_target(i, ins))  # type: ignore[arg-type]
        elif is_cond_jump(ins) and ins.op != BPF_JCOND:
            out.extend([nxt, jump_target(i, ins)])  # type: ignore[list-item]
        elif ins.is_pseudo_call():
            out.extend([nxt, i + ins.imm + 1])
        elif ins.is_ld_imm64() and ins.src == BPF_PSEUDO_FUNC:
            out.extend([nxt, i + ins.imm + 1])
        else:
            out.append(nxt)
        for t in out:
            if not 0 <= t < ck.n:
                ck.problem(
                    i,
                    "jump-range",
                    f"jump out of range from insn {i} to {t}",
                    "the program falls off its end; end it with `exit`",
                )
                return False
        succ[i] = out
    ck.succ = succ
    ck.cfg_ok = True
    state: dict[int, int] = {}  # 1 on stack, 2 done
    back_edges: list[tuple[int, int]] = []
    stack: list[tuple[int, int]] = [(0, 0)]
    state[0] = 1
    while stack:
        node, k = stack[-1]
        edges = succ.get(node, [])
        if k < len(edges):
            stack[-1] = (node, k + 1)
            w = edges[k]
            st = state.get(w, 0)
            if st == 0:
                state[w] = 1
                stack.append((w, 0))
            elif st == 1:
                back_edges.append((node, w))
        else:
            state[node] = 2
            stack.pop()
    for i in range(ck.n):
        if i not in ck.second_slot and i not in state:
            ck.problem(
                i,
                "unreachable",
                f"unreachable insn {i}",
                "remove dead code (the kernel refuses unreachable instructions)",
            )
            ok = False
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

