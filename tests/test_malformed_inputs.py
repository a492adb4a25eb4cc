"""Malformed input to the CLI: trace expectations, syscall numbers, --map
offsets of global sections.  Each gives a clear error naming the problem and
the fix, a non-zero exit and no traceback (text and --json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ebpfseccomp import cli
from ebpfseccomp.build import build

SOURCE = """\
#include <ebpfseccomp/filter.h>
__u32 calls;
SEC("seccomp") int f(struct seccomp_data *ctx)
{ calls++; return ctx->nr == 39 && calls > 2 ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }
SECCOMP_LICENSE("GPL");
"""


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("malformed")
    (d / "g.c").write_text(SOURCE)
    return str(build(d / "g.c", out=d / "g.o"))


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc != 0, (out, err)
    assert "Traceback" not in out + err
    return err


@pytest.mark.parametrize("expect,message", [
    ("ERRNO(abc)", "'ABC' in \"expect\" 'ERRNO(abc)' is neither an errno name nor a number"),
    ("ERRNO(-1)", "'-1' in \"expect\" 'ERRNO(-1)' is neither an errno name nor a number"),
    ("ERRNO(99999999999)", "ERRNO data 99999999999 in \"expect\" does not fit the 16 bits"),
    ("TRAP(0x10000)", "TRAP data 65536 in \"expect\" does not fit the 16 bits"),
    ("ERRNO(1", "malformed action 'ERRNO(1' in \"expect\""),
    ("ERRNO(1))", "malformed action 'ERRNO(1))' in \"expect\""),
    ("ALLOW(3)", "ALLOW carries no data: 'ALLOW(3)' (write ALLOW alone)"),
    ("", "unknown action '' in \"expect\""),
    ("DENY", "unknown action 'DENY' in \"expect\""),
    (5, "expect must be a string like \"ERRNO(EPERM)\""),
    (None, "expect must be a string like \"ERRNO(EPERM)\""),
])
def test_bad_trace_expectations(obj: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                expect: object, message: str) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"syscall": "getpid"}) + "\n"
                     + json.dumps({"syscall": "getpid", "expect": expect}) + "\n")
    err = _error(capsys, ["emulate", obj, "--trace", str(trace), "--check"])
    assert f"line 2: {message}" in err, err


def test_good_trace_expectations_still_check(obj: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.jsonl"
    rows = [{"syscall": "getpid", "expect": "allow"}, {"syscall": 39, "expect": "ALLOW"},
            {"syscall": 39, "expect": "SECCOMP_RET_ERRNO(EPERM)"},
            {"syscall": 39, "expect": "ERRNO(0x1)"}]
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["emulate", obj, "--trace", str(trace), "--check"]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["ok"] for r in recs] == [True] * 4


@pytest.mark.parametrize("item,message", [
    ("-5", "'-5': syscall numbers are not negative"),
    ("4294967296", "'4294967296': syscall numbers are 32 bits"),
    ("99999999999999999999999", "syscall numbers are 32 bits"),
    ("0x1ffffffff", "syscall numbers are 32 bits"),
])
def test_syscalls_refuses_numbers_no_filter_sees(capsys: pytest.CaptureFixture[str],
                                                  item: str, message: str) -> None:
    err = _error(capsys, ["syscalls", "--", item] if item.startswith("-") else ["syscalls", item])
    assert message in err, err


def test_syscalls_answers_any_32_bit_number(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["syscalls", "4294967295"]) == 0
    assert capsys.readouterr().out == "?\n"


@pytest.mark.parametrize("spec,message", [
    (".bss:-1=5", "--map .bss:-1: offset -1 is outside the 4-byte section"),
    (".bss:4=1", "--map .bss:4: offset 4 is outside the 4-byte section"),
    (".bss:99999999999999999999=1", "offset 99999999999999999999 is outside the 4-byte section"),
    (".bss:0x10000000000000000=1", "offset 18446744073709551616 is outside"),
    (".bss:zz=1", "the key of a global section is a byte offset, not 'zz'"),
    (".bss:2=0x1ffffffff", "does not fit in 2 bytes"),
])
def test_map_global_offsets(obj: str, capsys: pytest.CaptureFixture[str], spec: str,
                            message: str) -> None:
    err = _error(capsys, ["emulate", obj, "--syscall", "getpid", "--map", spec])
    assert message in err, err
    rc = cli.main(["emulate", obj, "--syscall", "getpid", "--map", spec, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 2 and out["kind"] == "UsageError" and message.split(": ")[-1] in \
        out["error"] + " " + str(out["hint"])


def test_map_global_offset_inside_sets_the_bytes(obj: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["emulate", obj, "--syscall", "39", "--map", ".bss:0=7"]) == 0
    assert capsys.readouterr().out.strip() == "ERRNO(1)"
