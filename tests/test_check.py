"""The checker's verdicts on hand-made objects, good and bad, and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from asm import (
    ALLOW,
    R_BPF_64_32,
    ObjectBuilder,
    add,
    alu,
    call,
    call_rel,
    exit_,
    flatten,
    ja,
    jeq,
    jne,
    kfunc_call,
    ld_imm64,
    ldx,
    mov,
    movr,
    ret,
    simple_object,
    st,
    stx,
)

from ebpfseccomp.analysis.checker import check
from ebpfseccomp.analysis.report import Report
from ebpfseccomp.cli import main
from ebpfseccomp.contract import HELPER_IDS, Tier
from ebpfseccomp.elf import load_object_bytes
from ebpfseccomp.insn import BPF_AND, BPF_B, BPF_DIV, BPF_DW, BPF_H, BPF_LSH, BPF_W, Insn

REPO = Path(__file__).resolve().parent.parent


def chk(insns: list[Insn] | bytes, **kw: object) -> Report:
    data = insns if isinstance(insns, bytes) else simple_object(insns)
    return check(load_object_bytes(data, "t.o"), **kw)  # type: ignore[arg-type]


def codes(r: Report) -> list[str]:
    return [p.code for p in r.problems]


def only(r: Report, code: str) -> None:
    assert codes(r) == [code], [str(p) for p in r.problems]


# --- loadable programs and tiers --------------------------------------------------


def test_allow_all_is_loadable_at_tier_none() -> None:
    r = chk(ret(ALLOW))
    assert r.loadable and r.tier == Tier.NONE and not r.needs_cap_bpf
    assert r.helpers == [] and r.maps == [] and r.insn_count == 2


def test_narrow_aligned_ctx_loads_are_fine() -> None:
    insns = flatten(
        ldx(BPF_W, 2, 1, 0),  # nr
        ldx(BPF_W, 2, 1, 4),  # arch
        ldx(BPF_H, 2, 1, 6),
        ldx(BPF_B, 2, 1, 63),
        ldx(BPF_DW, 2, 1, 56),  # args[5]
        movr(6, 1),
        ldx(BPF_DW, 2, 6, 16),  # through a copy
        ret(ALLOW),
    )
    assert chk(insns).loadable


def test_helpers_and_map_need_extended() -> None:
    b = ObjectBuilder()
    b.add_map("m", map_type=1)
    b.add_program(
        "filt",
        flatten(
            st(BPF_W, 10, -4, 0),
            movr(2, 10),
            add(2, -4),
            ld_imm64(1, 0),
            call(HELPER_IDS["map_lookup_elem"]),
            jeq(0, 0, 1),
            ldx(BPF_DW, 3, 0, 0),  # after the NULL check
            call(HELPER_IDS["ktime_get_ns"]),
            ret(ALLOW),
        ),
    )
    b.add_reloc("seccomp", 3, "m")
    r = check(load_object_bytes(b.build()))
    assert r.loadable, [str(p) for p in r.problems]
    assert r.tier == Tier.EXTENDED and r.load_tier == Tier.EXTENDED
    assert [(h.name, h.tier) for h in r.helpers] == [
        ("map_lookup_elem", Tier.EXTENDED),
        ("ktime_get_ns", Tier.EXTENDED),
    ]
    assert r.maps == ["m"]


def test_global_variable_alone_needs_extended() -> None:
    b = ObjectBuilder()
    b.add_data(".bss", bytes(8), {"n": 0}, nobits=True)
    b.add_program("filt", flatten(ld_imm64(1, 0), ldx(BPF_DW, 2, 1, 0), ret(ALLOW)))
    b.add_reloc("seccomp", 0, "n")
    r = check(load_object_bytes(b.build()))
    assert r.loadable and r.tier == Tier.EXTENDED and r.maps == [".bss"]


def test_probe_read_user_is_ptrace_tier_but_loads_at_extended() -> None:
    insns = flatten(
        ldx(BPF_DW, 3, 1, 16), movr(1, 10), add(1, -8), mov(2, 8),
        call(HELPER_IDS["probe_read_user"]), ret(ALLOW),
    )  # fmt: skip
    r = chk(insns)
    assert r.loadable and r.tier == Tier.PTRACE and r.load_tier == Tier.EXTENDED
    assert any("CAP_SYS_PTRACE" in n for n in r.notes)


def test_probe_read_user_needs_gpl_license() -> None:
    b = ObjectBuilder(license="Proprietary")
    b.add_program("filt", flatten(mov(1, 0), mov(2, 0), mov(3, 0),
                                  call(HELPER_IDS["probe_read_user_str"]), ret(ALLOW)))  # fmt: skip
    r = check(load_object_bytes(b.build()))
    only(r, "gpl")


# --- the brief's bad objects ----------------------------------------------------------


def test_ctx_store() -> None:
    r = chk(flatten(st(BPF_W, 1, 0, 5), ret(ALLOW)))
    only(r, "ctx-store")
    assert "read-only" in r.problems[0].message and r.problems[0].insn == 0


def test_ctx_store_through_copy_and_spill() -> None:
    insns = flatten(
        movr(6, 1),
        stx(BPF_DW, 10, -8, 6),  # spill ctx
        mov(6, 0),
        ldx(BPF_DW, 7, 10, -8),  # fill it back into r7
        add(7, 16),
        stx(BPF_DW, 7, 0, 6),  # *(ctx + 16) = r6: args[0]
        ret(ALLOW),
    )
    r = chk(insns)
    only(r, "ctx-store")
    assert r.problems[0].insn == 5 and "args[0]" in r.problems[0].message


def test_ctx_store_in_subprogram() -> None:
    b = ObjectBuilder()
    b.add_program("filt", flatten(call_rel(-1), ret(ALLOW)))
    b.add_reloc("seccomp", 0, "sub", R_BPF_64_32)
    b.add_subprog("sub", flatten(st(BPF_W, 1, 4, 0), ret(0)))  # r1 is the caller's ctx
    r = check(load_object_bytes(b.build()))
    only(r, "ctx-store")
    assert r.problems[0].insn == 3


def test_store_to_stack_is_not_ctx_store() -> None:
    assert chk(flatten(movr(6, 1), st(BPF_DW, 10, -8, 1), ret(ALLOW))).loadable


def test_ctx_load_out_of_range() -> None:
    only(chk(flatten(ldx(BPF_DW, 2, 1, 64), ret(ALLOW))), "ctx-range")
    only(chk(flatten(ldx(BPF_DW, 2, 1, 60), ret(ALLOW))), "ctx-range")  # 60+8 > 64
    only(chk(flatten(ldx(BPF_W, 2, 1, -4), ret(ALLOW))), "ctx-range")


def test_ctx_load_misaligned() -> None:
    r = chk(flatten(ldx(BPF_W, 2, 1, 2), ret(ALLOW)))
    only(r, "ctx-align")
    assert "misaligned" in r.problems[0].message
    only(chk(flatten(ldx(BPF_DW, 2, 1, 12), ret(ALLOW))), "ctx-align")


def test_ctx_load_through_moved_pointer() -> None:
    only(chk(flatten(add(1, 16), ldx(BPF_DW, 2, 1, 0), ret(ALLOW))), "ctx-modified")


def test_unknown_helper() -> None:
    r = chk(flatten(call(999), ret(ALLOW)))
    only(r, "unknown-helper")
    assert "unknown#999" in r.problems[0].message
    only(chk(flatten(call(0), ret(ALLOW))), "unknown-helper")


def test_helper_never_allowed() -> None:
    r = chk(flatten(call(HELPER_IDS["skb_store_bytes"]), ret(ALLOW)))
    only(r, "helper")
    assert "bpf_skb_store_bytes#9" in r.problems[0].message
    assert r.helpers[0].tier is None


def test_tracing_only_helper() -> None:
    insns = flatten(mov(1, 0), mov(2, 0), call(HELPER_IDS["trace_printk"]), ret(ALLOW))
    r = chk(insns)
    assert r.loadable and r.tier == Tier.TRACING
    r = chk(insns, unprivileged=True)
    only(r, "tracing-helper")
    assert "CAP_PERFMON" in r.problems[0].message


def test_kfunc_call() -> None:
    only(chk(flatten(kfunc_call(1234), ret(ALLOW))), "kfunc")


def test_too_many_insns() -> None:
    body = [mov(0, 1)] * 5000
    r = chk(flatten(body, ret(ALLOW)))
    assert r.loadable and r.needs_cap_bpf
    assert any("5002 instructions" in x for x in r.cap_bpf_reasons)
    only(chk(flatten(body, ret(ALLOW)), unprivileged=True), "too-big")


def test_loop_needs_cap_bpf() -> None:
    insns = flatten(mov(2, 0), add(2, 1), jne(2, 10, -2), ret(ALLOW))
    r = chk(insns)
    assert r.loadable and r.needs_cap_bpf
    assert any("loops" in x for x in r.cap_bpf_reasons)
    r = chk(insns, unprivileged=True)
    only(r, "loop")
    assert "back-edge from insn 2 to 1" in r.problems[0].message


def test_subprogram_needs_cap_bpf() -> None:
    b = ObjectBuilder()
    b.add_program("filt", flatten(call_rel(-1), exit_()))
    b.add_reloc("seccomp", 0, "sub", R_BPF_64_32)
    b.add_subprog("sub", ret(ALLOW))
    obj = load_object_bytes(b.build())
    r = check(obj)
    assert r.loadable and r.needs_cap_bpf
    only(check(obj, unprivileged=True), "subprog")


def test_jump_out_of_range() -> None:
    r = chk(flatten(jeq(1, 0, 10), ret(ALLOW)))
    only(r, "jump-range")
    assert "jump out of range from insn 0 to 11" in r.problems[0].message
    only(chk(flatten(ja(-5), ret(ALLOW))), "jump-range")


def test_jump_into_ld_imm64() -> None:
    r = chk(flatten(ja(1), ld_imm64(2, 1), ret(ALLOW)))
    assert "jump-range" in codes(r)


def test_no_exit() -> None:
    r = chk(flatten(mov(0, 0), mov(0, 1)))
    only(r, "no-exit")
    assert "last insn is not an exit or jmp" in r.problems[0].message


def test_unreachable_code() -> None:
    r = chk(flatten(ret(ALLOW), ret(0)))
    assert codes(r) == ["unreachable", "unreachable"]


def test_r0_not_set() -> None:
    only(chk([exit_()]), "r0-uninit")


def test_invalid_opcode_and_registers() -> None:
    only(chk(flatten(Insn(0xFF, 0, 0, 0, 0), ret(ALLOW))), "bad-insn")
    only(chk(flatten(Insn(0xB7, 11, 0, 0, 0), ret(ALLOW))), "bad-insn")  # r11
    r = chk(flatten(mov(10, 0), ret(ALLOW)))
    only(r, "bad-insn")
    assert "frame pointer is read only" in r.problems[0].message
    only(chk(flatten(alu(BPF_DIV, 1, 0), ret(ALLOW))), "div-zero")
    only(chk(flatten(alu(BPF_LSH, 1, 64), ret(ALLOW))), "bad-shift")
    only(chk(flatten(Insn(0x20, 0, 0, 0, 0), ret(ALLOW))), "ld-abs")  # ld_abs_w


def test_stack_out_of_bounds() -> None:
    only(chk(flatten(st(BPF_DW, 10, -520, 0), ret(ALLOW))), "stack")
    only(chk(flatten(st(BPF_DW, 10, 0, 0), ret(ALLOW))), "stack")


def test_map_value_null_check() -> None:
    b = ObjectBuilder()
    b.add_map("m")
    b.add_program(
        "filt",
        flatten(st(BPF_W, 10, -4, 0), movr(2, 10), add(2, -4), ld_imm64(1, 0),
                call(1), ldx(BPF_DW, 3, 0, 0), ret(ALLOW)),
    )  # fmt: skip
    b.add_reloc("seccomp", 3, "m")
    r = check(load_object_bytes(b.build()))
    only(r, "null")
    assert r.problems[0].insn == 6


def test_pointer_bitwise_and_leak() -> None:
    only(chk(flatten(alu(BPF_AND, 1, 7), ret(ALLOW))), "ptr-alu")
    r = chk(flatten(movr(0, 1), exit_()))
    assert r.loadable and any("CAP_PERFMON" in n for n in r.notes)
    only(chk(flatten(movr(0, 1), exit_()), unprivileged=True), "ptr-return")


def test_unsupported_map_type() -> None:
    b = ObjectBuilder()
    b.add_map("q", map_type=22)  # queue: the kernel refuses it for seccomp (ringbuf is allowed)
    b.add_program("filt", flatten(ld_imm64(1, 0), ret(ALLOW)))
    b.add_reloc("seccomp", 0, "q")
    assert "map-type" in codes(check(load_object_bytes(b.build())))


def test_problem_rendering_with_source_line() -> None:
    from ebpfseccomp.analysis.report import Problem
    from ebpfseccomp.elf import SourceLine

    p = Problem(12, SourceLine("/src/filter.c", 33, 5, "x"), "store to ctx", "copy it", "c")
    assert p.render("f.o") == "f.o:insn 12 (filter.c:33): store to ctx; copy it"
    assert str(p) == "insn 12 (filter.c:33): store to ctx; copy it"


def test_report_to_dict_is_json() -> None:
    r = chk(flatten(st(BPF_W, 1, 0, 5), ret(ALLOW)))
    d = json.loads(json.dumps(r.to_dict()))
    assert d["loadable"] is False and d["tier"] == "NONE"
    assert d["problems"][0]["code"] == "ctx-store" and d["problems"][0]["insn"] == 0
    for key in ("helpers", "maps", "tier", "needs_cap_bpf", "problems", "loadable"):
        assert key in d


# --- examples and clang output -----------------------------------------------------------


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")
@pytest.mark.parametrize("src", sorted((REPO / "bpf/examples").glob("*.c")), ids=lambda p: p.stem)
def test_examples_are_loadable(src: Path, tmp_path: Path) -> None:
    from ebpfseccomp.build import build
    from ebpfseccomp.elf import load_object

    out = build(src, tmp_path / (src.stem + ".o"))
    obj = load_object(out)
    for prog in obj.programs:
        r = check(obj, prog.name)
        assert r.loadable, [str(p) for p in r.problems]
        if r.helpers or r.maps:
            assert r.tier >= Tier.EXTENDED
        else:
            assert r.tier == Tier.NONE


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")
def test_clang_ctx_store_with_source_line(tmp_path: Path) -> None:
    src = tmp_path / "bad.c"
    src.write_text(
        "#define SEC(n) __attribute__((section(n), used))\n"
        "struct seccomp_data { int nr; unsigned int arch; unsigned long long ip;\n"
        "                      unsigned long long args[6]; };\n"
        'SEC("seccomp") int f(struct seccomp_data *ctx)\n'
        "{\n"
        "    ctx->args[2] = 0;\n"
        "    return 0x7fff0000;\n"
        "}\n"
    )
    out = tmp_path / "bad.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-c", str(src), "-o", str(out)],
                   check=True)  # fmt: skip
    rc, text = _run_cli(["check", str(out)])
    assert rc == 1
    line = next(x for x in text.splitlines() if ":insn " in x)
    assert line.startswith(f"{out}:insn ") and "(bad.c:6)" in line
    assert "args[2]" in line and "read-only" in line


# --- CLI -----------------------------------------------------------------------------------


def _run_cli(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return rc, out.getvalue() + err.getvalue()


def test_cli_ok_and_problems(tmp_path: Path) -> None:
    good = tmp_path / "good.o"
    good.write_bytes(simple_object(ret(ALLOW)))
    rc, text = _run_cli(["check", str(good)])
    assert rc == 0 and "loadable (tier NONE)" in text and "tier: NONE" in text
    bad = tmp_path / "bad.o"
    bad.write_bytes(simple_object(flatten(st(BPF_W, 1, 0, 5), ldx(BPF_W, 2, 1, 2), ret(ALLOW))))
    rc, text = _run_cli(["check", str(bad)])
    assert rc == 1
    lines = [x for x in text.splitlines() if x.startswith(f"{bad}:insn ")]
    assert len(lines) == 2
    assert lines[0].startswith(f"{bad}:insn 0: store to the context (nr)")
    assert "; " in lines[0]
    rc, text = _run_cli(["check", str(bad), "--json"])
    assert rc == 1 and json.loads(text)["loadable"] is False


def test_cli_errors(tmp_path: Path) -> None:
    x86 = tmp_path / "x86.o"
    x86.write_bytes(ObjectBuilder(machine=62).build())
    rc, text = _run_cli(["check", str(x86)])
    assert rc == 1 and "did you compile with clang -target bpf?" in text
    assert "Traceback" not in text
    multi = tmp_path / "multi.o"
    b = ObjectBuilder()
    b.add_program("one", ret(ALLOW))
    b.add_program("two", ret(0))
    multi.write_bytes(b.build())
    rc, text = _run_cli(["check", str(multi)])  # several programs: all of them checked
    assert rc == 0 and "program one" in text and "program two" in text
    rc, text = _run_cli(["check", str(multi), "--program", "two"])
    assert rc == 0
    rc, text = _run_cli(["check"])
    assert rc == 2
    rc, text = _run_cli(["check", "--help"])
    assert rc == 0 and "--unprivileged" in text and "tier" in text


def test_cli_unprivileged(tmp_path: Path) -> None:
    loop = tmp_path / "loop.o"
    loop.write_bytes(simple_object(flatten(mov(2, 0), add(2, 1), jne(2, 10, -2), ret(ALLOW))))
    rc, text = _run_cli(["check", str(loop)])
    assert rc == 0 and "CAP_BPF: needed for loops" in text
    rc, text = _run_cli(["check", str(loop), "--unprivileged"])
    assert rc == 1 and "back-edge" in text


# --- stack bytes read before written (issue 13) -----------------------------------


def test_uninitialised_stack_read_is_refused_for_unprivileged_loaders() -> None:
    """The kernel refuses reading stack bytes not written on every path unless the
    loader has CAP_PERFMON (then it reads stale data): --unprivileged says so."""
    prog = flatten(
        ldx(BPF_W, 2, 1, 0),
        jne(2, 39, 1),
        st(BPF_W, 10, -8, 7),  # only on one path, and only 4 of the 8 bytes
        ldx(BPF_DW, 0, 10, -8),
        ret(ALLOW),
    )
    r = chk(prog, unprivileged=True)
    assert "uninit-stack" in codes(r), [str(p) for p in r.problems]
    priv = chk(prog)
    assert priv.loadable
    assert any("CAP_PERFMON" in n for n in priv.notes), priv.notes


def test_stack_written_on_every_path_is_fine() -> None:
    prog = flatten(
        ldx(BPF_W, 2, 1, 0),
        jne(2, 39, 2),
        st(BPF_DW, 10, -8, 7),
        ja(1),
        st(BPF_DW, 10, -8, 9),
        ldx(BPF_DW, 0, 10, -8),
        ret(ALLOW),
    )
    assert "uninit-stack" not in codes(chk(prog, unprivileged=True))


def test_helper_filled_buffer_counts_as_written() -> None:
    """probe_read_user_str defines its whole destination (size from the mov
    before the call), so reading any byte of it afterwards is fine; a map key
    that was never written is not."""
    prog = flatten(
        ldx(BPF_DW, 3, 1, 16),
        movr(1, 10),
        add(1, -64),
        mov(2, 64),
        call(HELPER_IDS["probe_read_user_str"]),
        ldx(BPF_DW, 0, 10, -8),
        ret(ALLOW),
    )
    assert "uninit-stack" not in codes(chk(prog, unprivileged=True))


def test_loop_bounded_by_an_argument_is_not_loadable() -> None:
    """for (i = 0; i < args[0]; i++): the verifier cannot bound it (issue 13)."""
    prog = flatten(
        ldx(BPF_DW, 2, 1, 16),  # n = args[0]
        mov(3, 0),  # i = 0
        add(3, 1),  # loop: i++
        Insn(0x2D, 2, 3, -2, 0),  # if n > i goto loop  (jgt r2, r3)
        ret(ALLOW),
    )
    r = chk(prog)
    assert not r.loadable and "loop-bound" in codes(r), [str(p) for p in r.problems]


def test_loop_bounded_by_a_constant_stays_loadable() -> None:
    prog = flatten(
        mov(3, 0),
        add(3, 1),
        Insn(0xA5, 3, 0, -2, 16),  # if i < 16 goto loop  (jlt r3, 16)
        ret(ALLOW),
    )
    r = chk(prog)
    assert r.loadable and "loop-bound" not in codes(r)
