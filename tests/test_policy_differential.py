"""The host layer of issue 10's proof: converted eBPF filter == libseccomp's filter.

Every profile goes through `ebpfseccomp.policy.differential.compare`: the
eBPF object in the project's emulator, libseccomp's classic program in the
cBPF interpreter, and the converter's plan, over generated system calls
(every syscall number, unknown and x32 numbers, every arch of the filter and
others, every argument at its boundaries).  Zero disagreements allowed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebpfseccomp import syscalls
from ebpfseccomp.policy import differential, libseccomp, model

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO.parent / "shared" / "profiles"

pytestmark = [
    pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed"),
]


def _libseccomp_or_skip() -> None:
    try:
        libseccomp.library()
    except libseccomp.LibseccompError as exc:
        pytest.skip(str(exc))


def real_profiles() -> list[Path]:
    found = sorted(PROFILES.glob("*.json"))
    assert found, f"no profiles in {PROFILES} (../shared/profiles beside the repository)"
    return found


#: Syscalls Linux 6.12 has and libseccomp 2.5.4's table lacks (docs/policies.md):
#: the eBPF filter follows the kernel's table, libseccomp skips the name.
LIBSECCOMP_254_GAPS = {"statmount", "listmount", "lsm_get_self_attr", "lsm_set_self_attr",
                       "lsm_list_modules", "mseal", "uretprobe", "map_shadow_stack"}


def _check(report: differential.Report, minimum: int, real: bool = False) -> None:
    assert report.compared >= minimum
    detail = "\n".join(str(d) for d in report.examples)
    assert report.disagreements == 0, f"{report.disagreements} disagreements:\n{detail}"
    if real:
        # libseccomp's own stale-accumulator bug must not show on real profiles:
        # there its filter and ours agree on every call.
        assert report.ambiguous_jumps == 0
        assert report.libseccomp_stale_accumulator == 0
        assert report.libseccomp_tree_merge == 0
        gaps = {g.split(":", 1)[1] for g in report.table_gap_names}
        if libseccomp.version() == "2.5.4":
            assert gaps <= LIBSECCOMP_254_GAPS, gaps
    else:
        assert report.libseccomp_table_gap == 0  # generated profiles use agreeing names


CASES = [("x86_64", None), ("x86_64", "all"), ("aarch64", "none")]


@pytest.mark.slow
@pytest.mark.parametrize("arch,caps", CASES, ids=[f"{a}-caps-{c or 'default'}" for a, c in CASES])
@pytest.mark.parametrize("profile", real_profiles(), ids=lambda p: p.name)
def test_real_profile_equals_libseccomp(profile: Path, arch: str, caps: str | None) -> None:
    _libseccomp_or_skip()
    sel = model.select(model.load(str(profile)), arch=arch, caps=model.parse_caps(caps),
                       kernel=(6, 12))
    report = differential.compare(sel, minimum=100_000)
    print(f"{profile.name} {arch} caps={caps} {sel.arches}: {report.compared} calls, "
          f"{report.disagreements} disagreements, {report.libseccomp_table_gap} calls of "
          f"syscalls libseccomp's table lacks {sorted(report.table_gap_names)}")
    _check(report, 100_000, real=True)


# --- generated profiles -------------------------------------------------------

def _agreeing_names() -> list[str]:
    """Names of both native ABIs whose numbers libseccomp's tables and Linux
    6.12's agree on, on every ABI a generated profile has (a name one table
    lacks on an ABI the other lacks too; i386's socket and IPC calls without a
    number of their own are there only through their multiplexer, in both)."""
    from ebpfseccomp.policy import semantics

    abis = [(scmp, semantics.arch_table(name)) for scmp, (name, _) in semantics.SUPPORTED.items()]
    out = []
    for name in sorted(set(syscalls.table("x86_64")) & set(syscalls.table("aarch64"))):
        for scmp, table in abis:
            if name in table:
                if libseccomp.name_of(table[name], scmp) != name:
                    break
            elif libseccomp.resolve(name, scmp) is not None:
                break
        else:
            out.append(name)
    return out


_VALUES = st.one_of(
    st.sampled_from([0, 1, 2, 9, 16, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32,
                     (1 << 32) + 5, 0xFFFFFFFF80000000, (1 << 63), (1 << 64) - 1]),
    st.integers(0, 300),
    st.integers(0, (1 << 64) - 1),
)
_ACTIONS = st.sampled_from(["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                            "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_LOG",
                            "SCMP_ACT_TRACE"])


@st.composite
def profiles(draw: st.DrawFn, names: list[str]) -> dict:
    pool = draw(st.lists(st.sampled_from(names), min_size=1, max_size=6, unique=True))
    rules = []
    for _ in range(draw(st.integers(1, 10))):
        rule: dict = {"names": draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3,
                                             unique=True)),
                      "action": draw(_ACTIONS)}
        if rule["action"] in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE") and draw(st.booleans()):
            rule["errnoRet"] = draw(st.integers(0, 4095))
        indexes = draw(st.lists(st.integers(0, 5), max_size=3, unique=True))
        args = []
        for i in indexes:
            op = draw(st.sampled_from(list(model.OPS)))
            args.append({"index": i, "value": draw(_VALUES), "valueTwo": draw(_VALUES),
                         "op": op})
        if args:
            rule["args"] = args
        if draw(st.integers(0, 9)) == 0:
            rule["includes"] = {"caps": ["CAP_SYS_ADMIN"]}
        rules.append(rule)
    return {"defaultAction": draw(st.sampled_from(["SCMP_ACT_ERRNO", "SCMP_ACT_ALLOW",
                                                   "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_LOG"])),
            "defaultErrnoRet": draw(st.integers(1, 200)),
            "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                        {"architecture": "SCMP_ARCH_AARCH64",
                         "subArchitectures": ["SCMP_ARCH_ARM"]}],
            "syscalls": rules}


_NAMES: list[str] = []
GENERATED_CALLS = 5_000


@pytest.mark.slow
@settings(max_examples=150, deadline=None, derandomize=not os.environ.get("POLICY_RANDOM"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_generated_profiles_equal_libseccomp(data: st.DataObject, tmp_path_factory) -> None:
    _libseccomp_or_skip()
    if not _NAMES:
        _NAMES.extend(_agreeing_names())
    profile = data.draw(profiles(_NAMES))
    arch = data.draw(st.sampled_from(["x86_64", "aarch64"]))
    caps = data.draw(st.sampled_from(["none", "CAP_SYS_ADMIN"]))
    import json

    try:
        sel = model.select(model.parse(json.dumps(profile)), arch=arch,
                           caps=model.parse_caps(caps), kernel=(6, 12))
        report = differential.compare(sel, minimum=GENERATED_CALLS,
                                      seed=data.draw(st.integers(0, 1000)), product_cap=1500)
    except libseccomp.LibseccompError as exc:
        # libseccomp itself refuses some rule sets (-EEXIST for conflicting
        # rules, docs/policies.md): a runtime could not start the container.
        _TOTALS["libseccomp_refused"] += 1
        assert "libseccomp refused" in exc.message, exc.render()
        return
    except model.PolicyError as exc:
        # Only one refusal is expected from a valid profile: overlapping rules
        # with different actions (libseccomp's answer depends on its tree).
        assert "can both match the same call" in exc.message, exc.render()
        _TOTALS["refused"] += 1
        return
    _check(report, GENERATED_CALLS)
    _TOTALS["profiles"] += 1
    _TOTALS["calls"] += report.compared
    _TOTALS["stale"] += report.libseccomp_stale_accumulator
    _TOTALS["tree"] += report.libseccomp_tree_merge


_TOTALS = {"profiles": 0, "calls": 0, "stale": 0, "tree": 0, "refused": 0,
           "libseccomp_refused": 0}


@pytest.mark.slow
def test_generated_profiles_summary() -> None:
    """Runs after the property test (file order): prints what it compared."""
    print(f"generated profiles: {_TOTALS}")
    if _TOTALS["profiles"]:
        assert _TOTALS["calls"] >= 100_000
