"""privilege.predict: the kernel's load rules as a table, on the host.

The rules under test (../shared/DESIGN-NOTES.md 4-6 and kernel-patches/):
loading needs CAP_BPF/CAP_SYS_ADMIN unless kernel.unprivileged_bpf_disabled
is 0; the Yama hook allows helpers and maps at ptrace_scope 0/1, at 2 only
with CAP_SYS_PTRACE, never at 3; tracing helpers need CAP_BPF and
CAP_PERFMON on top; BPF-to-BPF calls, loops and >4096 instructions need
CAP_BPF.  The VM tests (tests/vm/test_privilege_matrix.py) check the same
table against the patched kernel.
"""

from __future__ import annotations

import errno
import itertools
from types import SimpleNamespace

import pytest
from asm import call, call_rel, exit_, flatten, ja, jeq, ld_imm64, mov

from ebpfseccomp.contract import HELPER_IDS, Tier
from ebpfseccomp.privilege import (
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    Credentials,
    Needs,
    Prediction,
    SystemPolicy,
    Use,
    granted_tier,
    hook_allows,
    predict,
)

H = HELPER_IDS

# --- objects, as what they need ----------------------------------------------------

OBJECTS: dict[str, Needs] = {
    "plain": Needs(insn_count=4),
    "hashmap": Needs(helpers={H["map_lookup_elem"]: Use(6, "f.c:10: v = lookup()")},
                     maps={"allowed": Use(4)}, map_types={"allowed": 1}, insn_count=12),
    "global": Needs(maps={".bss": Use(2)}, map_types={".bss": 2}, globals_={".bss"},
                    insn_count=8),
    "ktime": Needs(helpers={H["ktime_get_ns"]: Use(0)}, insn_count=3),
    "readuser": Needs(helpers={H["probe_read_user_str"]: Use(9)}, insn_count=20),
    "tracing": Needs(helpers={H["get_smp_processor_id"]: Use(0)}, insn_count=3),
    "forbidden": Needs(helpers={H["skb_store_bytes"]: Use(0)}, insn_count=3),
    "calls": Needs(calls=Use(1), insn_count=6),
    "loop": Needs(loop=Use(5), insn_count=7),
    "big": Needs(insn_count=5000),
    "lru": Needs(helpers={H["map_lookup_elem"]: Use(3)}, maps={"m": Use(1)},
                 map_types={"m": 9}, insn_count=9),
}

CREDS: dict[str, Credentials] = {
    "root": Credentials.from_values(0, ["CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON",
                                        "CAP_SYS_PTRACE"]),
    "nobody": Credentials.from_values(65534, []),
    "ptrace": Credentials.from_values(1000, ["CAP_SYS_PTRACE"]),
    "bpf": Credentials.from_values(1000, ["CAP_BPF"]),
    "bpf+perfmon": Credentials.from_values(1000, ["CAP_BPF", "CAP_PERFMON"]),
    "bpf+perfmon+ptrace": Credentials.from_values(1000, ["bpf", "perfmon", "sys_ptrace"]),
    "sysadmin": Credentials.from_values(0, [CAP_SYS_ADMIN]),
    "userns-root": Credentials.from_values(0, [CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON,
                                               CAP_SYS_PTRACE], initial_userns=False),
}

SCOPES = (None, 0, 1, 2, 3)
UBD = (0, 2)


def policy(scope: int | None, ubd: int) -> SystemPolicy:
    return SystemPolicy(ptrace_scope=scope, unprivileged_bpf_disabled=ubd)


# --- the decision table, written out as the kernel's rules -----------------------------


def expected(obj: str, cred: str, scope: int | None, ubd: int) -> tuple[int | None, Tier]:
    """(errno or None, granted tier), stated independently of privilege.py."""
    c = CREDS[cred]
    init = c.initial_userns
    bpf = init and (CAP_BPF in c.caps or CAP_SYS_ADMIN in c.caps)
    perfmon = init and (CAP_PERFMON in c.caps or CAP_SYS_ADMIN in c.caps)
    ptrace = CAP_SYS_PTRACE in c.caps  # ns_capable: Yama's scope 2 rule
    # reads of non-dumpable tasks: CAP_SYS_PTRACE over the task's mm, which
    # a child user namespace never has over the initial namespace's tasks
    reads_any = init and ptrace
    hook = scope in (None, 0, 1) or (scope == 2 and ptrace)
    tier = (Tier.NONE if not hook else Tier.TRACING if bpf and perfmon
            else Tier.PTRACE if reads_any else Tier.EXTENDED)
    if ubd and not bpf:
        return errno.EPERM, tier
    table: dict[str, int | None] = {
        "plain": None,
        "hashmap": None if hook else errno.EACCES,
        "global": None if hook else errno.EACCES,
        "ktime": None if hook else errno.EINVAL,
        "readuser": None if hook else errno.EINVAL,
        "tracing": None if tier == Tier.TRACING else errno.EINVAL,
        "forbidden": errno.EINVAL,
        "calls": None if bpf else errno.EPERM,
        "loop": None if bpf else errno.EINVAL,
        "big": None if bpf else errno.E2BIG,
        "lru": (None if hook else errno.EACCES) if bpf else errno.EPERM,
    }
    return table[obj], tier


