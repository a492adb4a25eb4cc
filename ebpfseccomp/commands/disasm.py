"""`ebpfseccomp disasm`: read what clang made of a filter."""

from __future__ import annotations

import argparse
import json

from ..analysis.disasm import disasm, disasm_data
from ..elf import load_object

DESCRIPTION = """\
Print a BPF object's program as a readable listing: one instruction per
line with its index, helper names (call bpf_map_lookup_elem#1), map and
global names (r1 = map[allowed], r1 = &.rodata+8), the struct seccomp_data
field each context load reads (; nr, ; args[2]), jump targets, subprogram
labels, and the C source lines interleaved when the object has BTF line
info (ebpfseccomp build always adds it).  In seccomp's terms, as
seccomp-tools users read filters: syscall names where nr is compared
(; getppid, from the table of the arch the filter checks for), arch names
(; AUDIT_ARCH_X86_64) and actions put in r0 (; ERRNO(EPERM), ; ALLOW).
An object with several programs lists them all unless --program picks one.

examples:
  ebpfseccomp disasm filter.o
  ebpfseccomp disasm filter.o --bytes              with the raw instruction bytes
  ebpfseccomp disasm multi.o --program deny_net
  ebpfseccomp disasm filter.o --json               one record per instruction
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
    p.add_argument("--json", action="store_true",
                   help="print the listing as JSON: per program, per instruction")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    obj = load_object(args.object)
    if args.json:
        data = disasm_data(obj, args.program)
        print(json.dumps(data if len(data) != 1 else data[0]))
        return 0
    print(disasm(obj, args.program, show_bytes=args.bytes), end="")
    return 0
