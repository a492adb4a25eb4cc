#!/usr/bin/env python3
"""Regenerate the syscall tables from a Linux kernel source tree.

Usage: tools/gen_syscalls.py [--check] [KERNEL_TREE]

KERNEL_TREE defaults to $EBPFSECCOMP_KERNEL_SRC, else /root/kwork/linux-source-6.12.

It reads the kernel's own tables, selecting the ABIs the kernel build selects
for the 64-bit native syscall table of each architecture:

  x86_64   arch/x86/entry/syscalls/syscall_64.tbl, ABIs common and 64
           (arch/x86/entry/syscalls/Makefile: unistd_64.h)
  aarch64  arch/arm64/tools/syscall_64.tbl (the generic scripts/syscall.tbl
           layout), ABIs common and 64 (scripts/Makefile.asm-headers) plus the
           ones arch/arm64/kernel/Makefile.syscalls adds to syscall_abis_64
           (6.12: renameat, rlimit, memfd_secret)

and writes, relative to the repository root:

  bpf/include/ebpfseccomp/syscalls_x86_64.h
  bpf/include/ebpfseccomp/syscalls_aarch64.h
  ebpfseccomp/_syscall_tables.py

The Python module also holds COMPAT_TABLES, the ABIs a 64-bit kernel runs
beside its native one (what `ebpfseccomp convert` needs for a profile's
sub-architectures), with each number as the filter sees it in
seccomp_data.nr:

  i386     arch/x86/entry/syscalls/syscall_32.tbl, ABI i386
  x32      arch/x86/entry/syscalls/syscall_64.tbl, ABIs common and x32, each
           number with __X32_SYSCALL_BIT (0x40000000) set
  arm      arch/arm/tools/syscall.tbl, ABIs common and eabi, plus ARM's private
           calls (__ARM_NR_BASE + n in arch/arm/include/uapi/asm/unistd.h)

With --check nothing is written; the exit status is 1 if any output differs
from what is checked in.  The output depends only on the tables' contents.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TREE = "/root/kwork/linux-source-6.12"


@dataclass(frozen=True)
class ArchTable:
    arch: str  # our name: "x86_64", "aarch64"
    macro: str  # prefix of the always-defined names: SYS_X86_64_openat
    target: str  # the libbpf-style __TARGET_ARCH_* selecting plain names
    table: str  # path of the kernel table, relative to the tree
    abis: tuple[str, ...]  # base ABIs
    extra_abis_from: str | None  # Makefile.syscalls adding to syscall_abis_64


ARCHES: tuple[ArchTable, ...] = (
    ArchTable(
        arch="x86_64",
        macro="SYS_X86_64_",
        target="__TARGET_ARCH_x86",
        table="arch/x86/entry/syscalls/syscall_64.tbl",
        abis=("common", "64"),
        extra_abis_from=None,
    ),
    ArchTable(
        arch="aarch64",
        macro="SYS_AARCH64_",
        target="__TARGET_ARCH_arm64",
        table="arch/arm64/tools/syscall_64.tbl",
        abis=("common", "64"),
        extra_abis_from="arch/arm64/kernel/Makefile.syscalls",
    ),
)


@dataclass(frozen=True)
class CompatTable:
    arch: str  # our name: "i386", "x32", "arm"
    table: str
    abis: tuple[str, ...]
    bit: int  # ORed into every number (x32's __X32_SYSCALL_BIT)
    private_from: str | None  # a uapi header with __ARM_NR_BASE + n calls


COMPAT: tuple[CompatTable, ...] = (
    CompatTable("i386", "arch/x86/entry/syscalls/syscall_32.tbl", ("i386",), 0, None),
    CompatTable("x32", "arch/x86/entry/syscalls/syscall_64.tbl", ("common", "x32"),
                0x40000000, None),
    CompatTable("arm", "arch/arm/tools/syscall.tbl", ("common", "eabi"), 0,
                "arch/arm/include/uapi/asm/unistd.h"),
)


def read_compat(tree: Path, spec: CompatTable) -> list[tuple[str, int]]:
    """(name, number as seccomp sees it) pairs in table order, private calls last."""
    rows = read_table(tree, ArchTable(spec.arch, "", "", spec.table, spec.abis, None))[0]
    out = [(name, num | spec.bit) for name, num in rows]
    if spec.private_from:
        text = (tree / spec.private_from).read_text()
        base = re.search(r"#define\s+__ARM_NR_BASE\s+\(__NR_SYSCALL_BASE\+(0x[0-9a-f]+)\)",
                         text)
        if base is None:
            raise SystemExit(f"{spec.private_from}: no __ARM_NR_BASE")
        for m in re.finditer(r"#define\s+__ARM_NR_(\w+)\s+\(__ARM_NR_BASE\+(\d+)\)", text):
            out.append((m.group(1), int(base.group(1), 16) + int(m.group(2))))
    return out


def extra_abis(tree: Path, makefile: str | None) -> tuple[str, ...]:
    """The ABIs an arch's Makefile.syscalls appends to syscall_abis_64."""
    if makefile is None:
        return ()
    found: list[str] = []
    for line in (tree / makefile).read_text().splitlines():
        m = re.match(r"\s*syscall_abis_64\s*\+=\s*(.*)$", line)
        if m:
            found.extend(m.group(1).replace(",", " ").split())
    return tuple(found)


