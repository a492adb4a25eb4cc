"""The disassembler: ``disasm(obj, program=None) -> str`` prints a readable
listing in seccomp's terms (helper, map and context field names, syscall
names for comparisons of nr, AUDIT_ARCH names, action names for return
values, source lines); ``disasm_data`` gives the same as JSON-ready rows.
The names of context fields come from the checker's data-flow states."""

from __future__ import annotations

from typing import Any

from .. import contract
from ..elf import BpfObject, Program, SourceLine
from ..insn import (
    BPF_ADD,
    BPF_ALU,
    BPF_ALU64,
    BPF_AND,
    BPF_ARSH,
    BPF_ATOMIC,
    BPF_CALL,
    BPF_CMPXCHG,
    BPF_DIV,
    BPF_DW,
    BPF_END,
    BPF_EXIT,
    BPF_FETCH,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JLE,
    BPF_JLT,
    BPF_JMP,
    BPF_JMP32,
    BPF_JNE,
    BPF_JSET,
    BPF_JSGE,
    BPF_JSGT,
    BPF_JSLE,
    BPF_JSLT,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_LSH,
    BPF_MEMSX,
    BPF_MOD,
    BPF_MOV,
    BPF_MUL,
    BPF_NEG,
    BPF_OR,
    BPF_PSEUDO_CALL,
    BPF_PSEUDO_KFUNC_CALL,
    BPF_RSH,
    BPF_ST,
    BPF_STX,
    BPF_SUB,
    BPF_X,
    BPF_XCHG,
    BPF_XOR,
    SIZE_BYTES,
    Insn,
)
from . import cfg, encoding, state
from .cfg import BPF_PSEUDO_FUNC, is_cond_jump, jump_target
from .checker import Checker
from .state import _State

_ALU_SYM = {
    BPF_ADD: "+=", BPF_SUB: "-=", BPF_MUL: "*=", BPF_DIV: "/=", BPF_OR: "|=",
    BPF_AND: "&=", BPF_LSH: "<<=", BPF_RSH: ">>=", BPF_MOD: "%=", BPF_XOR: "^=",
    BPF_MOV: "=", BPF_ARSH: "s>>=",
}  # fmt: skip
_JMP_SYM = {
    BPF_JEQ: "==", BPF_JNE: "!=", BPF_JGT: ">", BPF_JGE: ">=", BPF_JLT: "<",
    BPF_JLE: "<=", BPF_JSGT: "s>", BPF_JSGE: "s>=", BPF_JSLT: "s<", BPF_JSLE: "s<=",
    BPF_JSET: "&",
}  # fmt: skip
_SIZE_NAME = {0x00: "u32", 0x08: "u16", 0x10: "u8", 0x18: "u64"}
_ATOMIC_NAME = {BPF_ADD: "add", BPF_AND: "and", BPF_OR: "or", BPF_XOR: "xor"}


def _imm(v: int, bits32: bool = False) -> str:
    if -256 < v < 256:
        return str(v)
    if bits32 and v < 0:
        v &= 0xFFFFFFFF
    return f"-{-v:#x}" if v < 0 else f"{v:#x}"


def _mem(reg: int, off: int, size: int, signed: bool = False) -> str:
    t = _SIZE_NAME[size]
    if signed:
        t = "s" + t[1:]
    sign = "-" if off < 0 else "+"
    return f"*({t} *)(r{reg} {sign} {abs(off)})"


