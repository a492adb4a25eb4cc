"""The tests' own eBPF assembler and BPF ELF writer.

Bad objects are built in the tests, not checked in.  Two parts:

* instruction helpers returning :class:`ebpfseccomp.insn.Insn` lists
  (``mov(0, 1)``, ``ldx(BPF_W, 2, 1, 0)``, ``jeq(2, 0x101, 5)``, ``call(1)``,
  ``ld_imm64(1, 0)``...), so a program reads like the listing it makes;
* :class:`ObjectBuilder`, which writes a minimal ELF64 little-endian EM_BPF
  ET_REL object: code sections with FUNC symbols, data sections with OBJECT
  symbols, ``.rel<section>`` relocations, a ``license`` section and
  optionally BTF-defined maps (a hand-made ``.BTF`` with just the types a map
  definition needs).

Every field can be bent (machine, class, sizes, raw sections) so that the
tests can make exactly the broken object they want.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ebpfseccomp.insn import (
    BPF_ADD,
    BPF_ALU64,
    BPF_CALL,
    BPF_DW,
    BPF_EXIT,
    BPF_IMM,
    BPF_JA,
    BPF_JEQ,
    BPF_JMP,
    BPF_JNE,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_MEM,
    BPF_MOV,
    BPF_ST,
    BPF_STX,
    BPF_X,
    Insn,
)

EM_BPF = 247
EM_X86_64 = 62

R_BPF_64_64 = 1
R_BPF_64_32 = 10

# --- instructions ---------------------------------------------------------------


def mov(dst: int, imm: int) -> Insn:
    """dst = imm (64-bit)."""
    return Insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)


def movr(dst: int, src: int) -> Insn:
    """dst = src (64-bit)."""
    return Insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)


def add(dst: int, imm: int) -> Insn:
    return Insn(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, imm)


def alu(op: int, dst: int, imm: int, *, cls: int = BPF_ALU64) -> Insn:
    return Insn(cls | op | BPF_K, dst, 0, 0, imm)


def alur(op: int, dst: int, src: int, *, cls: int = BPF_ALU64) -> Insn:
    return Insn(cls | op | BPF_X, dst, src, 0, 0)


def ldx(size: int, dst: int, src: int, off: int) -> Insn:
    """dst = *(size *)(src + off)."""
    return Insn(BPF_LDX | BPF_MEM | size, dst, src, off, 0)


def stx(size: int, dst: int, off: int, src: int) -> Insn:
    """*(size *)(dst + off) = src."""
    return Insn(BPF_STX | BPF_MEM | size, dst, src, off, 0)


def st(size: int, dst: int, off: int, imm: int) -> Insn:
    """*(size *)(dst + off) = imm."""
    return Insn(BPF_ST | BPF_MEM | size, dst, 0, off, imm)


def jmp(op: int, dst: int, imm: int, off: int) -> Insn:
    """if dst OP imm goto +off."""
    return Insn(BPF_JMP | op | BPF_K, dst, 0, off, imm)


def jmpr(op: int, dst: int, src: int, off: int) -> Insn:
    return Insn(BPF_JMP | op | BPF_X, dst, src, off, 0)


def jeq(dst: int, imm: int, off: int) -> Insn:
    return jmp(BPF_JEQ, dst, imm, off)


def jne(dst: int, imm: int, off: int) -> Insn:
    return jmp(BPF_JNE, dst, imm, off)


def ja(off: int) -> Insn:
    return Insn(BPF_JMP | BPF_JA, 0, 0, off, 0)


def call(helper_id: int) -> Insn:
    return Insn(BPF_JMP | BPF_CALL, 0, 0, 0, helper_id)


def call_rel(imm: int) -> Insn:
    """BPF-to-BPF call to pc + 1 + imm (src_reg 1)."""
    return Insn(BPF_JMP | BPF_CALL, 0, 1, 0, imm)


def kfunc_call(btf_id: int) -> Insn:
    return Insn(BPF_JMP | BPF_CALL, 0, 2, 0, btf_id)


def exit_() -> Insn:
    return Insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)


def ld_imm64(dst: int, value: int, src: int = 0) -> list[Insn]:
    """dst = value (64 bits, two slots)."""
    lo = value & 0xFFFFFFFF
    hi = (value >> 32) & 0xFFFFFFFF
    s32 = lambda v: v - (1 << 32) if v & 0x80000000 else v  # noqa: E731
    return [
        Insn(BPF_LD | BPF_IMM | BPF_DW, dst, src, 0, s32(lo)),
        Insn(0, 0, 0, 0, s32(hi)),
    ]


def ret(value: int) -> list[Insn]:
    """r0 = value; exit."""
    s32 = value - (1 << 32) if value & 0x80000000 else value
    return [mov(0, s32), exit_()]


ALLOW = 0x7FFF0000


def flatten(*parts: Insn | list[Insn]) -> list[Insn]:
    out: list[Insn] = []
    for p in parts:
        if isinstance(p, Insn):
            out.append(p)
        else:
            out.extend(p)
    return out


# --- ELF writer -------------------------------------------------------------------

SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_NOBITS = 8
SHT_REL = 9
SHF_WRITE = 1
SHF_ALLOC = 2
SHF_EXECINSTR = 4

STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STB_LOCAL = 0
STB_GLOBAL = 1


@dataclass
class _Sec:
    name: str
    type: int
    flags: int
    data: bytes
    size: int | None = None  # for NOBITS
    entsize: int = 0
    align: int = 8


@dataclass
class _Sym:
    name: str
    section: str | None  # None: undefined
    value: int
    size: int
    type: int
    bind: int


@dataclass
class _Rel:
    section: str
    insn: int
    symbol: str
    type: int


@dataclass
class ObjectBuilder:
    """Build a BPF relocatable object in memory.

    >>> b = ObjectBuilder()
    >>> b.add_program("filt", ret(ALLOW))
    >>> data = b.build()
    """

    machine: int = EM_BPF
    license: str | None = "GPL"
    elf_class: int = 2
    elf_data: int = 1
    elf_type: int = 1
    sections: list[_Sec] = field(default_factory=list)
    symbols: list[_Sym] = field(default_factory=list)
    relocs: list[_Rel] = field(default_factory=list)
    btf: bytes | None = None
    btf_ext: bytes | None = None

    def _section(self, name: str) -> _Sec | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def add_code(
        self,
        name: str,
        insns: list[Insn],
        section: str = "seccomp",
        *,
        bind: int = STB_GLOBAL,
        sym_type: int = STT_FUNC,
    ) -> int:
        """Append INSNS to SECTION under a function symbol; returns its start insn index."""
        code = b"".join(i.encode() for i in insns)
        sec = self._section(section)
        if sec is None:
            sec = _Sec(section, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, b"")
            self.sections.append(sec)
        start = len(sec.data)
        sec.data += code
        if name:
            self.symbols.append(_Sym(name, section, start, len(code), sym_type, bind))
        return start // 8

    def add_program(self, name: str, insns: list[Insn], section: str = "seccomp") -> int:
        return self.add_code(name, insns, section)

    def add_subprog(self, name: str, insns: list[Insn], section: str = ".text") -> int:
        return self.add_code(name, insns, section, bind=STB_LOCAL)

    def add_data(
        self,
        section: str,
        data: bytes,
        symbols: dict[str, int] | None = None,
        *,
        nobits: bool = False,
        readonly: bool = False,
    ) -> None:
        """A data section (.data, .rodata, .bss...) with OBJECT symbols at offsets."""
        flags = SHF_ALLOC | (0 if readonly else SHF_WRITE)
        if nobits:
            self.sections.append(_Sec(section, SHT_NOBITS, flags, b"", size=len(data)))
        else:
            self.sections.append(_Sec(section, SHT_PROGBITS, flags, data))
        for name, off in (symbols or {}).items():
            self.symbols.append(_Sym(name, section, off, 1, STT_OBJECT, STB_GLOBAL))

    def add_raw_section(
        self, name: str, data: bytes, type: int = SHT_PROGBITS, flags: int = 0, entsize: int = 0
    ) -> None:
        self.sections.append(_Sec(name, type, flags, data, entsize=entsize))

    def add_symbol(
        self,
        name: str,
        section: str | None,
        value: int = 0,
        size: int = 0,
        type: int = STT_NOTYPE,
        bind: int = STB_GLOBAL,
    ) -> None:
        self.symbols.append(_Sym(name, section, value, size, type, bind))

    def add_reloc(self, section: str, insn: int, symbol: str, type: int = R_BPF_64_64) -> None:
        """Relocate instruction INSN of SECTION against SYMBOL (a symbol or section name)."""
        self.relocs.append(_Rel(section, insn, symbol, type))

    def add_map(
        self,
        name: str,
        map_type: int = 1,
        key_size: int = 4,
        value_size: int = 8,
        max_entries: int = 16,
        map_flags: int = 0,
    ) -> None:
        """A BTF-defined map in .maps (with a hand-made .BTF describing it)."""
        sec = self._section(".maps")
        if sec is None:
            sec = _Sec(".maps", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, b"")
            self.sections.append(sec)
        off = len(sec.data)
        sec.data += bytes(40)
        self.symbols.append(_Sym(name, ".maps", off, 40, STT_OBJECT, STB_GLOBAL))
        self._maps.append((name, map_type, key_size, value_size, max_entries, map_flags, off))

    def __post_init__(self) -> None:
        self._maps: list[tuple[str, int, int, int, int, int, int]] = []

    # --- BTF for maps ---------------------------------------------------------

    def _make_btf(self) -> bytes:
        strings = bytearray(b"\0")

        def s(text: str) -> int:
            off = len(strings)
            strings.extend(text.encode() + b"\0")
            return off

        types: list[bytes] = []

        def add_type(name_off: int, kind: int, vlen: int, size_or_type: int, extra: bytes) -> int:
            types.append(struct.pack("<III", name_off, kind << 24 | vlen, size_or_type) + extra)
            return len(types)

        t_int = add_type(s("int"), 1, 0, 4, struct.pack("<I", 32))  # INT, 32 bits
        t_u8 = add_type(s("char"), 1, 0, 1, struct.pack("<I", 8))

        def uint_ptr(value: int) -> int:
            arr = add_type(0, 3, 0, 0, struct.pack("<III", t_int, t_int, value))
            return add_type(0, 2, 0, arr, b"")

        def sized_ptr(size: int) -> int:
            arr = add_type(0, 3, 0, 0, struct.pack("<III", t_u8, t_int, size))
            return add_type(0, 2, 0, arr, b"")

        var_ids = []
        for name, mtype, ksize, vsize, entries, flags, off in self._maps:
            members = [
                ("type", uint_ptr(mtype)),
                ("key", sized_ptr(ksize)),
                ("value", sized_ptr(vsize)),
                ("max_entries", uint_ptr(entries)),
            ]
            if flags:
                members.append(("map_flags", uint_ptr(flags)))
            body = b"".join(
                struct.pack("<III", s(mn), mt, 64 * i) for i, (mn, mt) in enumerate(members)
            )
            st_id = add_type(0, 4, len(members), 8 * len(members), body)
            var_ids.append((add_type(s(name), 14, 0, st_id, struct.pack("<I", 1)), off))
        body = b"".join(struct.pack("<III", vid, off, 40) for vid, off in var_ids)
        add_type(s(".maps"), 15, len(var_ids), 0, body)
        type_data = b"".join(types)
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(type_data), len(type_data),
                          len(strings))  # fmt: skip
        return hdr + type_data + bytes(strings)

    # --- output ---------------------------------------------------------------

    def build(self) -> bytes:
        secs = list(self.sections)
        if self.license is not None:
            secs.append(
                _Sec(
                    "license",
                    SHT_PROGBITS,
                    SHF_ALLOC | SHF_WRITE,
                    self.license.encode() + b"\0",
                    align=1,
                )  # fmt: skip
            )
        btf = self.btf
        if btf is None and self._maps:
            btf = self._make_btf()
        if btf is not None:
            secs.append(_Sec(".BTF", SHT_PROGBITS, 0, btf, align=4))
        if self.btf_ext is not None:
            secs.append(_Sec(".BTF.ext", SHT_PROGBITS, 0, self.btf_ext, align=4))

        # section indices: 0 null, user sections, .rel*, .strtab, .symtab
        names = [s.name for s in secs]
        index = {n: i + 1 for i, n in enumerate(names)}

        # one string table for section and symbol names, as clang writes it
        strtab = bytearray(b"\0")

        def sname(text: str) -> int:
            if not text:
                return 0
            off = len(strtab)
            strtab.extend(text.encode() + b"\0")
            return off

        # symbols: null, section symbols (local), local symbols, then globals
        syms: list[bytes] = [bytes(24)]
        sym_index: dict[str, int] = {}

        def pack_sym(name_off: int, typ: int, bind: int, shndx: int, value: int, size: int):
            return struct.pack("<IBBHQQ", name_off, bind << 4 | typ, 0, shndx, value, size)

        for s in secs:
            if s.flags & SHF_ALLOC:
                sym_index.setdefault(s.name, len(syms))
                syms.append(pack_sym(0, STT_SECTION, STB_LOCAL, index[s.name], 0, 0))
        ordered = [x for x in self.symbols if x.bind == STB_LOCAL] + [
            x for x in self.symbols if x.bind != STB_LOCAL
        ]
        first_global = len(syms) + sum(1 for x in self.symbols if x.bind == STB_LOCAL)
        for x in ordered:
            shndx = index[x.section] if x.section is not None else 0
            sym_index[x.name] = len(syms)
            syms.append(pack_sym(sname(x.name), x.type, x.bind, shndx, x.value, x.size))
        symtab = b"".join(syms)

        rel_secs: list[_Sec] = []
        by_section: dict[str, list[_Rel]] = {}
        for r in self.relocs:
            by_section.setdefault(r.section, []).append(r)
        rel_targets: list[str] = []
        for target, rels in by_section.items():
            data = b"".join(
                struct.pack("<QQ", r.insn * 8, sym_index[r.symbol] << 32 | r.type) for r in rels
            )
            rel_secs.append(_Sec(".rel" + target, SHT_REL, 0, data, entsize=16))
            rel_targets.append(target)

        all_secs = secs + rel_secs
        strtab_idx = len(all_secs) + 1
        symtab_idx = strtab_idx + 1
        name_offs = [sname(s.name) for s in all_secs]
        strtab_name, symtab_name = sname(".strtab"), sname(".symtab")

        out = bytearray(64)
        headers = [bytes(64)]

        def place(data: bytes, align: int) -> int:
            while len(out) % max(align, 1):
                out.append(0)
            off = len(out)
            out.extend(data)
            return off

        def shdr(name, typ, flags, off, size, link=0, info=0, align=8, entsize=0) -> bytes:
            return struct.pack(
                "<IIQQQQIIQQ", name, typ, flags, 0, off, size, link, info, align, entsize
            )

        for i, s in enumerate(all_secs):
            if s.type == SHT_NOBITS:
                off, size = len(out), s.size or 0
            else:
                off, size = place(s.data, s.align), len(s.data)
            link = info = 0
            if s.type == SHT_REL:
                link = symtab_idx
                info = index[rel_targets[i - len(secs)]]
            headers.append(
                shdr(name_offs[i], s.type, s.flags, off, size, link, info, s.align, s.entsize)
            )
        off = place(bytes(strtab), 1)
        headers.append(shdr(strtab_name, SHT_STRTAB, 0, off, len(strtab), align=1))
        off = place(symtab, 8)
        headers.append(
            shdr(symtab_name, SHT_SYMTAB, 0, off, len(symtab), strtab_idx, first_global, 8, 24)
        )
        shoff = place(b"".join(headers), 8)
        ident = b"\x7fELF" + bytes([self.elf_class, self.elf_data, 1, 0]) + bytes(8)
        ehdr = ident + struct.pack(
            "<HHIQQQIHHHHHH",
            self.elf_type,
            self.machine,
            1,
            0,
            0,
            shoff,
            0,
            64,
            0,
            0,
            64,
            len(headers),
            strtab_idx,
        )
        out[:64] = ehdr
        return bytes(out)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.build())
        return path


def simple_object(insns: list[Insn], name: str = "filt", section: str = "seccomp") -> bytes:
    """One program, no maps: the quickest valid (or deliberately broken) object."""
    b = ObjectBuilder()
    b.add_program(name, insns, section)
    return b.build()