def read_table(tree: Path, spec: ArchTable) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """(name, number) pairs in table order, and the ABIs that were selected."""
    abis = spec.abis + extra_abis(tree, spec.extra_abis_from)
    rows: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for line in (tree / spec.table).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 3 or fields[1] not in abis:
            continue
        num, name = int(fields[0], 0), fields[2]
        if name in seen and seen[name] != num:
            raise SystemExit(f"{spec.table}: {name} has two numbers ({seen[name]}, {num})")
        if name not in seen:
            seen[name] = num
            rows.append((name, num))
    return rows, abis


def banner(spec: ArchTable, abis: tuple[str, ...], comment: str) -> str:
    return (
        f"{comment} Generated by tools/gen_syscalls.py from Linux 6.12 {spec.table}\n"
        f"{comment} (ABIs: {', '.join(abis)}).  Do not edit: rerun the generator.\n"
    )


def render_header(spec: ArchTable, rows: list[tuple[str, int]], abis: tuple[str, ...]) -> str:
    guard = f"__EBPFSECCOMP_SYSCALLS_{spec.arch.upper()}_H"
    width = max(len(n) for n, _ in rows)
    out = ["/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */\n"]
    out.append(banner(spec, abis, "//"))
    out.append(
        f"//\n"
        f"// {spec.macro}<name> is always defined.  When the filter is built for this\n"
        f"// architecture ({spec.target} defined, as `ebpfseccomp build --arch {spec.arch}`\n"
        f"// does) the plain SYS_<name> is defined as well.  Include\n"
        f"// <ebpfseccomp/syscalls.h> rather than this file.\n"
    )
    out.append(f"#ifndef {guard}\n#define {guard}\n\n")
    for name, num in rows:
        out.append(f"#define {spec.macro}{name:<{width}} {num}\n")
    top = max(num for _, num in rows) + 1
    out.append("\n/* One more than the highest number: size of a per-syscall array map. */\n")
    out.append(f"#define {spec.macro}MAX {top}\n")
    out.append(f"\n#ifdef {spec.target}\n")
    for name, _ in rows:
        out.append(f"#define SYS_{name:<{width}} {spec.macro}{name}\n")
    out.append(f"#define SYS_MAX {spec.macro}MAX\n")
    out.append(f"#endif /* {spec.target} */\n\n#endif /* {guard} */\n")
    return "".join(out)


def render_python(tables: list[tuple[ArchTable, list[tuple[str, int]], tuple[str, ...]]],
                  compat: list[tuple[CompatTable, list[tuple[str, int]]]]) -> str:
    out = ['"""Syscall numbers of Linux 6.12 by architecture (name -> number).\n\n']
    for spec, _, abis in tables:
        out.append(f"{spec.arch}: {spec.table} (ABIs: {', '.join(abis)}).\n")
    out.append("\nCOMPAT_TABLES: the ABIs a 64-bit kernel runs beside its own (numbers as\n"
               "seccomp_data.nr carries them):\n")
    for cspec, _ in compat:
        extra = f", | {cspec.bit:#x}" if cspec.bit else ""
        extra += ", + ARM private calls" if cspec.private_from else ""
        out.append(f"{cspec.arch}: {cspec.table} (ABIs: {', '.join(cspec.abis)}{extra}).\n")
    out.append("\nGenerated by tools/gen_syscalls.py; do not edit.  Use ebpfseccomp.syscalls.\n")
    out.append('"""\n\n')
    out.append("TABLES: dict[str, dict[str, int]] = {\n")
    for spec, rows, _ in tables:
        out.append(f'    "{spec.arch}": {{\n')
        for name, num in rows:
            out.append(f'        "{name}": {num},\n')
        out.append("    },\n")
    out.append("}\n\nCOMPAT_TABLES: dict[str, dict[str, int]] = {\n")
    for cspec, rows in compat:
        out.append(f'    "{cspec.arch}": {{\n')
        for name, num in rows:
            out.append(f'        "{name}": {num},\n')
        out.append("    },\n")
    out.append("}\n")
    return "".join(out)


def generate(tree: Path) -> dict[Path, str]:
    """Output path (absolute) -> contents."""
    tables = []
    files: dict[Path, str] = {}
    for spec in ARCHES:
        rows, abis = read_table(tree, spec)
        tables.append((spec, rows, abis))
        path = ROOT / "bpf" / "include" / "ebpfseccomp" / f"syscalls_{spec.arch}.h"
        files[path] = render_header(spec, rows, abis)
    compat = [(spec, read_compat(tree, spec)) for spec in COMPAT]
    files[ROOT / "ebpfseccomp" / "_syscall_tables.py"] = render_python(tables, compat)
    return files


def main(argv: list[str]) -> int:
    args = argv[1:]
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    tree = Path(args[0] if args else os.environ.get("EBPFSECCOMP_KERNEL_SRC", DEFAULT_TREE))
    if not (tree / ARCHES[0].table).is_file():
        print(f"{tree}: not a Linux source tree (no {ARCHES[0].table})", file=sys.stderr)
        return 1
    status = 0
    for path, text in generate(tree).items():
        rel = path.relative_to(ROOT)
        if check:
            if not path.is_file() or path.read_text() != text:
                print(f"{rel}: differs from what {tree} generates", file=sys.stderr)
                status = 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {rel}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
