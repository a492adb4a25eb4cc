"""The emulator's translator: each basic block of a program becomes one small
Python function (straight-line code over the register list R, ending in the
block's jump), compiled once; the run loop then costs one call per block.
Instructions the emulator does not model become a function that raises
EmulationError when reached, never a guess."""


from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import insn as I
from ..contract import helper_name

M64 = 0xFFFFFFFFFFFFFFFF
M32 = 0xFFFFFFFF


# --- translation of a program into Python ----------------------------------------

_LD = {1: "LD1", 2: "LD2", 4: "LD4", 8: "LD8"}
_LDS = {1: "LDS1", 2: "LDS2", 4: "LDS4"}
_ST = {1: "ST1", 2: "ST2", 4: "ST4", 8: "ST8"}

_JCOND = {
    I.BPF_JEQ: ("==", False),
    I.BPF_JNE: ("!=", False),
    I.BPF_JGT: (">", False),
    I.BPF_JGE: (">=", False),
    I.BPF_JLT: ("<", False),
    I.BPF_JLE: ("<=", False),
    I.BPF_JSGT: (">", True),
    I.BPF_JSGE: (">=", True),
    I.BPF_JSLT: ("<", True),
    I.BPF_JSLE: ("<=", True),
}

_ATOMIC_OPS = {I.BPF_ADD: "add", I.BPF_OR: "or", I.BPF_AND: "and", I.BPF_XOR: "xor"}


def _s(v: int, bits: int) -> int:
    """V (taken modulo 2**bits) as a signed integer."""
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def sdiv(a: int, b: int, bits: int) -> int:
    """BPF signed division (off=1) of unsigned BITS-bit A by B, kernel rules.

    Division by zero gives 0; INT_MIN / -1 gives INT_MIN (the verifier's
    fix-up); the quotient truncates toward zero like C.
    """
    mask = (1 << bits) - 1
    sa, sb = _s(a, bits), _s(b, bits)
    if sb == 0:
        return 0
    q = abs(sa) // abs(sb)
    if (sa < 0) != (sb < 0):
        q = -q
    return q & mask


def smod(a: int, b: int, bits: int) -> int:
    """BPF signed modulo (off=1): x % 0 == x, x % -1 == 0, sign of the dividend."""
    mask = (1 << bits) - 1
    sa, sb = _s(a, bits), _s(b, bits)
    if sb == 0:
        return a & mask
    r = abs(sa) % abs(sb)
    if sa < 0:
        r = -r
    return r & mask


def bswap(v: int, bits: int) -> int:
    n = bits // 8
    return int.from_bytes((v & ((1 << bits) - 1)).to_bytes(n, "little"), "big")


def _addr_expr(reg: int, off: int) -> str:
    """Code for the address reg + off (addresses are 64-bit)."""
    if off == 0:
        return f"R[{reg}]"
    return f"(R[{reg}] + {off}) & {M64}"


_REG = re.compile(r"R\[(\d+)\]")
_WRITE = re.compile(r"(?m)^\s*R\[(\d+)\] = ")


def _localise(body: list[str]) -> list[str]:
    """Rewrite a block's code to keep registers in local variables.

    R[i] becomes the local ri, loaded once at the top of the block and stored
    back before the block returns or calls a helper (helpers read r1-r5 from
    R and clobber them)."""
    load: set[int] = set()  # read before being written in the block
    written: set[int] = set()
    out: list[str] = []

    def sync() -> None:
        if written:
            out.append("; ".join(f"R[{r}] = r{r}" for r in sorted(written)))

    def reads(text: str) -> None:
        load.update(r for r in map(int, _REG.findall(_WRITE.sub("", text))) if r not in written)

    for line in body:
        if line.startswith("R[0] = H"):  # helper call: R[0] = Hn(R, pc); clobber r1-r5
            sync()
            out.append("r0 = " + line.split(";")[0][len("R[0] = "):])
            out.append("r1 = r2 = r3 = r4 = r5 = 0")
            written.update(range(6))
            continue
        if line.startswith("return"):
            reads(line)
            sync()
            out.append(_REG.sub(r"r\1", line))
            continue
        reads(line)
        written.update(int(m) for m in _WRITE.findall(line))
        out.append(_REG.sub(r"r\1", line))
    loads = [f"r{r} = R[{r}]" for r in sorted(load)]
    return (["; ".join(loads)] if loads else []) + out