class _Disassembler:
    def __init__(self, obj: BpfObject, prog: Program):
        self.obj = obj
        self.prog = prog
        self.relocs = {r.insn: r for r in prog.relocs}
        checker = Checker(obj, prog, unprivileged=False)
        self.states: list[_State | None] = []
        try:
            if encoding.check_encoding(checker):
                cfg.check_flow(checker)
            if checker.cfg_ok:
                state.dataflow(checker)
                self.states = checker.states
        except Exception:  # the listing must never fail because of the analysis
            self.states = []
        self.arch = self._guess_arch()

    # --- seccomp terms: which registers hold nr or arch, what r0 means -----------

    def state_at(self, i: int) -> _State | None:
        return self.states[i] if i < len(self.states) else None

    def field(self, i: int, reg: int) -> str:
        """The seccomp_data field REG holds on every path to insn I, or ""."""
        return state.field_of(self.state_at(i), reg)

    def _guess_arch(self) -> str | None:
        """The syscall table to name numbers with: the arch the program compares
        ctx->arch against first (None: unknown, numbers stay numbers)."""
        by_value = {v: k for k, v in contract.AUDIT_ARCH.items()}
        for i, ins in enumerate(self.prog.insns):
            if is_cond_jump(ins) and ins.source == BPF_K and \
                    self.field(i, ins.dst) == "arch":
                name = by_value.get(ins.imm & 0xFFFFFFFF)
                if name in ("x86_64", "aarch64"):
                    return name
        return None

    def seccomp_note(self, i: int, ins: Insn) -> str:
        """'getppid' for a comparison of nr, 'AUDIT_ARCH_X86_64' for one of arch,
        'ERRNO(EPERM)' for an action put in r0."""
        if is_cond_jump(ins) and ins.source == BPF_K:
            what = self.field(i, ins.dst)
            value = ins.imm & 0xFFFFFFFF
            if what == "arch":
                name = {v: k for k, v in contract.AUDIT_ARCH.items()}.get(value)
                return f"AUDIT_ARCH_{name.upper()}" if name else ""
            if what == "nr" and self.arch and ins.op in (BPF_JEQ, BPF_JNE):
                from ..syscalls import name as syscall_name

                return syscall_name(value, self.arch) or ""
            return ""
        if ins.cls in (BPF_ALU, BPF_ALU64) and ins.op == BPF_MOV and ins.source == BPF_K \
                and ins.dst == 0:
            return _action_words(ins.imm & 0xFFFFFFFF)
        return ""

    def label(self, t: int) -> str:
        name = self.prog.subprogs.get(t)
        return f"<{name}>" if name else f"<{t}>"

    def ctx_note(self, i: int, reg: int, off: int, size: int) -> str:
        st = self.state_at(i)
        if st is None:
            return ""
        base = st.reg(reg)
        offs = {p[1] for p in base if p[0] == "ctx"}
        if len(offs) == 1 and None not in offs and len(base) == 1:
            (roff,) = offs
            return contract.seccomp_data_field(roff + off, size)
        return ""

    def insn(self, i: int, ins: Insn) -> str:
        cls, op = ins.cls, ins.op
        r = "r" if cls in (BPF_ALU64, BPF_JMP, BPF_LDX, BPF_STX, BPF_ST, BPF_LD) else "w"
        if cls in (BPF_ALU, BPF_ALU64):
            d = f"{r}{ins.dst}"
            if op == BPF_NEG:
                return f"{d} = -{d}"
            if op == BPF_END:
                if cls == BPF_ALU64:
                    return f"r{ins.dst} = bswap{ins.imm} r{ins.dst}"
                kind = "be" if ins.source == BPF_X else "le"
                return f"r{ins.dst} = {kind}{ins.imm} r{ins.dst}"
            sym = _ALU_SYM.get(op)
            if sym is None:
                return f".insn {ins.code:#04x}  ; unknown ALU operation"
            if ins.off == 1 and op in (BPF_DIV, BPF_MOD):
                sym = "s" + sym
            if ins.source == BPF_X:
                if op == BPF_MOV and ins.off in (8, 16, 32):
                    return f"{d} = (s{ins.off}){r}{ins.src}"
                return f"{d} {sym} {r}{ins.src}"
            return f"{d} {sym} {_imm(ins.imm, cls == BPF_ALU)}"
        if cls == BPF_LDX:
            text = f"r{ins.dst} = {_mem(ins.src, ins.off, ins.size, ins.mode == BPF_MEMSX)}"
            note = self.ctx_note(i, ins.src, ins.off, SIZE_BYTES[ins.size])
            return f"{text:<32}; {note}" if note else text
        if cls == BPF_ST:
            return f"{_mem(ins.dst, ins.off, ins.size)} = {_imm(ins.imm)}"
        if cls == BPF_STX:
            target = _mem(ins.dst, ins.off, ins.size)
            if ins.mode == BPF_ATOMIC:
                w = "r" if ins.size == BPF_DW else "w"
                ptr = target[1:]  # "(u64 *)(r1 + 0)"
                base = ins.imm & ~BPF_FETCH
                if ins.imm == BPF_XCHG:
                    return (
                        f"{w}{ins.src} = xchg{'_64' if w == 'r' else '32_32'}({ptr}, {w}{ins.src})"
                    )
                if ins.imm == BPF_CMPXCHG:
                    return (
                        f"{w}0 = cmpxchg{'_64' if w == 'r' else '32_32'}({ptr}, {w}0, {w}{ins.src})"
                    )
                name = _ATOMIC_NAME.get(base, f"op{base:#x}")
                if ins.imm & BPF_FETCH:
                    return f"{w}{ins.src} = atomic_fetch_{name}({ptr}, {w}{ins.src})"
                sym = {"add": "+=", "and": "&=", "or": "|=", "xor": "^="}.get(name, "?=")
                return f"lock {target} {sym} {w}{ins.src}"
            text = f"{target} = r{ins.src}"
            note = self.ctx_note(i, ins.dst, ins.off, SIZE_BYTES[ins.size])
            return f"{text:<32}; {note} (context store!)" if note else text
        if cls == BPF_LD:
            if ins.is_ld_imm64():
                rel = self.relocs.get(i)
                if rel is not None and rel.kind == "map":
                    return f"r{ins.dst} = map[{rel.map}]"
                if rel is not None:
                    sym = f" <{rel.symbol}>" if rel.symbol and rel.symbol != rel.map else ""
                    return f"r{ins.dst} = &{rel.map}+{rel.offset}{sym}"
                if ins.src == BPF_PSEUDO_FUNC:
                    t = i + ins.imm + 1
                    return f"r{ins.dst} = &func {self.label(t)}"
                hi = self.prog.insns[i + 1] if i + 1 < len(self.prog.insns) else None
                value = (ins.imm & 0xFFFFFFFF) | ((hi.imm & 0xFFFFFFFF) << 32 if hi else 0)
                return f"r{ins.dst} = {_imm(value)} ll"
            mode = "abs" if ins.mode == 0x20 else "ind"
            return f"r0 = ld_{mode}_{_SIZE_NAME[ins.size]}(...)  ; socket-filter instruction"
        # jumps
        if op == BPF_EXIT:
            return "exit"
        if op == BPF_CALL:
            if ins.src == BPF_PSEUDO_CALL:
                t = i + ins.imm + 1
                return f"call {ins.imm:+d} {self.label(t)}"
            if ins.src == BPF_PSEUDO_KFUNC_CALL:
                return f"call kfunc#{ins.imm}"
            name = contract.HELPER_NAMES.get(ins.imm)
            return f"call bpf_{name}#{ins.imm}" if name else f"call unknown#{ins.imm}"
        t = jump_target(i, ins)
        if op == BPF_JA:
            if cls == BPF_JMP32:
                return f"gotol {ins.imm:+d} {self.label(t)}"  # type: ignore[arg-type]
            return f"goto {ins.off:+d} {self.label(t)}"  # type: ignore[arg-type]
        sym = _JMP_SYM.get(op)
        if sym is None:
            return f".insn {ins.code:#04x}  ; unknown jump"
        rhs = f"{r}{ins.src}" if ins.source == BPF_X else _imm(ins.imm, cls == BPF_JMP32)
        return f"if {r}{ins.dst} {sym} {rhs} goto {ins.off:+d} {self.label(t)}"  # type: ignore[arg-type]

    def render(self, show_bytes: bool = False) -> str:
        prog = self.prog
        out = []
        lic = self.obj.license
        out.append(
            f"; {self.obj.path}: program {prog.name} (section {prog.section}), "
            f"{len(prog.insns)} instructions, license {lic!r}"
        )
        used = []
        for r in prog.relocs:
            if r.map not in used:
                used.append(r.map)
        for name in used:
            m = self.obj.maps.get(name)
            if m is None:
                continue
            if m.is_global:
                out.append(f"; global {name}: {m.value_size} bytes")
            else:
                tname = contract.MAP_TYPES.get(m.type, f"type {m.type}")
                out.append(
                    f"; map {name}: {tname}, key {m.key_size} B, value {m.value_size} B, "
                    f"max_entries {m.max_entries}"
                )
        last_line: SourceLine | None = None
        width = len(str(max(len(prog.insns) - 1, 0)))
        i = 0
        insns = prog.insns
        while i < len(insns):
            ins = insns[i]
            if i in prog.subprogs:
                out.append("")
                out.append(f"{prog.subprogs[i]}:")
                last_line = None
            line = prog.lines.get(i)
            if line is not None and (
                last_line is None or (line.file, line.line) != (last_line.file, last_line.line)
            ):
                base = line.file.rsplit("/", 1)[-1]
                text = line.text or ""
                out.append(f"; {text}" + (f"  [{base}:{line.line}]" if base else ""))
                last_line = line
            raw = ""
            nslots = 2 if ins.is_ld_imm64() and i + 1 < len(insns) else 1
            if show_bytes:
                raw = " ".join(f"{b:02x}" for b in ins.encode()) + "  "
                if nslots == 2:
                    raw = raw + " ".join(f"{b:02x}" for b in insns[i + 1].encode()) + "  "
                else:
                    raw = raw + " " * 25
            out.append(f"{i:>{width}}: {raw}{self.text(i, ins)}")
            i += nslots
        return "\n".join(out) + "\n"

    def text(self, i: int, ins: Insn) -> str:
        text = self.insn(i, ins)
        note = self.seccomp_note(i, ins)
        if note and ";" not in text:
            return f"{text:<{max(32, len(text) + 1)}}; {note}"
        return text

    def rows(self) -> list[dict[str, Any]]:
        """The listing as data, for --json."""
        out = []
        i = 0
        insns = self.prog.insns
        while i < len(insns):
            ins = insns[i]
            line = self.prog.lines.get(i)
            out.append({
                "insn": i,
                "text": self.insn(i, ins),
                "note": self.seccomp_note(i, ins) or None,
                "bytes": ins.encode().hex(),
                "subprogram": self.prog.subprogs.get(i),
                "source": None if line is None else {
                    "file": line.file, "line": line.line, "text": line.text},
            })
            i += 2 if ins.is_ld_imm64() and i + 1 < len(insns) else 1
        return out


