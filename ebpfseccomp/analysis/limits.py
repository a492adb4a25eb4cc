"""Limits: the instruction count (4096 without CAP_BPF, 1,000,000 with it),
the call depth and the combined stack size of the call chain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import contract

if TYPE_CHECKING:
    from .checker import Checker

MAX_CALL_FRAMES = 8




def check_frames(ck: Checker) -> None:
    calls: dict[int, set[int]] = {s: set() for s in ck.subprog_starts}
    for i, ins in enumerate(ck.insns):
        if ins.code != 0x85 or i in ck.second_slot or not ins.is_pseudo_call():
            continue  # 0x85: BPF_JMP | BPF_CALL
        calls[ck.subprog_of(i)].add(i + ins.imm + 1)

    def frame(s: int) -> int:
        d = ck.stack_depth.get(s, 0)
        return (max(d, 1) + 31) // 32 * 32

    worst = 0

    def walk(s: int, path: list[int], depth: int) -> None:
        nonlocal worst
        if s in path:
            names = " -> ".join(ck.prog.subprogs.get(x, str(x)) for x in path + [s])
            ck.problem(
                s, "recursion", f"recursive call: {names}", "BPF programs cannot recurse"
            )
            return
        if len(path) + 1 > MAX_CALL_FRAMES:
            ck.problem(
                s,
                "call-depth",
                f"the call stack of {len(path) + 1} frames is too deep",
                f"nest at most {MAX_CALL_FRAMES} calls",
            )
            return
        depth += frame(s)
        worst = max(worst, depth)
        if depth > contract.MAX_BPF_STACK:
            ck.problem(
                s,
                "stack",
                f"combined stack size of {len(path) + 1} calls is {depth}. Too large",
                "use less stack (move big buffers into a map or a global)",
            )
            return
        for t in sorted(calls.get(s, ())):
            walk(t, path + [s], depth)

    walk(0, [], 0)
    ck.total_stack = ck.stack_depth.get(0, 0)


def check_size(ck: Checker) -> None:
    """4096 instructions without CAP_BPF (BPF_MAXINSNS), 1,000,000 with it."""
    n = ck.n
    limit_priv = contract.BPF_COMPLEXITY_LIMIT_INSNS
    limit_unpriv = contract.BPF_MAXINSNS
    if n > limit_priv:
        ck.problem(
            None,
            "too-big",
            f"program is {n} instructions; the kernel's limit is {limit_priv}",
            "split the filter or use a map instead of long switch chains",
        )
    elif n > limit_unpriv:
        ck.cap_bpf(f"{n} instructions (more than {limit_unpriv})")
        if ck.unprivileged:
            ck.problem(
                None,
                "too-big",
                f"program is {n} instructions; without CAP_BPF the limit is {limit_unpriv}",
                "use a hash map for long syscall lists, or load with CAP_BPF",
            )
