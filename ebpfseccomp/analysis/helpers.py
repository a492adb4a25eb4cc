"""Helpers and tiers: which helpers the program calls, whether seccomp programs
may call them (the contract's tiers), GPL-only helpers, kfuncs, and the tier
the program needs to load (``load_tier``) and to work fully (``tier``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import contract
from ..contract import Tier
from ..insn import (
    BPF_CALL,
    BPF_JMP,
    BPF_PSEUDO_KFUNC_CALL,
)
from .report import HelperUse

if TYPE_CHECKING:
    from .checker import Checker

GPL_COMPATIBLE = {
    "GPL",
    "GPL v2",
    "GPL and additional rights",
    "Dual BSD/GPL",
    "Dual MIT/GPL",
    "Dual MPL/GPL",
}

#: Helpers the kernel marks gpl_only (6.12) among those a seccomp program can reach.
GPL_ONLY_HELPERS = frozenset(
    contract.HELPER_IDS[n]
    for n in (
        "probe_read_user", "probe_read_user_str", "probe_read_kernel",
        "probe_read_kernel_str", "trace_printk", "trace_vprintk", "get_current_task",
        "get_current_task_btf", "snprintf_btf", "task_pt_regs", "timer_init",
        "timer_set_callback", "timer_start", "timer_cancel", "spin_lock", "spin_unlock",
        "kptr_xchg",
    )
)  # fmt: skip



def check_helpers(ck: Checker) -> None:
    """Every call: a known helper seccomp programs may call at the loader's tier,
    GPL-only helpers only with a GPL-compatible license, no kfuncs."""
    license = ck.obj.license
    gpl = license in GPL_COMPATIBLE
    insns = ck.insns
    for i in [i for i, ins in enumerate(insns) if ins.code == BPF_JMP | BPF_CALL]:
        ins = insns[i]
        if i in ck.second_slot:
            continue
        if ins.is_call() and ins.src == BPF_PSEUDO_KFUNC_CALL:
            ck.problem(
                i,
                "kfunc",
                f"calling kernel function (kfunc btf_id {ins.imm}) is not allowed for "
                "seccomp programs",
                "use only the helpers of the contract",
            )
        elif ins.is_helper_call():
            fid = ins.imm
            name = contract.HELPER_NAMES.get(fid)
            tier = contract.helper_tier(fid) if name else None
            use = ck.helpers.setdefault(fid, HelperUse(fid, contract.helper_name(fid), tier))
            use.insns.append(i)
            if name is None or fid == 0:
                ck.problem(
                    i,
                    "unknown-helper",
                    f"invalid func unknown#{fid}",
                    "call only helpers from ebpfseccomp/helpers.h (Linux 6.12 ids)",
                )
            elif tier is None:
                ck.problem(
                    i,
                    "helper",
                    f"program of this type cannot use helper bpf_{name}#{fid}",
                    "seccomp filters may call map_lookup/update/delete_elem, ktime_get_ns, "
                    "get_prandom_u32, get_current_uid_gid, get_current_pid_tgid, "
                    "probe_read_user(_str)",
                )
            elif tier == Tier.TRACING and ck.unprivileged:
                ck.problem(
                    i,
                    "tracing-helper",
                    f"helper bpf_{name}#{fid} is in the TRACING tier, which needs "
                    "CAP_BPF and CAP_PERFMON",
                    "drop the call (e.g. debug prints) or load with CAP_BPF+CAP_PERFMON",
                )
            if name is not None and fid in GPL_ONLY_HELPERS and not gpl:
                ck.problem(
                    i,
                    "gpl",
                    f"cannot call GPL-restricted function bpf_{name} from non-GPL "
                    f"compatible program (license {license!r})",
                    'add char LICENSE[] SEC("license") = "GPL";',
                )


def tiers(ck: Checker) -> tuple[Tier, Tier]:
    """(tier, load_tier): what the program needs to work fully, and the lowest
    tier at which the kernel accepts it (see Report)."""
    helpers = ck.helpers.values()
    load_tier = Tier.NONE
    if ck.prog.relocs or ck.helpers:
        load_tier = Tier.EXTENDED
    if any(h.tier == Tier.TRACING for h in helpers):
        load_tier = Tier.TRACING
    tier = load_tier
    if any(h.id in contract.USER_READ_HELPERS for h in helpers):
        tier = max(tier, Tier.PTRACE)
        ck.notes.append(
            "probe_read_user(_str) loads at EXTENDED, but reads of non-dumpable tasks "
            "return -EPERM unless the loader has CAP_SYS_PTRACE; user memory can change "
            "after the check (TOCTOU)"
        )
    return tier, load_tier