CELLS = list(itertools.product(sorted(OBJECTS), sorted(CREDS), SCOPES, UBD))


@pytest.mark.parametrize(("obj", "cred", "scope", "ubd"), CELLS,
                         ids=[f"{o}-{c}-scope{s}-ubd{u}" for o, c, s, u in CELLS])
def test_prediction_table(obj: str, cred: str, scope: int | None, ubd: int) -> None:
    err, tier = expected(obj, cred, scope, ubd)
    p = predict(OBJECTS[obj], CREDS[cred], policy(scope, ubd))
    assert (p.errno, p.tier) == (err, tier), p.reasons
    assert p.ok is (err is None)
    assert p.reasons, "every prediction explains itself"


def test_table_covers_every_tier_and_errno() -> None:
    seen = {expected(*cell) for cell in CELLS}
    assert {t for _, t in seen} == set(Tier)
    assert {e for e, _ in seen} == {None, errno.EPERM, errno.EACCES, errno.EINVAL, errno.E2BIG}


# --- the rules one by one, with their messages ---------------------------------------------


def test_hook_by_scope() -> None:
    nobody, ptrace = CREDS["nobody"], CREDS["ptrace"]
    assert hook_allows(nobody, policy(None, 0))[0]
    assert hook_allows(nobody, policy(0, 0))[0]
    assert hook_allows(nobody, policy(1, 0))[0]
    assert not hook_allows(nobody, policy(2, 0))[0]
    assert hook_allows(ptrace, policy(2, 0))[0]
    assert not hook_allows(ptrace, policy(3, 0))[0]
    assert not hook_allows(CREDS["root"], policy(3, 0))[0]


def test_ptrace_in_child_userns_counts_for_the_hook_but_not_for_bpf() -> None:
    c = CREDS["userns-root"]
    assert hook_allows(c, policy(2, 0))[0]  # ns_capable(current_user_ns(), CAP_SYS_PTRACE)
    assert not c.bpf_capable and not c.perfmon_capable  # capable() is the initial namespace
    # ... nor for reading non-dumpable tasks: the kernel asks for CAP_SYS_PTRACE
    # over the task's mm, which `unshare -U` does not give (issue 8, finding 2)
    assert granted_tier(c, policy(2, 0)) == Tier.EXTENDED
    assert not predict(OBJECTS["readuser"], c, policy(1, 0)).reads_any_task
    p = predict(OBJECTS["hashmap"], c, policy(1, 2))
    assert p.errno == errno.EPERM
    assert "child user namespace" in p.message


def test_scope2_message_names_helper_rule_and_fix() -> None:
    p = predict(OBJECTS["ktime"], CREDS["nobody"], policy(2, 0))
    assert not p.ok and p.errno == errno.EINVAL
    text = p.message
    assert "bpf_ktime_get_ns" in text
    assert "kernel.yama.ptrace_scope=2 allows eBPF helpers only with CAP_SYS_PTRACE" in text
    assert "ptrace_scope to 1 or 0" in text


def test_map_refusal_names_map_and_source_line() -> None:
    p = predict(OBJECTS["hashmap"], CREDS["nobody"], policy(3, 0))
    assert p.errno == errno.EACCES  # map references are checked before helper calls
    assert "map 'allowed'" in p.reasons[0] and "insn 4" in p.reasons[0]
    assert "ptrace_scope=3" in p.reasons[0]
    assert any("bpf_map_lookup_elem" in r and "f.c:10" in r for r in p.reasons[1:])


def test_global_refusal_says_global_variable() -> None:
    p = predict(OBJECTS["global"], CREDS["ptrace"], policy(3, 0))
    assert p.errno == errno.EACCES and "global variable section '.bss'" in p.message


def test_unprivileged_bpf_disabled_message_offers_pinned_and_daemon() -> None:
    p = predict(OBJECTS["plain"], CREDS["nobody"], policy(1, 2))
    assert p.errno == errno.EPERM
    for words in ("kernel.unprivileged_bpf_disabled=2", "CAP_BPF", "--pinned", "--daemon",
                  "unprivileged_bpf_disabled=0"):
        assert words in p.message
    p1 = predict(OBJECTS["plain"], CREDS["nobody"], policy(1, 1))
    assert "until reboot" in p1.message


def test_tracing_message_names_missing_capability() -> None:
    p = predict(OBJECTS["tracing"], CREDS["bpf"], policy(1, 0))
    assert p.errno == errno.EINVAL
    assert "bpf_get_smp_processor_id" in p.message and "CAP_PERFMON" in p.message
    assert "missing: CAP_PERFMON" in p.message


def test_forbidden_helper_is_never_allowed() -> None:
    p = predict(OBJECTS["forbidden"], CREDS["root"], policy(0, 0))
    assert p.errno == errno.EINVAL and "may never call" in p.message


