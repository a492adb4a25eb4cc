"""Reading BPF relocatable objects: ``load_object(path) -> BpfObject``.

The reader takes what clang -target bpf writes (ELF64, little-endian,
EM_BPF, ET_REL) and turns it into the data model of docs/architecture.md:

* programs: every function in a ``seccomp`` or ``seccomp/...`` section, with
  the ``.text`` subprograms it calls (transitively) appended after it and the
  pseudo-call immediates rewritten to the new relative targets, as libbpf
  links them;
* maps: BTF-defined maps in ``.maps``, and global variables (``.data``,
  ``.rodata``, ``.bss``, ``.data.*``, ``.rodata.*``) as one-entry ARRAY maps
  whose ``initial`` value is the section contents;
* relocations: ``R_BPF_64_64`` on ``ld_imm64`` becomes a :class:`Reloc`
  (``"map"`` or ``"global"``); the ``ld_imm64`` slots themselves are left as
  in the file (for globals the first slot's imm is the addend, already folded
  into ``Reloc.offset``);
* line info from ``.BTF.ext``, per linked instruction.

It works in two phases.  The first reads section headers, symbols and
relocation entries with pyelftools into plain records, after checking the
header and every section's bounds by hand; anything pyelftools trips over
there becomes an ObjectError.  The second phase interprets those records
with explicit checks.  Every problem is an
:class:`~ebpfseccomp.errors.ObjectError` that names the file.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

from . import btf as btfmod
from ._gcpause import paused_gc
from .btf import SourceLine
from .errors import ObjectError
from .insn import BPF_PSEUDO_CALL, INSN_SIZE, Insn, decode

__all__ = [
    "SourceLine",
    "MapSpec",
    "Reloc",
    "Program",
    "BpfObject",
    "load_object",
    "is_program_section",
]

EM_BPF = 247
ET_REL = 1

R_BPF_NONE = 0
R_BPF_64_64 = 1
R_BPF_64_ABS64 = 2
R_BPF_64_ABS32 = 3
R_BPF_64_NODYLD32 = 4
R_BPF_64_32 = 10

SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

BPF_PSEUDO_FUNC = 4  # ld_imm64 src_reg: imm is a pc-relative subprogram address

BPF_MAP_TYPE_ARRAY = 2
BPF_F_RDONLY_PROG = 1 << 7
BPF_F_MMAPABLE = 1 << 10

_MACHINES = {
    0: "no machine",
    3: "x86 (i386)",
    8: "MIPS",
    20: "PowerPC",
    21: "PowerPC64",
    22: "S/390",
    40: "ARM",
    62: "x86-64",
    183: "AArch64",
    243: "RISC-V",
    258: "LoongArch",
}

_ELF_TYPES = {0: "no file type", 2: "an executable", 3: "a shared object", 4: "a core dump"}

_SECTION_KINDS = {
    "socket": "a socket filter",
    "xdp": "an XDP program",
    "tc": "a TC classifier",
    "classifier": "a TC classifier",
    "kprobe": "a kprobe",
    "kretprobe": "a kretprobe",
    "tracepoint": "a tracepoint program",
    "tp": "a tracepoint program",
    "raw_tracepoint": "a raw tracepoint program",
    "fentry": "an fentry program",
    "fexit": "an fexit program",
    "lsm": "an LSM program",
    "cgroup": "a cgroup program",
    "uprobe": "a uprobe",
    "perf_event": "a perf event program",
    "struct_ops": "a struct_ops program",
}


# --- data model (docs/architecture.md) ----------------------------------------


@dataclass
class MapSpec:
    name: str  # "counts", or ".data" / ".rodata" / ".bss" / ".data.foo" for globals
    type: int  # BPF_MAP_TYPE_* (globals: BPF_MAP_TYPE_ARRAY, 1 entry)
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    initial: bytes | None  # globals: section contents (.bss: zeros); else None
    is_global: bool
    #: the object's BTF and the type ids of key and value (a global section:
    #: value_type is its DATASEC), for showing contents; None/0: raw bytes only
    btf: btfmod.Btf | None = field(default=None, repr=False, compare=False)
    key_type: int = 0
    value_type: int = 0


@dataclass
class Reloc:
    insn: int  # index into Program.insns of the ld_imm64's first slot
    kind: str  # "map" (map pointer) or "global" (pointer into a global map value)
    map: str  # MapSpec.name
    offset: int  # byte offset into the value ("global"), 0 for "map"
    symbol: str


@dataclass
class Program:
    name: str  # the function's symbol name
    section: str  # "seccomp" (or "seccomp/NAME")
    insns: list[Insn]  # linked: used .text subprograms appended, pseudo-call imms resolved
    relocs: list[Reloc]
    subprogs: dict[int, str]  # start index -> function name; 0 is the program itself
    lines: dict[int, SourceLine]


@dataclass
class BpfObject:
    path: str
    license: str | None
    programs: list[Program]
    maps: dict[str, MapSpec]

    def program(self, name: str | None = None) -> Program:
        """The program NAME (function or section name); the only one if NAME is None."""
        names = ", ".join(p.name for p in self.programs) or "none"
        if name is None:
            if len(self.programs) == 1:
                return self.programs[0]
            if not self.programs:
                raise ObjectError("no seccomp program in the object", path=self.path)
            raise ObjectError(
                f"{len(self.programs)} seccomp programs ({names}): choose one with --program NAME",
                path=self.path,
            )
        for p in self.programs:
            if p.name == name:
                return p
        by_section = [p for p in self.programs if p.section == name]
        if len(by_section) == 1:
            return by_section[0]
        raise ObjectError(f"no seccomp program named {name!r} (programs: {names})", path=self.path)

    def reloc_at(self, program: Program, index: int) -> Reloc | None:
        """The relocation whose ld_imm64 starts at INDEX of PROGRAM, if any."""
        for r in program.relocs:
            if r.insn == index:
                return r
        return None


def is_program_section(name: str) -> bool:
    return name == "seccomp" or name.startswith("seccomp/")


def _is_global_section(name: str) -> bool:
    for base in (".data", ".rodata", ".bss"):
        if name == base or name.startswith(base + "."):
            return True
    return False


# --- phase 1: raw records -----------------------------------------------------


@dataclass
class _Section:
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int
    data: bytes  # empty for NOBITS


@dataclass
class _Symbol:
    index: int
    name: str
    value: int
    size: int
    type: str  # STT_*
    bind: str  # STB_*
    shndx: int | None  # None: undefined; -1: absolute/common/other special


@dataclass
class _Rel:
    offset: int
    sym: int
    type: int


def _sh_type(value: object) -> int:
    names = {
        "SHT_NULL": SHT_NULL, "SHT_PROGBITS": SHT_PROGBITS, "SHT_SYMTAB": SHT_SYMTAB,
        "SHT_STRTAB": SHT_STRTAB, "SHT_RELA": SHT_RELA, "SHT_NOBITS": SHT_NOBITS,
        "SHT_REL": SHT_REL,
    }  # fmt: skip
    if isinstance(value, int):
        return value
    return names.get(str(value), 0x7FFFFFFF)


def _check_header(path: str, data: bytes) -> None:
    if len(data) < 4 or data[:4] != b"\x7fELF":
        head = data[:64]
        hint = "expected a BPF object from `ebpfseccomp build` or clang -target bpf -c"
        if not data:
            raise ObjectError("empty file, not an ELF object", path=path, hint=hint)
        if head.lstrip().startswith((b"#include", b"#define", b"//", b"/*", b"SEC(")):
            hint = "this looks like C source: build it first with `ebpfseccomp build`"
        raise ObjectError("not an ELF file", path=path, hint=hint)
    if len(data) < 64:
        raise ObjectError(f"truncated ELF header ({len(data)} of 64 bytes)", path=path)
    ei_class, ei_data = data[4], data[5]
    if ei_class == 1:
        raise ObjectError(
            "32-bit ELF, not a BPF object (BPF objects are ELF64)",
            path=path,
            hint="did you compile with clang -target bpf?",
        )
    if ei_class != 2:
        raise ObjectError(f"bad ELF class {ei_class}", path=path)
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if ei_data == 2:
        if struct.unpack_from(">H", data, 18)[0] == EM_BPF:
            raise ObjectError(
                "big-endian BPF object (bpfeb); this toolchain reads little-endian BPF",
                path=path,
                hint="compile with clang -target bpf (or bpfel)",
            )
        raise ObjectError(
            "big-endian ELF, not a BPF object",
            path=path,
            hint="did you compile with clang -target bpf?",
        )
    if ei_data != 1:
        raise ObjectError(f"bad ELF data encoding {ei_data}", path=path)
    if e_machine != EM_BPF:
        machine = _MACHINES.get(e_machine, f"machine {e_machine}")
        raise ObjectError(
            f"ELF for {machine}, not BPF: did you compile with clang -target bpf?", path=path
        )
    if e_type != ET_REL:
        what = _ELF_TYPES.get(e_type, f"ELF type {e_type}")
        raise ObjectError(
            f"{what}, not a relocatable BPF object (clang -target bpf -c output)", path=path
        )
    e_shoff = struct.unpack_from("<Q", data, 40)[0]
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 58)
    if e_shnum == 0:
        raise ObjectError("ELF object has no section headers", path=path)
    if e_shentsize != 64:
        raise ObjectError(f"bad section header size {e_shentsize} (expected 64)", path=path)
    end = e_shoff + e_shnum * e_shentsize
    if end > len(data):
        raise ObjectError(
            f"truncated: the section header table ends at byte {end}, the file has {len(data)}",
            path=path,
        )
    if e_shstrndx >= e_shnum:
        raise ObjectError(f"section name table index {e_shstrndx} out of range", path=path)


def _read_raw(
    path: str, data: bytes
) -> tuple[list[_Section], list[_Symbol], dict[int, list[_Rel]]]:
    """Phase 1: sections, symbols and REL entries (by target section index)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    _check_header(path, data)
    where = "the ELF header"
    try:
        elf = ELFFile(io.BytesIO(data))
        sections: list[_Section] = []
        for i in range(elf.num_sections()):
            where = f"section header #{i}"
            sec = elf.get_section(i)
            h = sec.header
            stype = _sh_type(h["sh_type"])
            offset, size = int(h["sh_offset"]), int(h["sh_size"])
            name = sec.name if isinstance(sec.name, str) else f"#{i}"
            where = f"section {name!r}"
            if stype not in (SHT_NOBITS, SHT_NULL) and offset + size > len(data):
                raise ObjectError(
                    f"section {name!r} is truncated: it needs bytes {offset}..{offset + size}, "
                    f"the file has {len(data)}",
                    path=path,
                )
            content = b"" if stype in (SHT_NOBITS, SHT_NULL) else data[offset : offset + size]
            sections.append(
                _Section(
                    index=i,
                    name=name,
                    type=stype,
                    flags=int(h["sh_flags"]),
                    offset=offset,
                    size=size,
                    link=int(h["sh_link"]),
                    info=int(h["sh_info"]),
                    entsize=int(h["sh_entsize"]),
                    data=content,
                )
            )

        symtabs = [s for s in sections if s.type == SHT_SYMTAB]
        if not symtabs:
            raise ObjectError("no symbol table (.symtab): not a clang BPF object?", path=path)
        if len(symtabs) > 1:
            raise ObjectError("more than one symbol table", path=path)
        st = symtabs[0]
        where = "the symbol table"
        if st.entsize != 24 or st.size % 24:
            raise ObjectError(
                f"bad symbol table: entry size {st.entsize}, size {st.size} "
                "(expected 24-byte entries)",
                path=path,
            )
        if not (0 < st.link < len(sections)) or sections[st.link].type != SHT_STRTAB:
            raise ObjectError("symbol table's string table link is invalid", path=path)
        symbols: list[_Symbol] = []
        symsec = elf.get_section(st.index)
        for i in range(st.size // 24):
            where = f"symbol #{i}"
            s = symsec.get_symbol(i)
            shndx_raw = s["st_shndx"]
            if shndx_raw == "SHN_UNDEF":
                shndx: int | None = None
            elif isinstance(shndx_raw, int):
                shndx = shndx_raw
            else:
                shndx = -1
            stype = s["st_info"]["type"]
            sname = s.name if isinstance(s.name, str) else ""
            if stype == "STT_SECTION" and shndx is not None and 0 <= shndx < len(sections):
                sname = sections[shndx].name
            symbols.append(
                _Symbol(
                    index=i,
                    name=sname,
                    value=int(s["st_value"]),
                    size=int(s["st_size"]),
                    type=str(stype),
                    bind=str(s["st_info"]["bind"]),
                    shndx=shndx,
                )
            )

        rels: dict[int, list[_Rel]] = {}
        for sec in sections:
            if sec.type == SHT_RELA:
                raise ObjectError(
                    f"RELA relocation section {sec.name!r}: BPF objects use REL", path=path
                )
            if sec.type != SHT_REL:
                continue
            where = f"relocation section {sec.name!r}"
            if sec.entsize != 16 or sec.size % 16:
                raise ObjectError(
                    f"bad relocation section {sec.name!r}: entry size {sec.entsize}, "
                    f"size {sec.size} (expected 16-byte entries)",
                    path=path,
                )
            if not (0 < sec.info < len(sections)):
                raise ObjectError(
                    f"relocation section {sec.name!r} applies to section #{sec.info}, "
                    "which does not exist",
                    path=path,
                )
            entries = rels.setdefault(sec.info, [])
            for off, info in struct.iter_unpack("<QQ", sec.data):
                entries.append(_Rel(offset=off, sym=info >> 32, type=info & 0xFFFFFFFF))
    except ObjectError:
        raise
    except (ELFError, Exception) as exc:  # pyelftools raises many kinds on garbage
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ObjectError(f"malformed ELF in {where}: {detail}", path=path) from None
    return sections, symbols, rels


# --- phase 2: interpretation --------------------------------------------------


@dataclass
class _Func:
    name: str
    section: int
    start: int  # instruction index in the section
    end: int  # exclusive
    is_global: bool


@dataclass
class _CodeSection:
    sec: _Section
    insns: list[Insn]
    funcs: list[_Func] = field(default_factory=list)
    rels: dict[int, _Rel] = field(default_factory=dict)  # insn index -> reloc


class _Reader:
    def __init__(self, path: str, data: bytes):
        self.path = path
        self.data = data

    def err(self, message: str, hint: str | None = None) -> ObjectError:
        return ObjectError(message, path=self.path, hint=hint)

    def read(self) -> BpfObject:
        self.sections, self.symbols, rels = _read_raw(self.path, self.data)
        self.btf = self._read_btf()
        self.code = self._read_code(rels)
        self.maps, self.map_sections = self._read_maps()
        self.license = self._read_license()
        self.lines = self._read_lines()
        programs = self._find_programs()
        return BpfObject(
            path=self.path,
            license=self.license,
            programs=[self._link(f) for f in programs],
            maps=self.maps,
        )

    # --- sections ------------------------------------------------------------

    def _section(self, name: str) -> _Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def _read_btf(self) -> btfmod.Btf | None:
        sec = self._section(".BTF")
        if sec is None or sec.type == SHT_NOBITS:
            return None
        return btfmod.Btf(sec.data, self.path)

    def _read_lines(self) -> dict[str, dict[int, SourceLine]]:
        sec = self._section(".BTF.ext")
        if sec is None or sec.type == SHT_NOBITS:
            return {}
        return btfmod.parse_line_info(sec.data, self.btf, self.path)

    def _read_license(self) -> str | None:
        sec = self._section("license")
        if sec is None:
            return None
        raw = sec.data.split(b"\0", 1)[0]
        return raw.decode("utf-8", errors="replace")

    # --- code ----------------------------------------------------------------

    def _read_code(self, rels: dict[int, list[_Rel]]) -> dict[int, _CodeSection]:
        code: dict[int, _CodeSection] = {}
        for sec in self.sections:
            if sec.type != SHT_PROGBITS or not sec.flags & SHF_EXECINSTR:
                continue
            if sec.size % INSN_SIZE:
                raise self.err(
                    f"code section {sec.name!r} is {sec.size} bytes, not a multiple of {INSN_SIZE}"
                )
            code[sec.index] = _CodeSection(sec=sec, insns=decode(sec.data))

        # functions: FUNC symbols in code sections
        for sym in self.symbols:
            if sym.type != "STT_FUNC" or sym.shndx is None or sym.shndx not in code:
                continue
            cs = code[sym.shndx]
            if sym.value % INSN_SIZE or sym.value >= cs.sec.size or sym.size % INSN_SIZE:
                raise self.err(
                    f"function {sym.name!r} at {sym.value}+{sym.size} is not "
                    f"instruction-aligned inside {cs.sec.name!r} ({cs.sec.size} bytes)"
                )
            if sym.value + sym.size > cs.sec.size:
                raise self.err(
                    f"function {sym.name!r} ({sym.value}+{sym.size}) runs past the end of "
                    f"{cs.sec.name!r} ({cs.sec.size} bytes)"
                )
            start = sym.value // INSN_SIZE
            end = (sym.value + sym.size) // INSN_SIZE if sym.size else -1
            cs.funcs.append(
                _Func(
                    name=sym.name or f"{cs.sec.name}+{sym.value}",
                    section=sym.shndx,
                    start=start,
                    end=end,
                    is_global=sym.bind == "STB_GLOBAL",
                )
            )
        for cs in code.values():
            cs.funcs.sort(key=lambda f: f.start)
            for i, f in enumerate(cs.funcs):
                if f.end < 0:  # size 0: up to the next function or the section end
                    nxt = [g.start for g in cs.funcs[i + 1 :] if g.start > f.start]
                    f.end = nxt[0] if nxt else len(cs.insns)
            if not cs.funcs and cs.insns:
                # hand-written code without FUNC symbols: one function per section
                cs.funcs.append(_Func(cs.sec.name, cs.sec.index, 0, len(cs.insns), is_global=True))

        # relocations against code sections
        for target, entries in rels.items():
            sec = self.sections[target]
            if target not in code:
                if sec.flags & SHF_EXECINSTR and sec.type == SHT_NOBITS:
                    raise self.err(f"code section {sec.name!r} has no contents")
                continue  # .BTF, .debug_*: not needed
            cs = code[target]
            for r in entries:
                if r.type == R_BPF_NONE:
                    continue
                if r.offset % INSN_SIZE or r.offset >= cs.sec.size:
                    raise self.err(
                        f"relocation at offset {r.offset} of {cs.sec.name!r} is outside the "
                        f"section ({cs.sec.size} bytes) or not on an instruction"
                    )
                if r.sym == 0 or r.sym >= len(self.symbols):
                    raise self.err(
                        f"relocation at {cs.sec.name}+{r.offset} refers to symbol #{r.sym}, "
                        f"but the symbol table has {len(self.symbols)} entries"
                    )
                idx = r.offset // INSN_SIZE
                if idx in cs.rels:
                    raise self.err(f"two relocations on instruction {idx} of {cs.sec.name!r}")
                cs.rels[idx] = r
        return code

    def _find_programs(self) -> list[_Func]:
        progs: list[_Func] = []
        for cs in self.code.values():
            if not is_program_section(cs.sec.name):
                continue
            funcs = [f for f in cs.funcs if f.is_global] or cs.funcs
            progs.extend(funcs)
        if progs:
            return progs
        others = []
        for cs in self.code.values():
            if cs.sec.name == ".text" or not cs.insns:
                continue
            kind = _SECTION_KINDS.get(cs.sec.name.split("/", 1)[0].split(".", 1)[0])
            others.append(f"{cs.sec.name!r}" + (f" ({kind})" if kind else ""))
        if others:
            found = "found program sections " + ", ".join(others)
        elif any(cs.insns for cs in self.code.values()):
            found = "all code is in .text"
        else:
            found = "the object holds no code"
        raise self.err(
            f"no seccomp program: {found}",
            hint='put the filter function in SEC("seccomp")',
        )

    # --- maps ----------------------------------------------------------------

    def _read_maps(self) -> tuple[dict[str, MapSpec], dict[int, str]]:
        """Maps by name, and section index -> name of the map for global sections."""
        maps: dict[str, MapSpec] = {}
        map_sections: dict[int, str] = {}
        if self._section("maps") is not None:
            raise self.err(
                'legacy "maps" section (struct bpf_map_def) is not supported',
                hint='declare maps BTF-style: struct { __uint(type, ...); ... } name SEC(".maps")',
            )
        msec = self._section(".maps")
        if msec is not None:
            if self.btf is None:
                raise self.err(
                    ".maps section but no BTF: BTF-defined maps need debug info",
                    hint="compile with -g (ebpfseccomp build does)",
                )
            defs = self.btf.datasec_vars(".maps")
            for sym in self.symbols:
                if sym.shndx != msec.index or sym.type in ("STT_SECTION", "STT_FILE"):
                    continue
                if not sym.name:
                    continue
                t = defs.get(sym.name)
                if t is None:
                    raise self.err(f"map {sym.name!r} in .maps has no BTF definition")
                d = btfmod.parse_map_def(self.btf, sym.name, t)
                if d.unsupported:
                    raise self.err(
                        f"map {sym.name!r} uses {', '.join(d.unsupported)}: map-in-map and "
                        "prepopulated maps are not supported for seccomp filters"
                    )
                if d.type is None:
                    raise self.err(
                        f"map {sym.name!r} has no type", hint="add __uint(type, BPF_MAP_TYPE_...)"
                    )
                maps[sym.name] = MapSpec(
                    name=sym.name,
                    type=d.type,
                    key_size=d.key_size or 0,
                    value_size=d.value_size or 0,
                    max_entries=d.max_entries or 0,
                    flags=d.map_flags,
                    initial=None,
                    is_global=False,
                    btf=self.btf,
                    key_type=d.key_type,
                    value_type=d.value_type,
                )
        for sec in self.sections:
            if not _is_global_section(sec.name) or not sec.flags & SHF_ALLOC:
                continue
            if sec.type not in (SHT_PROGBITS, SHT_NOBITS) or sec.size == 0:
                continue
            if sec.flags & SHF_EXECINSTR:
                continue
            if sec.name in maps:
                raise self.err(f"map name {sec.name!r} used twice")
            if sec.size > 1 << 28:
                raise self.err(f"global data section {sec.name!r} is implausibly large")
            initial = bytes(sec.size) if sec.type == SHT_NOBITS else sec.data
            readonly = sec.name.startswith(".rodata")
            maps[sec.name] = MapSpec(
                name=sec.name,
                type=BPF_MAP_TYPE_ARRAY,
                key_size=4,
                value_size=sec.size,
                max_entries=1,
                flags=BPF_F_MMAPABLE | (BPF_F_RDONLY_PROG if readonly else 0),
                initial=initial,
                is_global=True,
                btf=self.btf,
                value_type=self._datasec_id(sec.name),
            )
            map_sections[sec.index] = sec.name
        return maps, map_sections

    def _datasec_id(self, name: str) -> int:
        """The DATASEC describing global section NAME, its variables placed at
        their symbols' offsets (clang leaves them 0; libbpf fixes them up the
        same way); 0 if there is none."""
        sec = self.btf.find_datasec(name) if self.btf is not None else None
        if sec is None:
            return 0
        index = next((s.index for s in self.sections if s.name == name), None)
        where = {sym.name: (sym.value, sym.size) for sym in self.symbols
                 if sym.shndx == index and sym.type == "STT_OBJECT"}
        fixed = []
        for vtid, off, size in sec.members:
            v = self.btf.type(vtid)
            placed = where.get(v.name) if v is not None else None
            fixed.append((vtid, placed[0], placed[1] or size) if placed else (vtid, off, size))
        sec.members = fixed
        return sec.id

    # --- linking -------------------------------------------------------------

    def _func_at(self, section: int, index: int) -> _Func | None:
        cs = self.code.get(section)
        if cs is None:
            return None
        for f in cs.funcs:
            if f.start == index:
                return f
        return None

    def _call_target(self, cs: _CodeSection, idx: int, ins: Insn) -> tuple[int, int] | None:
        """(section, insn index) a pseudo call or ld_imm64 func pointer at IDX targets."""
        r = cs.rels.get(idx)
        where = f"{cs.sec.name}+{idx * INSN_SIZE} (instruction {idx})"
        if r is None:
            if ins.is_pseudo_call():
                return cs.sec.index, idx + ins.imm + 1
            return None
        sym = self.symbols[r.sym]
        if sym.shndx is None or sym.shndx not in self.code:
            return None  # not a code reference; handled as a data relocation
        if ins.is_pseudo_call() and r.type == R_BPF_64_32:
            target = sym.value // INSN_SIZE + ins.imm + 1
        elif ins.is_ld_imm64() and r.type == R_BPF_64_64:
            target = (sym.value + ins.imm) // INSN_SIZE
        else:
            raise self.err(
                f"relocation at {where} against function {sym.name!r} is on an instruction "
                "that is neither a BPF-to-BPF call nor a 64-bit load"
            )
        return sym.shndx, target

    def _data_reloc(self, cs: _CodeSection, idx: int, out_idx: int) -> Reloc | None:
        r = cs.rels.get(idx)
        if r is None:
            return None
        sym = self.symbols[r.sym]
        ins = cs.insns[idx]
        where = f"{cs.sec.name}+{idx * INSN_SIZE} (instruction {idx})"
        if sym.shndx is None:
            raise self.err(
                f"relocation at {where} against undefined symbol {sym.name!r}: externs "
                "(kfuncs, __ksym, __kconfig) are not available to seccomp filters"
            )
        if sym.shndx in self.code:
            return None  # code reference, handled by the linker
        if r.type == R_BPF_64_32:
            if ins.is_call():
                raise self.err(
                    f"call relocation at {where} against {sym.name!r}, which is not a function"
                )
            raise self.err(f"R_BPF_64_32 relocation at {where} is not on a call instruction")
        if r.type != R_BPF_64_64:
            raise self.err(f"unsupported relocation type {r.type} at {where}")
        if not ins.is_ld_imm64():
            raise self.err(
                f"relocation at {where} is on a non-ld_imm64 instruction (opcode {ins.code:#04x})"
            )
        if idx + 1 >= len(cs.insns):
            raise self.err(f"ld_imm64 at {where} is cut off by the end of the section")
        sec = self.sections[sym.shndx] if 0 <= sym.shndx < len(self.sections) else None
        secname = sec.name if sec is not None else f"#{sym.shndx}"
        if sec is not None and sec.name == ".maps":
            if sym.name not in self.maps or self.maps[sym.name].is_global:
                raise self.err(
                    f"relocation at {where} against {sym.name!r} in .maps, which is not a map"
                )
            return Reloc(insn=out_idx, kind="map", map=sym.name, offset=0, symbol=sym.name)
        if sym.shndx in self.map_sections:
            mname = self.map_sections[sym.shndx]
            offset = sym.value + ins.imm
            size = self.maps[mname].value_size
            if not 0 <= offset < size:
                raise self.err(
                    f"relocation at {where} points to {mname}+{offset}, outside the "
                    f"{size}-byte section"
                )
            return Reloc(
                insn=out_idx,
                kind="global",
                map=mname,
                offset=offset,
                symbol=sym.name or mname,
            )
        raise self.err(
            f"relocation at {where} against {sym.name or secname!r} in section {secname!r}, "
            "which holds neither maps nor global variables"
        )

    def _link(self, prog: _Func) -> Program:
        cs0 = self.code[prog.section]
        insns: list[Insn] = []
        relocs: list[Reloc] = []
        lines: dict[int, SourceLine] = {}
        subprogs: dict[int, str] = {}
        placed: dict[tuple[int, int], int] = {}  # (section, func start) -> output start
        fixups: list[tuple[int, tuple[int, int], int]] = []  # out idx, func key, delta
        queue: list[_Func] = [prog]
        while queue:
            f = queue.pop(0)
            key = (f.section, f.start)
            if key in placed:
                continue
            cs = self.code[f.section]
            base = len(insns)
            placed[key] = base
            subprogs[base] = f.name
            sec_lines = self.lines.get(cs.sec.name, {})
            insns.extend(cs.insns[f.start:f.end])
            if len(sec_lines) < f.end - f.start:
                lo, hi = f.start * INSN_SIZE, f.end * INSN_SIZE
                for byte_off, line in sec_lines.items():
                    if lo <= byte_off < hi and byte_off % INSN_SIZE == 0:
                        lines[base + byte_off // INSN_SIZE - f.start] = line
            else:
                for k in range(f.start, f.end):
                    line = sec_lines.get(k * INSN_SIZE)
                    if line is not None:
                        lines[base + k - f.start] = line
            # only relocated instructions, calls and ld_imm64 need more than a copy
            for k in range(f.start, f.end):
                ins = cs.insns[k]
                if k not in cs.rels and ins.code not in _LINKED_CODES:
                    continue
                out = base + (k - f.start)
                reloc = self._data_reloc(cs, k, out)
                if reloc is not None:
                    relocs.append(reloc)
                    continue
                target = self._call_target(cs, k, ins)
                if target is None:
                    continue
                tsec, tidx = target
                tcs = self.code[tsec]
                if not 0 <= tidx < len(tcs.insns):
                    raise self.err(
                        f"call at {cs.sec.name}+{k * INSN_SIZE} targets instruction {tidx} "
                        f"of {tcs.sec.name!r}, outside the section"
                    )
                if tsec == f.section and f.start <= tidx < f.end:
                    # inside the same function: a relative target stays valid
                    fixups.append((out, (f.section, f.start), tidx - f.start))
                    continue
                g = self._func_at(tsec, tidx)
                if g is None:
                    raise self.err(
                        f"call at {cs.sec.name}+{k * INSN_SIZE} targets {tcs.sec.name}"
                        f"+{tidx * INSN_SIZE}, which is not the start of a function"
                    )
                fixups.append((out, (g.section, g.start), 0))
                queue.append(g)
        for out, key, delta in fixups:
            ins = insns[out]
            rel = placed[key] + delta - (out + 1)
            if ins.is_ld_imm64():
                insns[out] = Insn(ins.code, ins.dst, BPF_PSEUDO_FUNC, ins.off, rel)
            else:
                insns[out] = Insn(ins.code, ins.dst, BPF_PSEUDO_CALL, ins.off, rel)
                if delta:
                    subprogs.setdefault(out + 1 + rel, f"{prog.name}+{out + 1 + rel}")
        return Program(
            name=prog.name,
            section=cs0.sec.name,
            insns=insns,
            relocs=relocs,
            subprogs=dict(sorted(subprogs.items())),
            lines=dict(sorted(lines.items())),
        )


#: opcodes the linker looks at without a relocation: calls, ld_imm64
_LINKED_CODES = frozenset({0x85, 0x18})


def load_object(path: str | Path) -> BpfObject:
    """Read the BPF object at PATH.  ObjectError for anything that is not one."""
    spath = str(path)
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ObjectError("is a directory, not a BPF object", path=spath) from None
    except OSError as exc:
        raise ObjectError(f"cannot read: {exc.strerror or exc}", path=spath) from None
    return load_object_bytes(data, spath)


def load_object_bytes(data: bytes, path: str = "<bytes>") -> BpfObject:
    """Like load_object, for an object already in memory (tests, the daemon)."""
    with paused_gc():
        return _Reader(path, data).read()
