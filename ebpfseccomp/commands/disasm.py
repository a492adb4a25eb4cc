"""`ebpfseccomp disasm`: read what clang made of a filter."""

from __future__ import annotations

import argparse

from ..elf import load_object
from ..inspect import disasm

DESCRIPTION = """\
Print a BPF object's program as a readable listing: one instruction per
line with its index, helper names (call bpf_map_lookup_elem#1), map and
global names (r1 = map[allowed], r1 = &.rodata+8), the struct seccomp_data
field each context load reads (; nr, ; args[2]), jump targets, subprogram
labels, and the C source lines interleaved when the object has BTF line
info (ebpfseccomp build always adds it).

examples:
  ebpfseccomp disasm filter.o
  ebpfseccomp disasm filter.o --bytes              with the raw instruction bytes
  ebpfseccomp disasm multi.o --program deny_net
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "disasm",
        help="disassemble a filter with helper, map and context field names",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("object", metavar="OBJ.o", help="BPF object from `ebpfseccomp build`")
    p.add_argument("--program", metavar="NAME", help="the program to list (function name)")
    p.add_argument("--bytes", action="store_true", help="show each instruction's bytes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    obj = load_object(args.object)
    print(disasm(obj, args.program, show_bytes=args.bytes), end="")
    return 0
