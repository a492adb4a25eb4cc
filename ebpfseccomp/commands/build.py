"""`ebpfseccomp build`: compile a restricted-C filter to a BPF object."""

from __future__ import annotations

import argparse
import json
import sys

from ..build import build, default_arch, include_dir
from ..errors import UsageError
from ..syscalls import ARCHES

DESCRIPTION = """\
Compile a seccomp filter written in restricted C into a BPF object file
(clang -O2 -g -target bpf -mcpu=v3, with BTF), ready for `check`, `disasm`,
`emulate` and `run`.

A filter is a function in section "seccomp" that reads struct seccomp_data
and returns a seccomp action:

    #include <ebpfseccomp/filter.h>

    SEC("seccomp") int no_ptrace(struct seccomp_data *ctx)
    {
            if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
                    return SECCOMP_KILL_PROCESS;
            if (ctx->nr == SYS_ptrace)
                    return SECCOMP_ERRNO(EPERM);
            return SECCOMP_ALLOW;
    }
    SECCOMP_LICENSE("GPL");

examples:
  ebpfseccomp build no_ptrace.c                    writes no_ptrace.o next to it
  ebpfseccomp build no_ptrace.c -o /tmp/f.o --arch aarch64
  ebpfseccomp build bpf/examples/rate_limit.c -D RATE_LIMIT=100 -o build/

--arch picks the syscall numbers SYS_<name> stands for and the value of
EBPFSECCOMP_AUDIT_ARCH (default: this machine's architecture).  The same
inputs always give a byte-identical object.  Examples and the header
reference: bpf/examples/, docs/writing-filters.md.
"""


def _define(text: str) -> tuple[str, str | None]:
    name, sep, value = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"bad define {text!r}: expected NAME or NAME=VALUE")
    return name, (value if sep else None)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "build",
        help="compile a filter (restricted C) to a BPF object",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC.c", nargs="?", help="the filter's C source")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="object to write (default: SRC with .o); a directory means DIR/SRC.o",
    )
    p.add_argument(
        "-I",
        dest="include_dirs",
        action="append",
        default=[],
        metavar="DIR",
        help="add DIR to the include path (before the ebpfseccomp headers)",
    )
    p.add_argument(
        "-D",
        dest="defines",
        action="append",
        default=[],
        type=_define,
        metavar="NAME[=VALUE]",
        help="define a preprocessor macro",
    )
    p.add_argument(
        "--arch",
        choices=ARCHES,
        help="target architecture for SYS_<name> and EBPFSECCOMP_AUDIT_ARCH "
        "(default: this machine's)",
    )
    p.add_argument("--json", action="store_true", help="print the result as a JSON object")
    p.add_argument(
        "--print-include-dir",
        action="store_true",
        help="print the directory holding ebpfseccomp/filter.h and exit (SRC is ignored)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.print_include_dir:
        print(include_dir())
        return 0
    if not args.src:
        raise UsageError("missing SRC.c", hint="ebpfseccomp build --help shows an example")
    defines: dict[str, str | None] = {}
    for name, value in args.defines:
        if name in defines:
            raise UsageError(f"-D {name} given twice")
        defines[name] = value
    warnings: list[str] = []
    out = build(
        args.src,
        out=args.output,
        include_dirs=args.include_dirs,
        defines=defines,
        arch=args.arch,
        warnings=warnings,
    )
    for text in warnings:
        print(text, file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "source": args.src,
                    "object": str(out),
                    "arch": args.arch or default_arch(),
                    "size": out.stat().st_size,
                    "warnings": warnings,
                }
            )
        )
    else:
        print(out)
    return 0
