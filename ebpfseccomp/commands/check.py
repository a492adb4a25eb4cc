"""`ebpfseccomp check`: will the kernel's verifier take this object?"""

from __future__ import annotations

import argparse
import json

from ..analysis.cacheability import ArchCache, analyze_program, line_for
from ..analysis.checker import check
from ..analysis.report import Report
from ..contract import Tier
from ..elf import Program, load_object
from ..syscalls import name as syscall_name

DESCRIPTION = """\
Check a BPF object against the rules the kernel's verifier applies to
seccomp programs (BPF_PROG_TYPE_SECCOMP), and tell which helper tier and
privileges it needs, before any kernel is involved.

It refuses what the kernel would refuse:
  - stores to the context (struct seccomp_data is read-only), context loads
    outside its 64 bytes, misaligned, or through a moved pointer
  - helpers outside the contract (e.g. skb_* helpers, unknown ids), kfuncs
  - more than 1,000,000 instructions; broken jumps, unreachable code, a
    missing exit, invalid opcodes or registers, stack overflows,
    dereferencing a map lookup result without a NULL check

and reports what needs privilege:
  - tier: NONE (what classic BPF does), EXTENDED (helpers and maps), PTRACE
    (bpf_probe_read_user* of any task: CAP_SYS_PTRACE) or TRACING (the
    kernel's tracing helpers, e.g. bpf_trace_printk: CAP_BPF + CAP_PERFMON)
  - CAP_BPF for BPF-to-BPF calls, loops, or more than 4096 instructions;
    with --unprivileged these are problems, as are pointer leaks

and, for a loadable program, which syscalls the patched kernel's action cache
will answer without running any filter (per arch: x86_64, and i386 when the
kernel has IA32 emulation), and for the others the first instruction that
made them uncacheable, with its source line.  Decide allowed syscalls from
nr before touching args, maps or helpers to keep them cached.

Exit status: 0 loadable, 1 problems (one line each:
"OBJ.o:insn 12 (filter.c:33): what is wrong; what to change") or an
unreadable object, 2 usage error.

examples:
  ebpfseccomp check filter.o
  ebpfseccomp check filter.o --unprivileged      as a loader without CAP_BPF
  ebpfseccomp check multi.o                      every program of the object
  ebpfseccomp check multi.o --program deny_net   just one of them
  ebpfseccomp check filter.o --json | jq .tier
"""

