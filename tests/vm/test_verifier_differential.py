"""`check` and the loader's prediction against the real verifier (issue 13).

A corpus of programs goes through the patched kernel's verifier at three
loaders: root (the tracing tier), CAP_BPF without CAP_PERFMON or
CAP_SYS_ADMIN (the extended tier, privileged verifier for loops and calls,
unprivileged rules for stack and pointers), and uid 65534 with
kernel.unprivileged_bpf_disabled=0.  For each, the toolchain's answer is the
loader's: privilege.predict plus the static check loader.load runs before
bpf(2).  The corpus: every example, the hand-written hard cases below, and
600 generated programs (tests/progen.py).

Unsound (the toolchain says loadable, the kernel refuses): must be none.
Conservative (the toolchain refuses, the kernel accepts): counted by problem
code, written to $EBPFSECCOMP_CACHE/verifier-differential.json, and
documented in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import progen  # noqa: E402
from asm import ALLOW, add, exit_, flatten, ldx, mov, movr, ret, st, stx  # noqa: E402
from vmhelpers import Sysctl, Unprivileged, call_in_child  # noqa: E402

from ebpfseccomp import elf, loader  # noqa: E402
from ebpfseccomp import sys as esys  # noqa: E402
from ebpfseccomp.build import build  # noqa: E402
from ebpfseccomp.errors import EbpfSeccompError  # noqa: E402
from ebpfseccomp.insn import BPF_DW, BPF_W  # noqa: E402
from ebpfseccomp.privilege import Credentials, SystemPolicy  # noqa: E402

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
GENERATED = 600

HARD: dict[str, list[Any]] = {
    "uninit-stack": flatten(ldx(BPF_DW, 2, 10, -8), ret(ALLOW)),
    "partial-stack": flatten(st(BPF_W, 10, -8, 1), ldx(BPF_DW, 2, 10, -8), ret(ALLOW)),
    "uninit-reg": flatten(movr(0, 3), exit_()),
    "no-r0": flatten(mov(2, 1), exit_()),
    "ctx-moved": flatten(movr(2, 1), add(2, 8), ldx(BPF_W, 0, 2, 0), ret(ALLOW)),
    "ctx-misaligned": flatten(ldx(BPF_W, 2, 1, 2), ret(ALLOW)),
    "ctx-beyond": flatten(ldx(BPF_DW, 2, 1, 64), ret(ALLOW)),
    "ctx-store": flatten(st(BPF_W, 1, 0, 1), ret(ALLOW)),
    "stack-beyond": flatten(st(BPF_DW, 10, -520, 1), ret(ALLOW)),
    "spill-fill-ctx": flatten(stx(BPF_DW, 10, -8, 1), ldx(BPF_DW, 2, 10, -8),
                              ldx(BPF_W, 0, 2, 0), ret(ALLOW)),
    "return-pointer": flatten(movr(0, 10), exit_()),
    "arg-loop": flatten(mov(7, 0), ldx(BPF_DW, 8, 1, 16), add(7, 1),
                        progen.jmpr(progen.BPF_JGT, 8, 7, -2), ret(ALLOW)),
    "const-loop": flatten(mov(7, 0), add(7, 1), progen.jmp(progen.BPF_JLT, 7, 16, -2),
                          ret(ALLOW)),
}


@pytest.fixture(autouse=True)
def _needs_patch(kernel_has_extended: bool) -> None:
    if not kernel_has_extended:
        pytest.skip("the running kernel lacks the eBPF seccomp patch")


def _corpus(tmp: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for src in sorted((REPO / "bpf" / "examples").glob("*.c")):
        out[f"example:{src.stem}"] = build(src, out=tmp / f"{src.stem}.o")
    for name, insns in HARD.items():
        p = tmp / f"hard-{name}.o"
        p.write_bytes(progen.elf(insns))
        out[f"hard:{name}"] = p
    for seed in range(GENERATED):
        p = tmp / f"gen-{seed}.o"
        p.write_bytes(progen.elf(progen.generate(seed)))
        out[f"gen:{seed}"] = p
    for p in out.values():
        os.chmod(p, 0o644)
    return out


def _kernel_answers(paths: dict[str, str]) -> dict[str, int]:
    """errno of the kernel's answer for each object (0: loaded), as the caller.
    Examples (with maps) go through libbpf, the rest through raw bpf(2)."""
    out: dict[str, int] = {}
    for name, path in paths.items():
        if name.startswith("example:"):
            try:
                prog = loader.load(path, check=False, log_level=0)
            except EbpfSeccompError as exc:
                out[name] = int(getattr(exc, "errno", 0) or -1)
                continue
            prog.close()
            out[name] = 0
            continue
        insns = elf.load_object(path).program().insns
        try:
            fd, _ = esys.prog_load_raw(33, b"".join(i.encode() for i in insns))
        except OSError as exc:
            out[name] = exc.errno or -1
            continue
        os.close(fd)
        out[name] = 0
    return out


def _as_bpf_only(paths: dict[str, str]) -> dict[str, int]:
    """CAP_BPF kept, CAP_PERFMON and CAP_SYS_ADMIN dropped from every set."""
    caps = esys.capget()
    keep = caps.permitted & ~((1 << 38) | (1 << 21))
    esys.capset(keep, keep)
    return _kernel_answers(paths)


def _toolchain_says(obj_path: Path, creds: Credentials, policy: SystemPolicy) -> tuple[bool, str]:
    """(loadable?, why not): the loader's decision before bpf(2) (loader.preflight)."""
    try:
        obj = elf.load_object(str(obj_path))
        loader.preflight(obj, obj.program(), str(obj_path), creds, policy)
    except EbpfSeccompError as exc:
        return False, type(exc).__name__ + ": " + str(exc)[:200]
    return True, ""