def _action_words(value: int) -> str:
    """'ERRNO(EPERM)', 'KILL_PROCESS', 'ALLOW' for a seccomp return value, '' if
    VALUE is no known action."""
    import errno as _errno

    full = value & 0xFFFF0000
    try:
        act = contract.Action(full)
    except ValueError:
        return ""
    if act == contract.Action.KILL_THREAD and value != 0:
        return ""
    data = value & 0xFFFF
    if act == contract.Action.ERRNO:
        return f"ERRNO({_errno.errorcode.get(min(data, contract.MAX_ERRNO), data)})"
    if act in contract.ACTIONS_WITH_DATA:
        return f"{act.name}({data})"
    return act.name if data == 0 else f"{act.name} (data {data})"


def disasm(obj: BpfObject, program: str | None = None, *, show_bytes: bool = False) -> str:
    """A readable listing of PROGRAM (every program if None and there are
    several): helper, map and context field names, syscall and action names,
    source lines."""
    if program is None and len(obj.programs) > 1:
        return "\n".join(_Disassembler(obj, p).render(show_bytes) for p in obj.programs)
    return _Disassembler(obj, obj.program(program)).render(show_bytes)


def disasm_data(obj: BpfObject, program: str | None = None) -> list[dict[str, Any]]:
    """The listing of PROGRAM (every program if None) as JSON-ready data."""
    progs = obj.programs if program is None else [obj.program(program)]
    return [{"path": obj.path, "program": p.name, "section": p.section,
             "insns": _Disassembler(obj, p).rows()} for p in progs]
