"""`ebpfseccomp probe`: does the running kernel run eBPF seccomp filters?"""

from __future__ import annotations

import argparse
import json

from ..attach import probe

DESCRIPTION = """\
Ask the running kernel, without privilege and without changing anything,
whether it runs eBPF seccomp filters, and what you would get:

  - can it load a program of type seccomp (33)?  (needs the right to load:
    as an unprivileged user with kernel.unprivileged_bpf_disabled != 0 this
    part answers "unknown")
  - does seccomp(2) accept SECCOMP_FILTER_FLAG_EXTENDED (1<<6)?  (a patched
    kernel answers EBADF for fd -1, an unpatched one EINVAL)
  - kernel.yama.ptrace_scope and kernel.unprivileged_bpf_disabled, and the
    helper tier a program you load would get: none, extended, ptrace
    (extended + reading any task's memory) or tracing.

Exit status 0 when eBPF seccomp filters are supported, 1 when not.

examples:
  ebpfseccomp probe
  ebpfseccomp probe --json | jq .tier
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="does this kernel run eBPF seccomp filters?",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    support = probe()
    if args.json:
        print(json.dumps(support.to_dict(), indent=2))
    else:
        print(support.describe())
    return 0 if support.supported else 1