def _code(why: str) -> str:
    """A short label for a conservative refusal: the checker's problem code."""
    for code in ("uninit-stack", "loop-bound", "ptr-leak", "stack", "ctx", "null",
                 "uninit", "helper", "kfunc", "prediction"):
        if code in why:
            return code
    return why.split(":", 1)[0]


def test_toolchain_never_says_loadable_where_the_verifier_refuses(sysctl: Sysctl) -> None:
    sysctl.set("kernel.unprivileged_bpf_disabled", 0)
    scope = int(sysctl.get("kernel.yama.ptrace_scope"))
    policy = SystemPolicy(ptrace_scope=scope, unprivileged_bpf_disabled=0)
    tmp = Path(tempfile.mkdtemp(prefix="ebpfseccomp-vdiff-", dir="/tmp"))
    os.chmod(tmp, 0o755)
    corpus = _corpus(tmp)
    paths = {k: str(v) for k, v in corpus.items()}

    loaders: dict[str, tuple[Credentials, dict[str, int]]] = {
        "root": (Credentials.from_values(0, ["CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON",
                                             "CAP_SYS_PTRACE"]), _kernel_answers(paths)),
        "cap_bpf": (Credentials.from_values(0, ["CAP_BPF", "CAP_SYS_PTRACE"]),
                    call_in_child(_as_bpf_only, paths)),
        "nobody": (Credentials.from_values(65534, []),
                   Unprivileged().call(_kernel_answers, paths, timeout=900)),
    }
    unsound: list[str] = []
    conservative: dict[str, Counter[str]] = {}
    agree: Counter[str] = Counter()
    for who, (creds, kernel) in loaders.items():
        conservative[who] = Counter()
        for name, path in corpus.items():
            ok, why = _toolchain_says(path, creds, policy)
            kernel_ok = kernel[name] == 0
            if ok and not kernel_ok:
                unsound.append(f"{who} {name}: kernel errno {kernel[name]}")
            elif not ok and kernel_ok:
                conservative[who][_code(why)] += 1
            else:
                agree[who] += 1
    report = {
        "corpus": len(corpus), "generated": GENERATED, "hard": len(HARD),
        "agree": dict(agree), "unsound": unsound,
        "conservative": {k: dict(v) for k, v in conservative.items()},
    }
    (tmp / "verifier-differential.json").write_text(json.dumps(report, indent=1) + "\n")
    print("verifier differential:", json.dumps(report))
    assert not unsound, unsound
    # the comparison means something: most programs decided alike, both ways
    assert sum(agree.values()) > 0.7 * 3 * len(corpus), report
