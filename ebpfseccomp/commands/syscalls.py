"""`ebpfseccomp syscalls`: names <-> numbers, as scmp_sys_resolver answers them."""

from __future__ import annotations

import argparse
import json

from ..errors import UsageError
from ..syscalls import ARCHES, canonical_arch, table
from ..syscalls import name as name_of
from ..syscalls import nr as nr_of

DESCRIPTION = """\
Resolve system call names and numbers from the project's own tables (the
ones SYS_<name> in filters and the emulator use), per architecture.

examples:
  ebpfseccomp syscalls openat                 257
  ebpfseccomp syscalls 59                     execve
  ebpfseccomp syscalls openat --arch aarch64  56
  ebpfseccomp syscalls open read --all        each name on every architecture
  ebpfseccomp syscalls --list --arch aarch64  the whole table
  ebpfseccomp syscalls openat --json

A name the architecture does not have (open on aarch64) is an error, with
the closest names; a number with no name prints "?" (filters see such
numbers too).
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "syscalls",
        help="resolve syscall names and numbers (like scmp_sys_resolver)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("items", nargs="*", metavar="NAME|NR", help="names or numbers to resolve")
    p.add_argument("--arch", default="x86_64", metavar="ARCH",
                   help=f"one of {', '.join(ARCHES)} (default x86_64; arm64 is aarch64)")
    p.add_argument("--all", action="store_true", help="answer for every architecture")
    p.add_argument("--list", action="store_true", help="print the whole table, by number")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=run)


def _resolve(item: str, arch: str) -> dict[str, object]:
    text = item.strip()
    try:
        number = int(text, 0)
    except ValueError:
        number = None
    if number is not None:
        if number < 0:
            raise UsageError(f"{item!r}: syscall numbers are not negative")
        if number > 0xFFFFFFFF:
            raise UsageError(f"{item!r}: syscall numbers are 32 bits (the nr of struct "
                             "seccomp_data); no filter sees this one",
                             hint="give a number up to 4294967295, or a name")
        return {"arch": arch, "nr": number, "name": name_of(number, arch)}
    return {"arch": arch, "nr": nr_of(text, arch), "name": text.removeprefix("SYS_")
            .removeprefix("__NR_")}


def run(args: argparse.Namespace) -> int:
    arches = list(ARCHES) if args.all else [canonical_arch(args.arch)]
    if args.list:
        rows = [{"arch": a, "nr": n, "name": s}
                for a in arches for s, n in sorted(table(a).items(), key=lambda kv: kv[1])]
    elif args.items:
        rows = []
        for item in args.items:
            for a in arches:
                try:
                    rows.append(_resolve(item, a))
                except UsageError:
                    if not args.all:
                        raise
                    rows.append({"arch": a, "nr": None, "name": item})  # not on this arch
    else:
        raise UsageError("give a syscall NAME or NR (or --list)",
                         hint="ebpfseccomp syscalls --help shows examples")
    if args.json:
        print(json.dumps(rows if len(rows) != 1 else rows[0]))
        return 0
    for row in rows:
        answer = row["name"] if str(row["nr"]) in args.items else row["nr"]
        if args.list:
            print(f"{row['nr']:>4} {row['name']}" + (f"  ({row['arch']})" if args.all else ""))
        elif args.all or len(args.items) > 1:
            nr = "?" if row["nr"] is None else row["nr"]
            print(f"{row['arch']}: {row['name'] or '?'} {nr}")
        else:
            print(answer if answer is not None else "?")
    return 0