class _Unsupported(Exception):
    def __init__(self, why: str):
        self.why = why


@dataclass
class _Translation:
    funcs: list[Callable[[list[int]], int] | None]  # None: not translated yet
    lens: list[int]
    sources: list[str]  # the Python source of each translated chunk
    leaders: list[int]
    jump_at: list[int]  # block start -> the jump ending it (-1: none)


class _Translator:
    """Turns a program's instructions into one Python function per basic block."""

    def __init__(self, prog: Any, map_addr: Callable[[str], int],
                 global_addr: Callable[[str, int], int], describe: Callable[[int], str],
                 step: bool = False):
        self.step = step  # one block per instruction (single-stepping)
        self.prog = prog
        self.insns: list[I.Insn] = list(prog.insns)
        self.relocs = {r.insn: r for r in getattr(prog, "relocs", ())}
        self.map_addr = map_addr
        self.global_addr = global_addr
        self.describe = describe
        self.errors: dict[int, str] = {}  # error id -> message
        self._lead_set: set[int] | None = None
        n = len(self.insns)
        # slot i+1 of an ld_imm64 at i is not an instruction of its own
        self.second_slot = [False] * n
        i = 0
        while i < n:
            if self.insns[i].is_ld_imm64():
                if i + 1 < n:
                    self.second_slot[i + 1] = True
                i += 2
            else:
                i += 1

    # -- helpers for the generated code

    def err(self, msg: str) -> str:
        """Code that raises EmulationError(msg)."""
        eid = len(self.errors)
        self.errors[eid] = msg
        return f"return ERR({eid})"

    def unsupported(self, i: int, why: str) -> str:
        ins = self.insns[i]
        return self.err(
            f"unsupported instruction {ins.code:#04x} at insn {i}{self.describe(i)}: {why}"
        )

    def target_ok(self, t: int) -> bool:
        return 0 <= t < len(self.insns) and not self.second_slot[t]

    def jump(self, i: int, t: int) -> str:
        """An expression or statement for 'continue at T' from insn I."""
        if self.target_ok(t):
            return str(t)
        return f"ERR({self._jump_err(i, t)})"

    def _jump_err(self, i: int, t: int) -> int:
        eid = len(self.errors)
        if t == len(self.insns):
            what = "runs off the end of the program"
        elif 0 <= t < len(self.insns):
            what = f"lands in the second half of the ld_imm64 at insn {t - 1}"
        else:
            what = f"leaves the program ({len(self.insns)} instructions)"
        self.errors[eid] = f"the jump at insn {i}{self.describe(i)} to insn {t} {what}"
        return eid

    # -- analysis

    def leaders(self) -> list[int]:
        n = len(self.insns)
        if self.step:
            return [i for i in range(n) if not self.second_slot[i]]
        lead = {0}
        for i, ins in enumerate(self.insns):
            if self.second_slot[i]:
                continue
            cls = ins.cls
            if cls not in (I.BPF_JMP, I.BPF_JMP32):
                continue
            op = ins.op
            if op == I.BPF_EXIT:
                lead.add(i + 1)
            elif op == I.BPF_CALL:
                if ins.src == I.BPF_PSEUDO_CALL and cls == I.BPF_JMP:
                    lead.add(i + ins.imm + 1)
                    lead.add(i + 1)
            elif op == I.BPF_JA:
                lead.add(i + (ins.imm if cls == I.BPF_JMP32 else ins.off) + 1)
                lead.add(i + 1)
            else:
                lead.add(i + ins.off + 1)
                lead.add(i + 1)
        return sorted(t for t in lead if self.target_ok(t) and t < n)

    # -- translation

    def plan(self) -> _Translation:
        """The blocks, without translating them: leaders, each block's
        instruction count and, for a block that ends in a jump, that jump's
        index (naming a loop when the budget runs out)."""
        n = len(self.insns)
        leaders = self.leaders()
        lead_set = set(leaders)
        lens = [0] * (n + 1)
        jump_at = [-1] * (n + 1)
        insns = self.insns
        for start in leaders:
            i, count, last = start, 0, start
            while i < n and (i == start or i not in lead_set):
                count += 1
                last = i
                code = insns[i].code
                if code & 0x07 in (I.BPF_JMP, I.BPF_JMP32) and code & 0xF0 != I.BPF_CALL:
                    if code & 0xF0 != I.BPF_EXIT:
                        jump_at[start] = i
                    break
                i += 2 if insns[i].is_ld_imm64() else 1
            lens[start] = count
            if jump_at[start] != last:
                jump_at[start] = -1
        return _Translation([None] * (n + 1), lens, [], leaders, jump_at)

    def translate(self, namespace: dict[str, Any], plan: _Translation,
                  first: int, count: int) -> None:
        """Translate COUNT blocks from plan.leaders[FIRST] into plan.funcs (compiled
        into NAMESPACE); blocks are translated when first reached, a chunk at a
        time, so a big program costs only what runs."""
        n = len(self.insns)
        leaders = plan.leaders
        lead_set = self._lead_set if self._lead_set is not None else set(leaders)
        self._lead_set = lead_set
        chunks: list[str] = []
        chosen = [s for s in leaders[first:first + count] if plan.funcs[s] is None]
        for start in chosen:
            body: list[str] = []
            i = start
            count_ = 0
            terminated = False
            while i < n:
                if i != start and i in lead_set:
                    break
                count_ += 1
                try:
                    lines, terminated = self.insn(i)
                except _Unsupported as exc:
                    lines, terminated = [self.unsupported(i, exc.why)], True
                body.extend(lines)
                i += 2 if self.insns[i].is_ld_imm64() else 1
                if terminated:
                    break
            if not terminated:
                # falls through into the next block, or off the end
                if i < n:
                    body.append(f"return {i}")
                else:
                    eid = len(self.errors)
                    last = start + max(count_ - 1, 0)
                    self.errors[eid] = (
                        f"execution runs off the end of the program after insn {last}"
                        f"{self.describe(last)} (no exit)"
                    )
                    body.append(f"return ERR({eid})")
            if len(body) > 3:  # registers used more than once: keep them in locals
                body = _localise(body)
            chunks.append(f"def _b{start}(R):\n    " + "\n    ".join(body) + "\n")
        source = "\n".join(chunks)
        code = compile(source, f"<bpf program {getattr(self.prog, 'name', '?')}>", "exec")
        exec(code, namespace)  # noqa: S102 - source generated from integers only
        for start in chosen:
            plan.funcs[start] = namespace.pop(f"_b{start}")
        plan.sources.append(source)

    def insn(self, i: int) -> tuple[list[str], bool]:
        ins = self.insns[i]
        cls = ins.cls
        if cls == I.BPF_ALU64:
            return [self.alu(ins, 64)], False
        if cls == I.BPF_ALU:
            return [self.alu(ins, 32)], False
        if cls in (I.BPF_JMP, I.BPF_JMP32):
            return self.jmp(i, ins)
        if cls == I.BPF_LDX:
            return [self.ldx(i, ins)], False
        if cls == I.BPF_ST:
            return [self.st(i, ins)], False
        if cls == I.BPF_STX:
            return [self.stx(i, ins)], False
        return [self.ld(i, ins)], False

    def alu(self, ins: I.Insn, bits: int) -> str:
        op, d, s, off, imm = ins.op, ins.dst, ins.src, ins.off, ins.imm
        x = ins.source == I.BPF_X
        if d > 9 or (x and s > 10):
            raise _Unsupported(f"register r{d if d > 9 else s} is not valid here")
        D = f"R[{d}]"
        m = M64 if bits == 64 else M32
        sm = bits - 1
        if op in (I.BPF_DIV, I.BPF_MOD):
            if off not in (0, 1):
                raise _Unsupported(f"{I.ALU_NAMES[op]} with offset {off}")
        elif op == I.BPF_MOV and x:
            allowed = (0, 8, 16, 32) if bits == 64 else (0, 8, 16)
            if off not in allowed:
                raise _Unsupported(f"movsx with offset {off}")
        elif off != 0:
            raise _Unsupported(f"{I.ALU_NAMES.get(op, 'op')} with a non-zero offset")
        # the source operand, masked to the operation's width
        if x:
            S = f"R[{s}]" if bits == 64 else f"(R[{s}] & {M32})"
        else:
            S = str(imm & m)  # ALU64: imm sign-extended to 64 bits; ALU: (u32) imm
        Dm = D if bits == 64 else f"({D} & {M32})"
        if op == I.BPF_ADD:
            return f"{D} = ({D} + {S}) & {m}"
        if op == I.BPF_SUB:
            return f"{D} = ({D} - {S}) & {m}"
        if op == I.BPF_MUL:
            return f"{D} = ({D} * {S}) & {m}"
        if op == I.BPF_OR:
            return f"{D} = ({D} | {S}) & {m}"
        if op == I.BPF_AND:
            return f"{D} = {D} & {S}"
        if op == I.BPF_XOR:
            return f"{D} = ({D} ^ {S}) & {m}"
        if op in (I.BPF_LSH, I.BPF_RSH, I.BPF_ARSH):
            if x:
                sh = f"(R[{s}] & {sm})"
            else:
                if not 0 <= imm < bits:
                    raise _Unsupported(f"shift by {imm} (the verifier allows 0..{bits - 1})")
                sh = str(imm)
            if op == I.BPF_LSH:
                return f"{D} = ({D} << {sh}) & {m}"
            if op == I.BPF_RSH:
                return f"{D} = {Dm} >> {sh}"
            sb = 1 << (bits - 1)
            return f"{D} = ((({Dm} ^ {sb}) - {sb}) >> {sh}) & {m}"
        if op == I.BPF_NEG:
            if x:
                raise _Unsupported("neg with a register source (only BPF_K is valid)")
            return f"{D} = -{D} & {m}"
        if op == I.BPF_MOV:
            if not x:
                return f"{D} = {imm & m}"
            if off == 0:
                return f"{D} = R[{s}]" if bits == 64 else f"{D} = R[{s}] & {M32}"
            sb = 1 << (off - 1)
            return f"{D} = (((R[{s}] & {(1 << off) - 1}) ^ {sb}) - {sb}) & {m}"
        if op in (I.BPF_DIV, I.BPF_MOD):
            div = op == I.BPF_DIV
            if not x and (imm & m) == 0:
                raise _Unsupported("division by a zero immediate (the verifier rejects it)")
            if off == 1:
                fn = "SDIV" if div else "SMOD"
                return f"{D} = {fn}({D}, {S}, {bits})"
            if not x:
                return f"{D} = {Dm} {'//' if div else '%'} {S}"
            tmp = f"_t = {S}\n    "
            if div:
                return tmp + f"{D} = {Dm} // _t if _t else 0"
            return tmp + f"{D} = {Dm} % _t if _t else {Dm}"
        if op == I.BPF_END:
            if imm not in (16, 32, 64):
                raise _Unsupported(f"byte swap of width {imm}")
            if bits == 64:
                if x:
                    raise _Unsupported("bswap (ALU64|END) with a BPF_X source")
                return f"{D} = BSWAP({D}, {imm})"
            if x:  # to big endian: swap (the host is little-endian)
                return f"{D} = BSWAP({D}, {imm})"
            return f"{D} = {D} & {(1 << imm) - 1}"  # to little endian: truncate
        raise _Unsupported(f"unknown ALU operation {op:#04x}")

    def jmp(self, i: int, ins: I.Insn) -> tuple[list[str], bool]:
        op, cls, d, s = ins.op, ins.cls, ins.dst, ins.src
        j32 = cls == I.BPF_JMP32
        if op == I.BPF_JA:
            if ins.source == I.BPF_X:
                raise _Unsupported("ja with a register source")
            t = i + (ins.imm if j32 else ins.off) + 1
            return [f"return {self.jump(i, t)}"], True
        if op == I.BPF_EXIT:
            if j32 or ins.source == I.BPF_X:
                raise _Unsupported("exit in the wrong class")
            return ["return EXIT(R)"], True
        if op == I.BPF_CALL:
            if j32 or ins.source == I.BPF_X:
                raise _Unsupported("call in the wrong class")
            if ins.src == 0:
                return [self.helper_call(i, ins.imm)], False
            if ins.src == I.BPF_PSEUDO_CALL:
                t = i + ins.imm + 1
                if not self.target_ok(t):
                    return [f"return {self.jump(i, t)}"], True
                return [f"return CALL(R, {i + 1}, {t}, {i})"], True
            if ins.src == I.BPF_PSEUDO_KFUNC_CALL:
                raise _Unsupported(f"kfunc call (btf id {ins.imm}); kfuncs are not emulated")
            raise _Unsupported(f"call with src_reg {ins.src}")
        if op not in _JCOND and op != I.BPF_JSET:
            raise _Unsupported(f"unknown jump operation {op:#04x}")
        if d > 10 or (ins.source == I.BPF_X and s > 10):
            raise _Unsupported("invalid register")
        bits = 32 if j32 else 64
        m = M32 if j32 else M64
        L = f"(R[{d}] & {M32})" if j32 else f"R[{d}]"
        if op == I.BPF_JSET:
            Rt = f"R[{s}]" if ins.source == I.BPF_X else str(ins.imm & m)
            cond = f"{L} & {Rt}"
        else:
            sym, signed = _JCOND[op]
            if ins.source == I.BPF_X:
                Rt = f"(R[{s}] & {M32})" if j32 else f"R[{s}]"
                if signed:
                    sb = 1 << (bits - 1)
                    Rt = f"(({Rt} ^ {sb}) - {sb})"
            else:
                Rt = str(ins.imm if signed else ins.imm & m)
            if signed:
                sb = 1 << (bits - 1)
                L = f"(({L} ^ {sb}) - {sb})"
            cond = f"{L} {sym} {Rt}"
        t = self.jump(i, i + ins.off + 1)
        f = self.jump(i, i + 1)
        return [f"return {t} if {cond} else {f}"], True

    def helper_call(self, i: int, func_id: int) -> str:
        if func_id not in HELPER_IMPLS:
            name = helper_name(func_id)
            return self.err(
                f"unsupported helper {name} (#{func_id}) called at insn {i}{self.describe(i)}: "
                "the emulator runs only the contract's extended-tier helpers and the "
                "ring buffer's output/reserve/submit/discard "
                f"({', '.join(sorted(HELPER_IMPLS.values()))})"
            )
        return f"R[0] = H{func_id}(R, {i}); R[1] = R[2] = R[3] = R[4] = R[5] = 0"

    def _mem_regs(self, ins: I.Insn) -> None:
        if ins.dst > 10 or ins.src > 10:
            raise _Unsupported("invalid register")

    def ldx(self, i: int, ins: I.Insn) -> str:
        self._mem_regs(ins)
        size = I.SIZE_BYTES[ins.size]
        if ins.dst == 10:
            raise _Unsupported("load into r10, the read-only frame pointer")
        addr = _addr_expr(ins.src, ins.off)
        if ins.mode == I.BPF_MEM:
            return f"R[{ins.dst}] = {_LD[size]}({addr}, {i})"
        if ins.mode == I.BPF_MEMSX:
            if size == 8:
                raise _Unsupported("sign-extending load of 8 bytes")
            return f"R[{ins.dst}] = {_LDS[size]}({addr}, {i})"
        raise _Unsupported(f"load mode {ins.mode:#04x}")

    def st(self, i: int, ins: I.Insn) -> str:
        self._mem_regs(ins)
        if ins.mode != I.BPF_MEM:
            raise _Unsupported(f"store-immediate mode {ins.mode:#04x}")
        size = I.SIZE_BYTES[ins.size]
        return f"{_ST[size]}({_addr_expr(ins.dst, ins.off)}, {ins.imm & M64}, {i})"

    def stx(self, i: int, ins: I.Insn) -> str:
        self._mem_regs(ins)
        size = I.SIZE_BYTES[ins.size]
        addr = _addr_expr(ins.dst, ins.off)
        if ins.mode == I.BPF_MEM:
            return f"{_ST[size]}({addr}, R[{ins.src}], {i})"
        if ins.mode != I.BPF_ATOMIC:
            raise _Unsupported(f"store mode {ins.mode:#04x}")
        if size not in (4, 8):
            raise _Unsupported(f"atomic operation on {size} bytes (only 4 and 8 exist)")
        imm = ins.imm
        if imm == I.BPF_XCHG:
            return f"R[{ins.src}] = ATOMIC({addr}, {size}, 'xchg', R[{ins.src}], {i})"
        if imm == I.BPF_CMPXCHG:
            return f"R[0] = CMPXCHG({addr}, {size}, R[0], R[{ins.src}], {i})"
        name = _ATOMIC_OPS.get(imm & ~I.BPF_FETCH)
        if name is None:
            raise _Unsupported(f"atomic operation {imm:#x}")
        call = f"ATOMIC({addr}, {size}, '{name}', R[{ins.src}], {i})"
        if imm & I.BPF_FETCH:
            return f"R[{ins.src}] = {call}"
        return call

    def ld(self, i: int, ins: I.Insn) -> str:
        if not ins.is_ld_imm64():
            if ins.mode in (I.BPF_ABS, I.BPF_IND):
                raise _Unsupported(
                    "legacy packet load (BPF_LD|BPF_ABS/BPF_IND); seccomp programs read "
                    "struct seccomp_data through r1"
                )
            raise _Unsupported(f"BPF_LD mode {ins.mode:#04x}")
        if i + 1 >= len(self.insns):
            raise _Unsupported("ld_imm64 without its second slot")
        hi = self.insns[i + 1]
        if hi.code != 0 or hi.dst or hi.src or hi.off:
            raise _Unsupported("ld_imm64 whose second slot is not all zero but imm")
        if ins.dst > 9:
            raise _Unsupported(f"ld_imm64 into r{ins.dst}")
        reloc = self.relocs.get(i)
        if reloc is not None:
            if reloc.kind == "map":
                value = self.map_addr(reloc.map)
            elif reloc.kind == "global":
                value = self.global_addr(reloc.map, reloc.offset)
            else:
                raise _Unsupported(f"relocation of kind {reloc.kind!r}")
            return f"R[{ins.dst}] = {value}"
        if ins.src == 0:
            return f"R[{ins.dst}] = {I.ld_imm64_value(ins, hi)}"
        if ins.src in (I.BPF_PSEUDO_MAP_FD, I.BPF_PSEUDO_MAP_VALUE):
            raise _Unsupported("ld_imm64 of a map without a relocation naming the map")
        raise _Unsupported(f"ld_imm64 with src_reg {ins.src} (pseudo BTF id/func/map index)")


#: helper id -> name, for the helpers the emulator implements
HELPER_IMPLS: dict[int, str] = {
    1: "map_lookup_elem",
    2: "map_update_elem",
    3: "map_delete_elem",
    5: "ktime_get_ns",
    7: "get_prandom_u32",
    14: "get_current_pid_tgid",
    15: "get_current_uid_gid",
    112: "probe_read_user",
    114: "probe_read_user_str",
    130: "ringbuf_output",
    131: "ringbuf_reserve",
    132: "ringbuf_submit",
    133: "ringbuf_discard",
}