TIER_TEXT = {
    Tier.NONE: "NONE (no helpers, no maps: what classic BPF can do)",
    Tier.EXTENDED: "EXTENDED (helpers and maps of the contract)",
    Tier.PTRACE: "PTRACE (loads at EXTENDED; reading user memory of non-dumpable "
    "tasks needs CAP_SYS_PTRACE)",
    Tier.TRACING: "TRACING (tracing helpers: needs CAP_BPF and CAP_PERFMON)",
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "check",
        help="check an object against the verifier's rules; print the tier it needs",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("object", metavar="OBJ.o", help="BPF object from `ebpfseccomp build`")
    p.add_argument("--program", metavar="NAME", help="the program to check (function name)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--unprivileged",
        action="store_true",
        help="apply the rules for a loader without CAP_BPF (4096 insns, no loops, "
        "no subprograms, no tracing helpers, no pointer leaks)",
    )
    p.add_argument(
        "--all-syscalls",
        action="store_true",
        help="list every syscall that is not cached (default: the first ones per reason)",
    )
    p.set_defaults(func=run)


#: names listed per reason in the text report, unless --all-syscalls
LIST_LIMIT = 12


def _sname(arch: str, nr: int) -> str:
    n = syscall_name(nr, arch) if arch == "x86_64" else None
    return n if n is not None else f"#{nr}"


def format_cache(prog: Program, caches: list[ArchCache], all_syscalls: bool = False) -> list[str]:
    """The cache section of the text report."""
    lines = []
    for c in caches:
        label = c.arch if c.arch == "x86_64" else f"{c.arch} (compat: kernels with IA32 emulation)"
        cached = c.cached
        names = " ".join(_sname(c.arch, nr) for nr in cached)
        if len(cached) == c.nr_count:
            lines.append(f"  cache {label}: all {c.nr_count} syscalls served from the cache")
            continue
        if not all_syscalls and len(cached) > 2 * LIST_LIMIT:
            names = "all but the ones below"
        lines.append(
            f"  cache {label}: {len(cached)} of {c.nr_count} syscalls served from the cache"
            + (f": {names}" if cached else "")
        )
        groups: dict[tuple[int | None, str], list[int]] = {}
        for nr, o in enumerate(c.outcomes):
            if not o.cached:
                groups.setdefault((o.insn, o.reason), []).append(nr)
        for (insn, reason), nrs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            where = f"insn {insn}" if insn is not None else "program"
            line = line_for(prog, insn)
            if line is not None:
                where += f" ({line})"
            shown = nrs if all_syscalls else nrs[:LIST_LIMIT]
            listed = " ".join(_sname(c.arch, nr) for nr in shown)
            more = f" and {len(nrs) - len(shown)} more" if len(shown) < len(nrs) else ""
            lines.append(f"    not cached, {where}: {reason}: {listed}{more}")
    return lines


def format_report(report: Report) -> str:
    lines = []
    path = report.path
    lines.append(
        f"{path}: program {report.program} (section {report.section}), "
        f"{report.insn_count} instructions, stack {report.stack_depth} bytes"
    )
    if report.helpers:
        helpers = ", ".join(
            f"bpf_{h.name}#{h.id} ({h.tier.name if h.tier is not None else 'never'})"
            for h in report.helpers
        )
        lines.append(f"  helpers: {helpers}")
    else:
        lines.append("  helpers: none")
    if report.maps:
        where = []
        for name in report.maps:
            ref = report.map_refs.get(name)
            if ref is None:
                where.append(name)
                continue
            src = ref["source"]
            at = f" at {src['file'].rsplit('/', 1)[-1]}:{src['line']}" if src else ""
            sym = f" ({ref['symbol']})" if ref["symbol"] and ref["symbol"] != name else ""
            where.append(f"{name}{sym}, first used by insn {ref['insn']}{at}")
        lines.append("  maps: " + "; ".join(where))
    else:
        lines.append("  maps: none")
    lines.append(f"  tier: {TIER_TEXT[report.tier]}")
    if report.needs_cap_bpf:
        lines.append(f"  CAP_BPF: needed for {'; '.join(report.cap_bpf_reasons)}")
    else:
        lines.append("  CAP_BPF: not needed by the verifier's rules")
    for note in report.notes:
        lines.append(f"  note: {note}")
    for warning in report.warnings:
        lines.append(f"  warning: {warning}")
    for p in report.problems:
        lines.append(p.render(path))
    if report.loadable:
        lines.append(f"{path}: loadable (tier {report.tier.name})")
    else:
        n = len(report.problems)
        lines.append(f"{path}: not loadable: {n} problem{'s' if n != 1 else ''}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    obj = load_object(args.object)
    names = [args.program] if args.program or len(obj.programs) < 2 else \
        [p.name for p in obj.programs]  # several programs: check them all
    outs: list[dict[str, object]] = []
    texts: list[str] = []
    ok = True
    for name in names:
        report = check(obj, name, unprivileged=args.unprivileged)
        prog = obj.program(name)
        caches = analyze_program(prog, obj.maps) if report.loadable else []
        ok = ok and report.loadable
        if args.json:
            out = report.to_dict()
            out["cache"] = {
                c.arch: c.to_dict(lambda i, prog=prog: line_for(prog, i)) for c in caches
            }
            outs.append(out)
        else:
            text = format_report(report).split("\n")
            # the cache section goes before the verdict line
            texts.append("\n".join(text[:-1] + format_cache(prog, caches, args.all_syscalls)
                                   + text[-1:]))
    if args.json:
        print(json.dumps(outs[0] if len(outs) == 1 else outs, indent=2))
    else:
        print("\n\n".join(texts))
    return 0 if ok else 1
