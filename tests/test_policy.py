"""Profiles -> filters: validation with JSON paths, semantics, the convert CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ebpfseccomp import syscalls
from ebpfseccomp.cli import main
from ebpfseccomp.policy import cbpf, libseccomp, model, semantics

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO.parent / "shared" / "profiles"
COMMON = PROFILES / "containers-common-seccomp.json"
needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")


def _base(**extra: object) -> dict:
    prof: dict = {"defaultAction": "SCMP_ACT_ERRNO",
                  "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}
    prof.update(extra)
    return prof


def _rule(**fields: object) -> dict:
    r: dict = {"names": ["socket"], "action": "SCMP_ACT_ALLOW"}
    r.update(fields)
    return r


BAD = [
    ("not json {", None, "not JSON"),
    ("[1, 2]", None, "expected a profile object"),
    (_base(defaultAction="SCMP_ACT_NOPE"), "defaultAction", "unknown action"),
    ({"syscalls": []}, "defaultAction", "missing"),
    (_base(syscalls=[_rule(), _rule(action="SCMP_ACT_BOGUS")]), "syscalls[1].action",
     "unknown action"),
    (_base(syscalls=[_rule(args=[{"index": 0, "value": 1, "op": "SCMP_CMP_XX"}])]),
     "syscalls[0].args[0].op", "unknown comparison"),
    (_base(syscalls=[_rule(args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}])]),
     "syscalls[0].args[0].index", "not 0-5"),
    (_base(syscalls=[_rule(args=[{"index": 1, "value": -1, "op": "SCMP_CMP_EQ"}])]),
     "syscalls[0].args[0].value", "unsigned 64-bit"),
    (_base(syscalls=[_rule(args=[{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"},
                                 {"index": 1, "value": 2, "op": "SCMP_CMP_NE"}])]),
     "syscalls[0].args[1]", "compared twice"),
    (_base(architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_VAX"]), "architectures[1]",
     "unknown architecture"),
    (_base(archMap=[{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["i386"]}]),
     "archMap[0].subArchitectures[0]", "unknown architecture"),
    (_base(syscalls=[_rule(names=["read", "no_such_call"])]), "syscalls[0].names[1]",
     "not a syscall on any architecture"),
    (_base(syscalls=[_rule(includes={"caps": ["CAP_FLY"]})]), "syscalls[0].includes.caps[0]",
     "unknown capability"),
    (_base(syscalls=[_rule(excludes={"arches": ["vax"]})]), "syscalls[0].excludes.arches[0]",
     "unknown architecture"),
    (_base(syscalls=[_rule(includes={"minKernel": "five"})]),
     "syscalls[0].includes.minKernel", "not a kernel version"),
    (_base(syscalls=[_rule(names=[])]), "syscalls[0].names", "empty"),
    (_base(syscalls=[_rule(errnoRet=70000)]), "syscalls[0].errnoRet", "16 data bits"),
    (_base(syscalls=[_rule(action=5)]), "syscalls[0].action", "expected an action name"),
    (_base(syscalls=[_rule(extra=1)]), "syscalls[0].extra", "unknown field"),
    (_base(syscalls="read"), "syscalls", "expected an array"),
    (_base(archMap=[{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_ARM"]}]),
     "archMap[0].subArchitectures[0]", "not an ABI a SCMP_ARCH_X86_64 kernel runs"),
    (_base(archMap=[{"architecture": "SCMP_ARCH_AARCH64",
                     "subArchitectures": ["SCMP_ARCH_X86_64"]}]),
     "archMap[0].subArchitectures[0]", "not an ABI a SCMP_ARCH_AARCH64 kernel runs"),
    (_base(archMap=[{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []},
                    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}]),
     "archMap[1].architecture", "mapped twice"),
    (_base(archMap=[{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": "SCMP_ARCH_X86"}]),
     "archMap[0].subArchitectures", "expected an array"),
    (_base(archMap=[{"subArchitectures": ["SCMP_ARCH_X86"]}]), "archMap[0].architecture",
     "missing"),
    (_base(architectures=["SCMP_ARCH_X86_64"],
           archMap=[{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}]),
     "archMap", "both architectures and archMap"),
    (_base(architectures="SCMP_ARCH_X86"), "architectures", "expected an array"),
]


@pytest.mark.parametrize("profile,path,message", BAD,
                         ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_profiles_name_the_json_path(profile: object, path: str | None, message: str) -> None:
    text = profile if isinstance(profile, str) else json.dumps(profile)
    with pytest.raises(model.PolicyError) as info:
        model.parse(text, source="p.json")
    assert message in info.value.message
    assert info.value.path == (path or "p.json")


def test_cli_bad_profile_exits_1_with_path_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(BAD[5][0]))
    out = tmp_path / "f.c"
    assert main(["convert", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: syscalls[0].args[0].op: unknown comparison" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert main(["convert", str(bad), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)  # cli.main: errors as JSON with --json
    assert doc["path"] == f"{bad}: syscalls[0].args[0].op" and doc["exit_status"] == 1


def test_cli_not_json_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{ nope")
    proc = subprocess.run([sys.executable, "-m", "ebpfseccomp", "convert", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "not JSON" in proc.stderr and "Traceback" not in proc.stderr


def test_conflicting_overlapping_rules_are_refused() -> None:
    prof = _base(syscalls=[
        _rule(args=[{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]),
        _rule(action="SCMP_ACT_ERRNO", args=[{"index": 2, "value": 3, "op": "SCMP_CMP_EQ"}]),
    ], defaultAction="SCMP_ACT_KILL")
    sel = model.select(model.parse(json.dumps(prof)), caps=())
    with pytest.raises(model.PolicyError) as info:
        semantics.compile(sel)
    assert info.value.path == "syscalls[1]"


def test_exclusive_rules_with_different_actions_are_fine() -> None:
    # containers-common's socket rules: ERRNO for (16, *, 9), ALLOW for the complement
    prof = _base(syscalls=[
        _rule(action="SCMP_ACT_ERRNO", errnoRet=22,
              args=[{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"},
                    {"index": 2, "value": 9, "op": "SCMP_CMP_EQ"}]),
        _rule(args=[{"index": 2, "value": 9, "op": "SCMP_CMP_NE"}]),
        _rule(args=[{"index": 0, "value": 16, "op": "SCMP_CMP_NE"}]),
    ])
    plan = semantics.compile(model.select(model.parse(json.dumps(prof)), caps=()))
    x86 = 0xC000003E
    assert plan.decide(x86, 41, (16, 3, 9, 0, 0, 0)) == 0x50000 | 22
    assert plan.decide(x86, 41, (16, 3, 8, 0, 0, 0)) == 0x7FFF0000
    assert plan.decide(x86, 41, (2, 3, 9, 0, 0, 0)) == 0x7FFF0000


def test_first_whole_syscall_rule_wins() -> None:
    prof = _base(defaultAction="SCMP_ACT_KILL", syscalls=[
        _rule(args=[{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]),
        _rule(action="SCMP_ACT_ERRNO"),
        _rule(action="SCMP_ACT_LOG"),
    ])
    plan = semantics.compile(model.select(model.parse(json.dumps(prof)), caps=()))
    assert plan.decide(0xC000003E, 41, (1, 0, 0, 0, 0, 0)) == 0x50001


def test_select_caps_and_arches_like_docker() -> None:
    profile = model.load(str(COMMON))
    sel = model.select(profile, caps=model.parse_caps(None))
    used = {r.index for r in sel.rules}
    assert 9 in used  # arch_prctl: includes.arches amd64
    assert 8 not in used  # arm only
    assert 13 not in used and 14 in used  # open_by_handle_at: no CAP_DAC_READ_SEARCH
    sel = model.select(profile, caps=model.parse_caps("CAP_DAC_READ_SEARCH"))
    used = {r.index for r in sel.rules}
    assert 13 in used and 14 not in used
    assert sel.arches == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert sel.dropped_arches == []
    sel = model.select(profile, arch="aarch64")
    assert sel.arches == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"] and sel.dropped_arches == []
    flat = model.parse(json.dumps(_base(architectures=["SCMP_ARCH_X86", "SCMP_ARCH_AARCH64",
                                                       "SCMP_ARCH_X86_64"])))
    sel = model.select(flat)  # the native ABI is always there, as libseccomp's seccomp_init adds it
    assert sel.arches == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert sel.dropped_arches == ["SCMP_ARCH_AARCH64"]
    with pytest.raises(model.PolicyError):
        model.parse_caps("CAP_FLY")


def test_semantics_64_bit_and_masked() -> None:
    c = semantics.cond(model.Arg(0, 0xFFFFFFFF, 0, "SCMP_CMP_EQ", "p"), 64)
    assert c is not None and c.holds(0xFFFFFFFF) and not c.holds(0xFFFFFFFFFFFFFFFF)
    m = semantics.cond(model.Arg(0, 0xF0, 0x1FF, "SCMP_CMP_MASKED_EQ", "p"), 64)
    assert m is not None and m.value == 0xF0 and m.holds(0x1F3) and not m.holds(0x100)
    assert semantics.cond(model.Arg(0, 0, 5, "SCMP_CMP_MASKED_EQ", "p"), 64) is None
    gt = semantics.cond(model.Arg(0, 1 << 32, 0, "SCMP_CMP_GT", "p"), 64)
    assert gt is not None and gt.holds((1 << 32) + 1) and not gt.holds(0xFFFFFFFF)


def _cmp(i: int, v: int, op: str) -> dict:
    return {"index": i, "value": v, "op": "SCMP_CMP_" + op}


def _with_libseccomp(prof: dict, arch: str = "x86_64"
                     ) -> tuple[model.Selection, semantics.Plan, libseccomp.Classic]:
    """A profile's selection (no capabilities), its plan and libseccomp's program."""
    try:
        libseccomp.library()
    except libseccomp.LibseccompError as exc:
        pytest.skip(str(exc))
    sel = model.select(model.parse(json.dumps(prof)), arch=arch, caps=())
    return sel, semantics.compile(sel), libseccomp.build(sel)


def test_cbpf_detects_libseccomp_stale_accumulator() -> None:
    _sel, plan, classic = _with_libseccomp({"defaultAction": "SCMP_ACT_LOG", "syscalls": [
        {"names": ["semctl"], "action": "SCMP_ACT_ALLOW", "args": [_cmp(0, 160, "GE")]},
        {"names": ["semctl"], "action": "SCMP_ACT_ALLOW",
         "args": [_cmp(1, 9514, "EQ"), _cmp(0, 0xFFFFFFFF80000000, "LT")]}]})
    call = (0xC000003E, 66, (0, 1, 0, 0, 0, 0))
    if cbpf.run(classic.insns, *call) == plan.decide(*call):
        pytest.skip(f"libseccomp {libseccomp.version()} no longer has the stale-accumulator bug")
    assert plan.decide(*call) == 0x7FFC0000  # no rule matches: the default
    assert cbpf.ambiguous_jumps(classic.insns)


@needs_clang
def test_cli_convert_c_o_and_classic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    c = tmp_path / "f.c"
    assert main(["convert", str(COMMON), "-o", str(c), "--kernel-version", "6.12"]) == 0
    text = c.read_text()
    assert "case 135: /* personality */" in text and "syscalls[2]: SCMP_ACT_ALLOW" in text
    for fn in ("x86_64", "i386", "x32"):
        assert f"static __always_inline int filter_{fn}(" in text
    assert "return filter_x32(ctx);" in text
    assert "if (arch == 0x40000003U) { /* SCMP_ARCH_X86 */" in text
    o = tmp_path / "f.o"
    assert main(["convert", str(COMMON), "-o", str(o), "--arch", "aarch64"]) == 0
    assert o.read_bytes()[:4] == b"\x7fELF"
    capsys.readouterr()
    bpf = tmp_path / "f.bpf"
    assert main(["convert", str(COMMON), "--classic", "-o", str(bpf), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bpf.stat().st_size == 8 * doc["classic_insns"]
    assert doc["dropped_architectures"] == []
    assert doc["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


@needs_clang
def test_libseccomp_tree_merge_deviation_is_classified_not_hidden() -> None:
    """Two rules comparing one argument with GT: libseccomp 2.5.4 drops the wider one."""
    from ebpfseccomp.policy import differential

    sel, plan, classic = _with_libseccomp({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["sched_setparam"], "action": "SCMP_ACT_LOG", "args": [_cmp(0, 247, "GT")]},
        {"names": ["sched_setparam"], "action": "SCMP_ACT_LOG",
         "args": [_cmp(4, 0x80000000, "LE"), _cmp(0, 130, "GT")]}]})
    assert (0xC000003E, 142) in semantics.libseccomp_tree_risk(plan)
    call = (0xC000003E, 142, (200, 0, 0, 0, 0, 0))
    assert plan.decide(*call) == 0x7FFC0000  # the second rule matches: LOG
    report = differential.compare(sel, calls=[call])
    assert report.disagreements == 0
    if cbpf.run(classic.insns, *call) != plan.decide(*call):
        assert report.libseccomp_tree_merge == 1


# --- sub-architectures ----------------------------------------------------------

ALLOW, LOG, EPERM, KILL = 0x7FFF0000, 0x7FFC0000, 0x00050001, 0x00000000
AUDIT_X86_64, AUDIT_I386, AUDIT_AARCH64, AUDIT_ARM = 0xC000003E, 0x40000003, 0xC00000B7, 0x40000028
HI = 1 << 32  # an upper half a 32-bit ABI's comparison does not see


def _compat_profile(subs: dict[str, list[str]]) -> dict:
    return {"defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [{"architecture": a, "subArchitectures": s} for a, s in subs.items()],
            "syscalls": [
                {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [_cmp(0, 2, "EQ")]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [_cmp(0, 0xFFFFFFFF, "EQ")]},
                {"names": ["semctl"], "action": "SCMP_ACT_LOG"}]}


@needs_clang
def test_sub_architectures_decide_as_libseccomp() -> None:
    """i386 (socketcall/ipc, 32-bit arguments), x32 (in x86_64's block), arm:
    the plan's answers, and libseccomp's program and the eBPF object agree."""
    from ebpfseccomp.policy import differential

    i386, x32, arm = (syscalls.compat_table(a) for a in ("i386", "x32", "arm"))
    x64, a64 = syscalls.table("x86_64"), syscalls.table("aarch64")
    sel, plan, _ = _with_libseccomp(_compat_profile(
        {"SCMP_ARCH_X86_64": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}))
    expect = [
        (AUDIT_I386, i386["getpid"], (0,) * 6, ALLOW),
        (AUDIT_I386, i386["socketcall"], (1, 7, 0, 0, 0, 0), ALLOW),  # a0 is SYS_SOCKET now
        (AUDIT_I386, i386["socketcall"], (2, 0, 0, 0, 0, 0), EPERM),
        (AUDIT_I386, i386["socket"], (2 | HI, 0, 0, 0, 0, 0), ALLOW),  # low half only
        (AUDIT_I386, i386["socket"], (3, 0, 0, 0, 0, 0), EPERM),
        (AUDIT_I386, i386["personality"], (0xFFFFFFFF | HI, 0, 0, 0, 0, 0), ALLOW),
        (AUDIT_I386, i386["ipc"], (3, 0, 0, 0, 0, 0), LOG),  # SEMCTL
        (AUDIT_I386, i386["ipc"], (3 | HI, 0, 0, 0, 0, 0), LOG),
        (AUDIT_I386, i386["ipc"], (2, 0, 0, 0, 0, 0), EPERM),
        (AUDIT_I386, i386["semctl"], (0,) * 6, LOG),
        (AUDIT_X86_64, x64["socket"], (2 | HI, 0, 0, 0, 0, 0), EPERM),  # 64-bit: all of it
        (AUDIT_X86_64, x64["personality"], (0xFFFFFFFF | HI, 0, 0, 0, 0, 0), EPERM),
        (AUDIT_X86_64, x32["getpid"], (0,) * 6, ALLOW),
        (AUDIT_X86_64, x32["socket"], (2 | HI, 0, 0, 0, 0, 0), ALLOW),  # x32: low half only
        (AUDIT_X86_64, 0x40000000 + 999, (0,) * 6, EPERM),  # x32 in the filter: the default
        (AUDIT_X86_64, 0xFFFFFFFF, (0,) * 6, EPERM),
        (AUDIT_ARM, arm["getpid"], (0,) * 6, KILL),  # not in the filter: bad-arch action
    ]
    assert [plan.decide(a, n, args) for a, n, args, _ in expect] == [e for *_, e in expect]
    report = differential.compare(sel, calls=[(a, n, args) for a, n, args, _ in expect])
    assert report.compared == len(expect) and report.disagreements == 0, report.examples

    sel, plan, _ = _with_libseccomp(_compat_profile({"SCMP_ARCH_X86_64": ["SCMP_ARCH_X86"]}))
    expect = [(AUDIT_X86_64, x32["getpid"], (0,) * 6, KILL),  # x32 left out: bad-arch action
              (AUDIT_X86_64, 0xFFFFFFFF, (0,) * 6, EPERM),  # -1 is no ABI: the default
              (AUDIT_X86_64, x64["getpid"], (0,) * 6, ALLOW)]
    assert [plan.decide(a, n, args) for a, n, args, _ in expect] == [e for *_, e in expect]
    assert differential.compare(sel, calls=[c[:3] for c in expect]).disagreements == 0

    sel, plan, _ = _with_libseccomp(_compat_profile({"SCMP_ARCH_AARCH64": ["SCMP_ARCH_ARM"]}),
                                    arch="aarch64")
    expect = [(AUDIT_ARM, arm["getpid"], (0,) * 6, ALLOW),
              (AUDIT_ARM, arm["socket"], (2 | HI, 0, 0, 0, 0, 0), ALLOW),
              (AUDIT_ARM, arm["semctl"], (0,) * 6, LOG),
              (AUDIT_AARCH64, a64["socket"], (2 | HI, 0, 0, 0, 0, 0), EPERM),
              (AUDIT_I386, i386["getpid"], (0,) * 6, KILL)]
    assert [plan.decide(a, n, args) for a, n, args, _ in expect] == [e for *_, e in expect]
    assert differential.compare(sel, calls=[c[:3] for c in expect]).disagreements == 0


def test_multiplexed_rules_that_collide_are_refused_like_libseccomp() -> None:
    """Exclusive on x86_64 (a0 16 vs 2), the same chain on i386's socketcall
    (a0 replaced by SYS_SOCKET): libseccomp refuses it (EEXIST), so does convert."""
    prof = _base(archMap=[{"architecture": "SCMP_ARCH_X86_64",
                           "subArchitectures": ["SCMP_ARCH_X86"]}], syscalls=[
        _rule(action="SCMP_ACT_ERRNO", errnoRet=22, args=[_cmp(0, 16, "EQ")]),
        _rule(args=[_cmp(0, 2, "EQ")])])
    sel = model.select(model.parse(json.dumps(prof)), caps=())
    with pytest.raises(model.PolicyError) as info:
        semantics.compile(sel)
    assert info.value.path == "syscalls[1]"
    assert "socketcall on i386 (calls it multiplexes: socket)" in info.value.message
    try:
        libseccomp.library()
    except libseccomp.LibseccompError:
        return
    with pytest.raises(libseccomp.LibseccompError, match="File exists"):
        libseccomp.build(sel)
    no_sub = model.select(model.parse(json.dumps(dict(prof, archMap=[]))), caps=())
    assert semantics.compile(no_sub).arches[0].name == "x86_64"  # fine without i386


def test_compat_tables_come_from_the_kernel() -> None:
    i386, x32, arm = (syscalls.compat_table(a) for a in ("i386", "x32", "arm"))
    assert (i386["read"], i386["socketcall"], i386["ipc"], i386["socket"]) == (3, 102, 117, 359)
    assert x32["read"] == 0x40000000 and x32["rt_sigaction"] == 0x40000000 + 512
    assert arm["getpid"] == 20 and arm["set_tls"] == 0x0F0005
    assert "socketcall" not in x32 and "arch_prctl" not in arm


def test_cli_arch_faults_and_other_machines_abis(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_base(archMap=[
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_X32"]}])))
    assert main(["convert", str(bad), "--arch", "x86_64"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: archMap[1].subArchitectures[0]: SCMP_ARCH_X32 is not an ABI" in err
    assert "Traceback" not in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_base(architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64",
                                                     "SCMP_ARCH_ARM", "SCMP_ARCH_X32"])))
    assert main(["convert", str(other), "--arch", "x86_64", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]
    assert doc["dropped_architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "SCMP_ARCH_ARM is not an ABI a SCMP_ARCH_X86_64 kernel runs" in captured.err
