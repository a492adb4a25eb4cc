"""Profiles -> filters: validation with JSON paths, semantics, the convert CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert sel.dropped_arches == ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]
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


def test_cbpf_detects_libseccomp_stale_accumulator() -> None:
    try:
        libseccomp.library()
    except libseccomp.LibseccompError as exc:
        pytest.skip(str(exc))

    def a(i: int, v: int, op: str) -> dict:
        return {"index": i, "value": v, "op": "SCMP_CMP_" + op}

    prof = {"defaultAction": "SCMP_ACT_LOG", "syscalls": [
        {"names": ["semctl"], "action": "SCMP_ACT_ALLOW", "args": [a(0, 160, "GE")]},
        {"names": ["semctl"], "action": "SCMP_ACT_ALLOW",
         "args": [a(1, 9514, "EQ"), a(0, 0xFFFFFFFF80000000, "LT")]}]}
    sel = model.select(model.parse(json.dumps(prof)), caps=())
    classic = libseccomp.build(sel)
    plan = semantics.compile(sel)
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
    assert "static __always_inline int filter_x86_64" in text
    o = tmp_path / "f.o"
    assert main(["convert", str(COMMON), "-o", str(o), "--arch", "aarch64"]) == 0
    assert o.read_bytes()[:4] == b"\x7fELF"
    capsys.readouterr()
    bpf = tmp_path / "f.bpf"
    assert main(["convert", str(COMMON), "--classic", "-o", str(bpf), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bpf.stat().st_size == 8 * doc["classic_insns"]
    assert doc["dropped_architectures"] == ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]


@needs_clang
def test_libseccomp_tree_merge_deviation_is_classified_not_hidden() -> None:
    """Two rules comparing one argument with GT: libseccomp 2.5.4 drops the wider one."""
    try:
        libseccomp.library()
    except libseccomp.LibseccompError as exc:
        pytest.skip(str(exc))
    from ebpfseccomp.policy import differential

    def a(i: int, v: int, op: str) -> dict:
        return {"index": i, "value": v, "op": "SCMP_CMP_" + op}

    prof = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["sched_setparam"], "action": "SCMP_ACT_LOG", "args": [a(0, 247, "GT")]},
        {"names": ["sched_setparam"], "action": "SCMP_ACT_LOG",
         "args": [a(4, 0x80000000, "LE"), a(0, 130, "GT")]}]}
    sel = model.select(model.parse(json.dumps(prof)), caps=())
    plan = semantics.compile(sel)
    assert (0xC000003E, 142) in semantics.libseccomp_tree_risk(plan)
    call = (0xC000003E, 142, (200, 0, 0, 0, 0, 0))
    assert plan.decide(*call) == 0x7FFC0000  # the second rule matches: LOG
    report = differential.compare(sel, calls=[call])
    assert report.disagreements == 0
    if cbpf.run(libseccomp.build(sel).insns, *call) != plan.decide(*call):
        assert report.libseccomp_tree_merge == 1