def test_kernel_order_of_errors() -> None:
    # calls (EPERM, add_subprog) come before maps (EACCES, resolve_pseudo_ldimm64)
    # which come before loops (EINVAL, check_cfg) and helpers (EINVAL, do_check)
    n = Needs(helpers={H["ktime_get_ns"]: Use(9)}, maps={"m": Use(2)}, map_types={"m": 1},
              calls=Use(4), loop=Use(7), insn_count=20)
    p = predict(n, CREDS["nobody"], policy(3, 0))
    assert p.errno == errno.EPERM
    assert len(p.reasons) == 4
    n.calls = None
    assert predict(n, CREDS["nobody"], policy(3, 0)).errno == errno.EACCES
    n.maps, n.map_types = {}, {}
    assert predict(n, CREDS["nobody"], policy(3, 0)).errno == errno.EINVAL
    n.insn_count = 5000
    assert predict(n, CREDS["nobody"], policy(3, 0)).errno == errno.E2BIG


def test_reads_any_task_only_with_ptrace_and_hook() -> None:
    assert predict(OBJECTS["readuser"], CREDS["ptrace"], policy(1, 0)).reads_any_task
    assert not predict(OBJECTS["readuser"], CREDS["nobody"], policy(1, 0)).reads_any_task
    assert not predict(OBJECTS["readuser"], CREDS["bpf+perfmon"], policy(1, 0)).reads_any_task
    assert predict(OBJECTS["readuser"], CREDS["bpf+perfmon+ptrace"], policy(2, 0)).reads_any_task


def test_needed_tier() -> None:
    assert OBJECTS["plain"].tier == Tier.NONE
    assert OBJECTS["global"].tier == Tier.EXTENDED
    assert OBJECTS["hashmap"].tier == Tier.EXTENDED
    assert OBJECTS["tracing"].tier == Tier.TRACING


def test_prediction_to_dict() -> None:
    d = predict(OBJECTS["ktime"], CREDS["nobody"], policy(2, 0)).to_dict()
    assert d["ok"] is False and d["errno"] == "EINVAL" and d["tier"] == "none"
    ok = predict(OBJECTS["ktime"], CREDS["nobody"], policy(1, 0))
    assert isinstance(ok, Prediction) and ok.to_dict()["tier"] == "extended"


# --- credentials and policy from values and from the system --------------------------------


def test_credentials_from_values() -> None:
    c = Credentials.from_values(1000, ["CAP_BPF", "perfmon", 19])
    assert c.caps == {CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE}
    assert c.bpf_capable and c.perfmon_capable
    with pytest.raises(ValueError):
        Credentials.from_values(0, ["CAP_NOPE"])
    m = Credentials.from_mask(0, 1 << CAP_BPF | 1 << CAP_SYS_ADMIN)
    assert m.caps == {CAP_BPF, CAP_SYS_ADMIN}


def test_current_credentials_match_proc_status() -> None:
    c = Credentials.current()
    eff = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                eff = int(line.split()[1], 16)
    assert c.caps == Credentials.from_mask(0, eff).caps
    assert c == Credentials.of_pid(__import__("os").getpid())


def test_system_policy_current() -> None:
    p = SystemPolicy.current()
    import os

    if os.path.exists("/proc/sys/kernel/yama/ptrace_scope"):
        assert p.ptrace_scope in (0, 1, 2, 3)
    else:
        assert p.ptrace_scope is None
    assert p.unprivileged_bpf_disabled in (0, 1, 2)


# --- Needs from instructions -----------------------------------------------------------------


def _prog(insns: list, relocs: list | None = None) -> SimpleNamespace:
    return SimpleNamespace(name="p", insns=insns, relocs=relocs or [], lines={}, subprogs={0: "p"})


def test_needs_from_program_helpers_maps_calls_loops() -> None:
    insns = flatten(ld_imm64(1, 0), call(H["map_lookup_elem"]), call_rel(2), mov(0, 0),
                    jeq(0, 1, -3), exit_(), mov(0, 0), exit_())
    reloc = SimpleNamespace(insn=0, kind="map", map="allowed", offset=0, symbol="allowed")
    obj = SimpleNamespace(maps={"allowed": SimpleNamespace(type=1, is_global=False),
                                ".rodata": SimpleNamespace(type=2, is_global=True)})
    n = Needs.from_program(obj, _prog(insns, [reloc]))
    assert set(n.helpers) == {H["map_lookup_elem"]} and n.helpers[1].insn == 2
    assert set(n.maps) == {"allowed"} and n.maps["allowed"].insn == 0
    assert n.calls is not None and n.calls.insn == 3
    assert n.loop is not None and n.loop.insn == 5
    assert n.map_types == {"allowed": 1, ".rodata": 2} and n.globals_ == {".rodata"}
    assert n.insn_count == len(insns)


def test_needs_from_program_forward_jumps_are_not_loops() -> None:
    n = Needs.from_program(SimpleNamespace(maps={}), _prog(flatten(jeq(1, 0, 1), ja(0),
                                                                   mov(0, 0), exit_())))
    assert n.loop is None and n.calls is None and not n.helpers and n.tier == Tier.NONE
