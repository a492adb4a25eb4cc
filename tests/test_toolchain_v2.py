"""Toolchain fixes from issue 13: output directories, libbpf-style sources,
quiet exits on a closed pipe, 32-bit ids, the kernel's errno cap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ebpfseccomp import cli
from ebpfseccomp.build import build, multiarch_include_dir
from ebpfseccomp.contract import Verdict

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "bpf" / "examples" / "arch_check.c"

LIBBPF_STYLE = """\
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/seccomp.h>
#include <bpf/bpf_helpers.h>

SEC("seccomp")
int libbpf_style(struct seccomp_data *ctx)
{
	return ctx->nr == 39 ? SECCOMP_RET_ERRNO | 1 : SECCOMP_RET_ALLOW;
}

char LICENSE[] SEC("license") = "GPL";
"""


def test_output_with_trailing_slash_is_a_new_directory(tmp_path: Path) -> None:
    out = build(EXAMPLE, out=f"{tmp_path}/build/")
    assert out == tmp_path / "build" / "arch_check.o"
    assert out.is_file()


def test_output_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "objs").mkdir()
    assert build(EXAMPLE, out=tmp_path / "objs") == tmp_path / "objs" / "arch_check.o"


def test_output_without_slash_is_a_file(tmp_path: Path) -> None:
    assert build(EXAMPLE, out=tmp_path / "build").is_file()


@pytest.mark.skipif(multiarch_include_dir() is None or not Path("/usr/include/bpf").is_dir(),
                    reason="needs libbpf-dev and the multiarch kernel headers (make deps)")
def test_libbpf_style_source_builds_as_it_is(tmp_path: Path) -> None:
    src = tmp_path / "lb.c"
    src.write_text(LIBBPF_STYLE)
    obj = build(src)
    r = subprocess.run([sys.executable, "-m", "ebpfseccomp", "emulate", str(obj),
                        "--syscall", "39", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verdict"] == "ERRNO(1)"


def test_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    obj = build(EXAMPLE, out=tmp_path / "a.o")
    r = subprocess.run(f"{sys.executable} -m ebpfseccomp disasm {obj} | head -1",
                       shell=True, capture_output=True, text=True)
    assert r.stdout.strip()
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


@pytest.mark.parametrize("flag", ["--pid", "--tgid", "--uid", "--gid"])
def test_ids_are_32_bit(tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    obj = build(EXAMPLE, out=tmp_path / "a.o")
    code = cli.main(["emulate", str(obj), "--syscall", "getpid", flag, str(1 << 32)])
    assert code == 2
    assert "out of range" in capsys.readouterr().err


def test_errno_is_capped_as_the_kernel_caps_it() -> None:
    v = Verdict(0x00050000 | 5000)
    assert str(v) == "ERRNO(4095)" and v.errno == 4095 and v.data == 5000
    assert Verdict(0x00050000 | 13).errno == 13
    assert Verdict(0x7FFF0000).errno is None


ERRNO_SRC = """\
#include <ebpfseccomp/filter.h>
SEC("seccomp") int f(struct seccomp_data *ctx)
{
	if (ctx->nr == SYS_socket)
		return SECCOMP_ERRNO(ENETDOWN);
	return ctx->nr == SYS_quotactl ? SECCOMP_ERRNO(EDQUOT) : SECCOMP_ALLOW;
}
SECCOMP_LICENSE("GPL");
"""


def test_every_kernel_errno_compiles(tmp_path: Path) -> None:
    src = tmp_path / "e.c"
    src.write_text(ERRNO_SRC)
    obj = build(src)
    for name, want in (("socket", "ERRNO(100)"), ("quotactl", "ERRNO(122)")):
        r = subprocess.run([sys.executable, "-m", "ebpfseccomp", "emulate", str(obj),
                            "--syscall", name, "--json"], capture_output=True, text=True)
        assert json.loads(r.stdout)["verdict"] == want, r.stderr


@pytest.mark.skipif(not Path("/usr/include/asm-generic/errno.h").exists(),
                    reason="needs the kernel's uapi headers (linux-libc-dev, make deps)")
def test_errno_header_matches_the_installed_kernel_headers() -> None:
    r = subprocess.run([sys.executable, str(REPO / "tools" / "gen_errno.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --- syscalls resolver, JSON errors, trace expectations ----------------------------


def test_syscalls_resolver(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["syscalls", "openat"]) == 0
    assert capsys.readouterr().out.strip() == "257"
    assert cli.main(["syscalls", "59"]) == 0
    assert capsys.readouterr().out.strip() == "execve"
    assert cli.main(["syscalls", "openat", "--arch", "arm64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"arch": "aarch64", "nr": 56, "name": "openat"}
    assert cli.main(["syscalls", "open", "--all"]) == 0
    out = capsys.readouterr().out
    assert "x86_64: open 2" in out and "aarch64: open ?" in out
    assert cli.main(["syscalls", "open", "--arch", "aarch64"]) == 2
    assert "openat" in capsys.readouterr().err  # suggests


def test_json_errors_go_to_stdout_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["syscalls", "bogus", "--json"]) == 2
    err = json.loads(capsys.readouterr().out)
    assert err["kind"] == "UsageError" and "bogus" in err["error"] and err["exit_status"] == 2


def _trace(tmp_path: Path, lines: list[dict[str, object]]) -> str:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_trace_expectations_make_a_regression_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "d.c"
    src.write_text(ERRNO_SRC)
    obj = str(build(src))
    good = _trace(tmp_path, [{"syscall": "socket", "expect": "ERRNO(ENETDOWN)"},
                             {"syscall": "getpid", "expect": "allow"}])
    assert cli.main(["emulate", obj, "--trace", good, "--check"]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["line"], r["name"], r["ok"]) for r in recs] == [(1, "socket", True),
                                                               (2, "getpid", True)]
    bad = _trace(tmp_path, [{"syscall": "getpid", "expect": "ALLOW"},
                            {"syscall": "quotactl", "expect": "ERRNO(1)"},
                            {"syscall": "getpid"}])
    assert cli.main(["emulate", obj, "--trace", bad, "--check"]) == 1
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2  # stopped at the mismatch
    assert ":2: expected ERRNO(1), the filter answered ERRNO(122)" in out.err
    # without --check: every line, each with ok
    assert cli.main(["emulate", obj, "--trace", bad]) == 0
    assert [json.loads(x)["ok"] if "ok" in json.loads(x) else None
            for x in capsys.readouterr().out.splitlines()] == [True, False, None]


def test_trace_error_becomes_a_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "u.c"
    src.write_text('#include <ebpfseccomp/filter.h>\n'
                   'SEC("seccomp") int f(struct seccomp_data *ctx)\n'
                   '{ char b[8]; if (ctx->nr == 39) return SECCOMP_ALLOW;\n'
                   '  bpf_probe_read_user_str(b, sizeof(b), (void *)ctx->args[0]);\n'
                   '  return b[0] == 0x2f ? SECCOMP_ERRNO(1) : SECCOMP_ALLOW; }\n'
                   'SECCOMP_LICENSE("GPL");\n')
    obj = str(build(src))
    trace = _trace(tmp_path, [{"syscall": 2, "args": [4096], "mem": {"4096": "/x"}},
                              {"syscall": 39},
                              {"syscall": 2, "args": [4096], "mem": {"4096": "y"}}])
    assert cli.main(["emulate", obj, "--trace", trace]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["verdict"] for r in recs] == ["ERRNO(1)", "ALLOW", "ALLOW"]
    assert [r["line"] for r in recs] == [1, 2, 3]
    assert cli.main(["emulate", obj, "--trace", trace, "--budget", "3"]) == 1
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(recs) == 3 and all("error" in r for r in recs if r["syscall"] == 2)


ARG_TRAP = """\
#include <ebpfseccomp/filter.h>
static const char names[4][8] = { "a", "b", "c", "d" };
SEC("seccomp") int f(struct seccomp_data *ctx)
{
	if (ctx->nr == SYS_openat && ctx->args[0] == -100)
		return SECCOMP_ERRNO(EPERM);
	if (ctx->nr == SYS_fchdir && (int)ctx->args[0] == -100)
		return SECCOMP_ERRNO(EPERM);
	volatile char c = names[ctx->nr & 3][0];
	return c == 'z' ? SECCOMP_ERRNO(EPERM) : SECCOMP_ALLOW;
}
SECCOMP_LICENSE("GPL");
"""


def test_check_warns_about_the_arg_width_trap_and_names_what_raised_the_tier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "trap.c"
    src.write_text(ARG_TRAP)
    obj = str(build(src))
    assert cli.main(["check", obj, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (warning,) = report["warnings"]  # only the 64-bit comparison, not the (int) one
    assert "args[0] with -100" in warning and "(int)args[0]" in warning
    assert "trap.c:5" in warning
    (name,) = [m for m in report["map_refs"] if m.startswith(".rodata")]
    assert report["map_refs"][name]["source"]["line"] == 9
    assert cli.main(["check", obj]) == 0
    text = capsys.readouterr().out
    assert "warning: insn" in text and "first used by insn" in text and "trap.c:9" in text


def test_one_map_syntax_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """emulate takes --map as load and run do: syscall names, str:, hex:,
    global offsets."""
    src = REPO / "bpf" / "examples" / "allowlist_hashmap.c"
    obj = str(build(src, out=tmp_path / "h.o"))
    # a syscall name as the key, an action as the value
    assert cli.main(["emulate", obj, "--syscall", "reboot", "--map",
                     "allowed:reboot=0x7fff0000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "ALLOW"
    assert cli.main(["emulate", obj, "--syscall", "reboot", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "ERRNO(1)"
    assert cli.main(["emulate", obj, "--syscall", "reboot", "--map", "allowed:nosuch=1"]) == 2
    assert "neither a number, a syscall name" in capsys.readouterr().err


def test_dump_maps_after_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj = str(build(REPO / "bpf" / "examples" / "rate_limit.c", out=tmp_path / "r.o"))
    trace = _trace(tmp_path, [{"syscall": "getpid"}, {"syscall": "getpid"}, {"syscall": "read"}])
    assert cli.main(["emulate", obj, "--trace", trace, "--dump-maps", "--json"]) == 0
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    calls = {e["key"]: e["value"] for e in last["maps"]["calls"]["entries"]}
    assert calls == {39: 2, 0: 1}


def test_trace_insns_single_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Like seccomp-tools emu: every instruction executed, the registers it set;
    and the verdict is the same as without tracing."""
    obj = str(build(EXAMPLE, out=tmp_path / "a.o"))
    assert cli.main(["emulate", obj, "--syscall", "getpid", "--trace-insns", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "ALLOW"
    steps = out["steps"]
    assert steps[0]["insn"] == 0 and steps[-1]["insn"] == len(steps) and "r0" in steps[0]["regs"]
    assert any(s["regs"].get("r1") == 39 for s in steps)  # nr loaded
    assert cli.main(["emulate", obj, "--syscall", "getpid", "--trace-insns"]) == 0
    text = capsys.readouterr().out
    assert "; AUDIT_ARCH_X86_64" in text and "r2=0xc000003e" in text and text.endswith("ALLOW\n")


TWO_PROGRAMS = """\
#include <ebpfseccomp/filter.h>
SEC("seccomp/a") int a(struct seccomp_data *c) { return SECCOMP_ALLOW; }
SEC("seccomp/b") int b(struct seccomp_data *c) { return SECCOMP_ERRNO(EPERM); }
SECCOMP_LICENSE("GPL");
"""


def test_check_covers_every_program(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "two.c"
    src.write_text(TWO_PROGRAMS)
    obj = str(build(src))
    assert cli.main(["check", obj, "--json"]) == 0
    assert [r["program"] for r in json.loads(capsys.readouterr().out)] == ["a", "b"]
    assert cli.main(["check", obj, "--program", "b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["program"] == "b"


def test_emulate_runs_every_program(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "two.c"
    src.write_text(TWO_PROGRAMS)
    obj = str(build(src))
    assert cli.main(["emulate", obj, "--syscall", "getpid"]) == 0
    assert capsys.readouterr().out.splitlines() == ["a: ALLOW", "b: ERRNO(1)"]
