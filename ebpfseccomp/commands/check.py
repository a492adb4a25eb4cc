"""`ebpfseccomp check`: will the kernel's verifier take this object?"""

from __future__ import annotations

import argparse
import json

from ..contract import Tier
from ..elf import load_object
from ..inspect import Report, check

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
    p.set_defaults(func=run)


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
    reports = [check(obj, name, unprivileged=args.unprivileged) for name in names]
    if args.json:
        data = [r.to_dict() for r in reports]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0 if all(r.loadable for r in reports) else 1
