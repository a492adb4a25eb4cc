"""A deterministic interpreter for BPF_PROG_TYPE_SECCOMP programs.

`Emulator(obj, program=None, env=None).run(SyscallInput(...)) -> Result` runs
one program of a BpfObject (ebpfseccomp.elf.load_object) the way the kernel's
interpreter (kernel/bpf/core.c, ___bpf_prog_run, Linux 6.12) runs it after the
verifier's fix-ups, against a struct seccomp_data packed from the input.  Map
and global state lives in `Emulator.maps` and persists across run() calls.

What is modelled, what is refused and why: docs/emulator.md.

Speed: each basic block of the program is translated once into a small Python
function (straight-line code over the register list, ending in the block's
jump), so the run loop costs one call per block, not per instruction.
"""

from __future__ import annotations

import bisect
import random
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import insn as I
from .contract import AUDIT_ARCH, MAX_BPF_STACK, Verdict, helper_name
from .emumaps import ArrayMap, EmuMap
from .errors import EmulationError

__all__ = [
    "DEFAULT_BUDGET",
    "MAX_CALL_FRAMES",
    "Environment",
    "SyscallInput",
    "HelperCall",
    "Result",
    "Emulator",
    "EmuMap",
]

DEFAULT_BUDGET = 1_000_000
MAX_CALL_FRAMES = 8  # kernel: MAX_CALL_FRAMES
#: ELF sections ".rodata.init.<map>" hold <map>'s initial entries (maps.h)
MAP_INIT_PREFIX = ".rodata.init."

EPERM = 1
EFAULT = 14

M64 = 0xFFFFFFFFFFFFFFFF
M32 = 0xFFFFFFFF
S64 = 1 << 63
S32 = 1 << 31

# --- the address space ----------------------------------------------------------
# A pointer is a fake kernel address: (region key << 24) | offset.  Regions are
# bytearrays (bytes for the read-only context) looked up by key on each access,
# so pointer arithmetic in the program works on plain integers and an access
# outside every region is caught exactly.
_SHIFT = 24
_OFF = (1 << _SHIFT) - 1
_KEY_BASE = 0xFFFF800000  # addresses start at 0xffff8000_00000000
CTX_KEY = _KEY_BASE
_STACK_KEY = _KEY_BASE + 1  # frames 0..7: _STACK_KEY + depth
_MAP_KEY = _KEY_BASE + 0x100  # map handles (not memory): + map index
_PERM_KEY = _KEY_BASE + 0x10000  # array elements and globals, for the emulator's life
_RUN_KEY = _KEY_BASE + 0x400000  # hash values, for one run (up to _KEY_BASE + 0x7fffff)


def _addr(key: int, off: int = 0) -> int:
    return (key << _SHIFT) | off


CTX_ADDR = _addr(CTX_KEY)
_FP0 = _addr(_STACK_KEY, 512)  # r10 of the main frame

_CTX = struct.Struct("<IIQ6Q")


# --- environment and inputs -------------------------------------------------------


@dataclass
class Environment:
    """The world the filter sees, deterministic and settable.

    time_ns        what the first bpf_ktime_get_ns() returns
    ktime_step_ns  added to the clock after every bpf_ktime_get_ns() (default 0:
                   time only moves when set, e.g. by SyscallInput.time_ns)
    seed           seed of the PRNG behind bpf_get_prandom_u32()
    pid, tgid      bpf_get_current_pid_tgid() == tgid << 32 | pid (tgid None: pid)
    uid, gid       bpf_get_current_uid_gid() == gid << 32 | uid
    memory         the syscaller's user memory for probe_read_user(_str):
                   start address -> bytes; everything else faults (-EFAULT)
    dumpable       whether the calling task is dumpable
    ptrace_reads   whether the loader's credentials have CAP_SYS_PTRACE over
                   the task's mm (tier PTRACE): then non-dumpable tasks are
                   read too; otherwise reads of a non-dumpable task return
                   -EPERM with the buffer zeroed
    budget         instructions per run before EmulationError (runaway loop)
    """

    time_ns: int = 1_000_000_000
    ktime_step_ns: int = 0
    seed: int = 0
    pid: int = 1000
    tgid: int | None = None
    uid: int = 1000
    gid: int = 1000
    memory: dict[int, bytes] = field(default_factory=dict)
    dumpable: bool = True
    ptrace_reads: bool = False
    budget: int = DEFAULT_BUDGET


@dataclass
class SyscallInput:
    """One system call as the filter sees it; None fields take the Environment's.

    arch is a name from contract.AUDIT_ARCH or a raw AUDIT_ARCH number.
    memory adds user-memory regions for this call only (over Environment.memory).
    time_ns, when set, sets the emulator's clock before the run.
    """

    nr: int
    arch: str | int = "x86_64"
    args: Sequence[int] = (0, 0, 0, 0, 0, 0)
    ip: int = 0
    pid: int | None = None
    tgid: int | None = None
    uid: int | None = None
    gid: int | None = None
    memory: Mapping[int, bytes] | None = None
    time_ns: int | None = None

    def pack(self) -> bytes:
        """struct seccomp_data for this call (64 bytes, little-endian)."""
        arch = self.arch
        if isinstance(arch, str):
            try:
                arch = AUDIT_ARCH[arch]
            except KeyError:
                raise EmulationError(
                    f"unknown architecture {arch!r} (known: {', '.join(AUDIT_ARCH)})"
                ) from None
        args = self.args
        if len(args) != 6:
            if len(args) > 6:
                raise EmulationError(f"a system call has at most 6 arguments, got {len(args)}")
            args = (*args, *(0,) * (6 - len(args)))
        try:
            return _CTX.pack(self.nr, arch, self.ip, *args)
        except struct.error:  # negative or too wide: take the low bits, as C would
            return _CTX.pack(self.nr & M32, arch & M32, self.ip & M64, *(a & M64 for a in args))


class HelperCall(NamedTuple):
    insn: int
    name: str
    ret: int


@dataclass
class Result:
    verdict: Verdict
    insns_executed: int
    helper_calls: list[HelperCall]
    r0: int = 0  # the full 64-bit R0 at exit
    #: with Emulator(trace_insns=True): (insn index, {register: new value})
    steps: list[tuple[int, dict[int, int]]] = field(default_factory=list)


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
    funcs: list[Callable[[list[int]], int] | None]
    lens: list[int]
    source: str


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

    def translate(self, namespace: dict[str, Any]) -> _Translation:
        n = len(self.insns)
        leaders = self.leaders()
        lead_set = set(leaders)
        chunks: list[str] = []
        lens = [0] * (n + 1)
        for start in leaders:
            body: list[str] = []
            i = start
            count = 0
            terminated = False
            while i < n:
                if i != start and i in lead_set:
                    break
                count += 1
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
                    last = start + max(count - 1, 0)
                    self.errors[eid] = (
                        f"execution runs off the end of the program after insn {last}"
                        f"{self.describe(last)} (no exit)"
                    )
                    body.append(f"return ERR({eid})")
            lens[start] = count
            body = _localise(body)
            chunks.append(f"def _b{start}(R):\n    " + "\n    ".join(body) + "\n")
        source = "\n".join(chunks)
        code = compile(source, f"<bpf program {getattr(self.prog, 'name', '?')}>", "exec")
        exec(code, namespace)  # noqa: S102 - source generated from integers only
        funcs: list[Callable[[list[int]], int] | None] = [None] * (n + 1)
        for start in leaders:
            funcs[start] = namespace[f"_b{start}"]
        return _Translation(funcs, lens, source)

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
                "the emulator runs only the contract's extended-tier helpers "
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
}


# --- the emulator ------------------------------------------------------------------


class Emulator:
    """Runs one program of OBJ; `maps` holds its state across runs."""

    def __init__(self, obj: Any, program: str | None = None, env: Environment | None = None,
                 *, trace_insns: bool = False):
        """TRACE_INSNS: run one instruction at a time and record, in each
        Result.steps, the instruction index and the registers it changed
        (slower; for `emulate --trace-insns`)."""
        self.trace_insns = trace_insns
        self.obj = obj
        self.prog = obj.program(program)
        self.env = env if env is not None else Environment()
        self.budget = self.env.budget
        #: the clock bpf_ktime_get_ns() reads (settable)
        self.now_ns = self.env.time_ns
        self.rng = random.Random(self.env.seed)
        self.maps: dict[str, EmuMap] = {
            name: EmuMap.from_spec(spec) for name, spec in obj.maps.items()
        }
        self._map_by_key: dict[int, EmuMap] = {}
        self._map_key: dict[str, int] = {}
        for idx, name in enumerate(self.maps):
            self._map_key[name] = _MAP_KEY + idx
            self._map_by_key[_MAP_KEY + idx] = self.maps[name]
        # regions: readable (RD) and writable (WR) key -> buffer
        self._rd: dict[int, bytes | bytearray] = {}
        self._wr: dict[int, bytearray] = {}
        self._stacks = [bytearray(MAX_BPF_STACK) for _ in range(MAX_CALL_FRAMES)]
        # which stack bytes were written in this run (1) or never (0): the kernel
        # refuses reads of the others without CAP_PERFMON, and with it they read
        # stale data, so the emulator stops rather than guess a value
        self._stack_init = [bytearray(MAX_BPF_STACK) for _ in range(MAX_CALL_FRAMES)]
        self._shadow: dict[int, bytearray] = {}
        for depth, buf in enumerate(self._stacks):
            self._rd[_STACK_KEY + depth] = buf
            self._wr[_STACK_KEY + depth] = buf
            self._shadow[_STACK_KEY + depth] = self._stack_init[depth]
        self._rd[CTX_KEY] = bytes(64)
        self._perm_next = _PERM_KEY
        self._perm: dict[tuple[str, int], int] = {}  # (map, index) -> key
        self._run_next = _RUN_KEY
        self._run_addr: dict[int, int] = {}  # id(value buffer) -> key
        self._frames: list[tuple[int, list[int]]] = []
        self._calls: list[HelperCall] = []
        self._inp = SyscallInput(0)
        self._user: list[tuple[int, bytes]] | None = None
        self._user_starts: list[int] = []
        self._compile()
        self._apply_map_init()

    # -- public --------------------------------------------------------------

    @property
    def program_name(self) -> str:
        return str(self.prog.name)

    def run(self, inp: SyscallInput) -> Result:
        """Run the program once for INP; maps and globals keep their state."""
        self._rd[CTX_KEY] = inp.pack()
        self._stacks[0][:] = _ZERO_STACK
        self._stack_init[0][:] = _ZERO_STACK
        if self._run_next != _RUN_KEY:
            for key in range(_RUN_KEY, self._run_next):
                del self._rd[key]
                del self._wr[key]
            self._run_next = _RUN_KEY
            self._run_addr.clear()
        if self._frames:
            self._frames.clear()  # left over from a run that raised
        self._calls = calls = []
        if inp.time_ns is not None:
            self.now_ns = inp.time_ns
        self._inp = inp
        self._user = None  # user memory, built when a helper first reads it

        R = [0, CTX_ADDR, 0, 0, 0, 0, 0, 0, 0, 0, _FP0]
        funcs = self._funcs
        lens = self._lens
        budget = self.budget
        pc = 0
        n = 0
        steps: list[tuple[int, dict[int, int]]] = []
        trace = self.trace_insns
        while pc >= 0:
            n += lens[pc]
            if n > budget:
                raise EmulationError(
                    f"instruction budget of {budget} exhausted at insn {pc}{self._describe(pc)} "
                    "(an endless loop?)"
                )
            if trace:
                before = list(R)
                at = pc
                pc = funcs[pc](R)  # type: ignore[misc]
                steps.append((at, {r: R[r] for r in range(11) if R[r] != before[r]}))
                continue
            pc = funcs[pc](R)  # type: ignore[misc]
        r0 = R[0]
        return Result(Verdict(r0 & M32), n, calls, r0, steps)

    def _ids(self) -> tuple[int, int, int, int]:
        """(pid, tgid, uid, gid) of the current call."""
        env, inp = self.env, self._inp
        pid = env.pid if inp.pid is None else inp.pid
        if inp.tgid is not None:
            tgid = inp.tgid
        elif inp.pid is not None:
            tgid = inp.pid
        else:
            tgid = env.pid if env.tgid is None else env.tgid
        uid = env.uid if inp.uid is None else inp.uid
        gid = env.gid if inp.gid is None else inp.gid
        return pid, tgid, uid, gid

    def _user_memory(self) -> list[tuple[int, bytes]]:
        if self._user is None:
            mem = dict(self.env.memory)
            if self._inp.memory:
                mem.update(self._inp.memory)
            self._user = sorted((a, bytes(b)) for a, b in mem.items())
            self._user_starts = [a for a, _ in self._user]
        return self._user

    def _apply_map_init(self) -> None:
        """Fill maps from their ".rodata.init.<map>" sections (bpf/include/ebpfseccomp/maps.h)."""
        for name, m in self.maps.items():
            if not (m.is_global and name.startswith(MAP_INIT_PREFIX)):
                continue
            target = self.maps.get(name[len(MAP_INIT_PREFIX) :])
            if target is None or target.is_global:
                raise EmulationError(
                    f"section {name} initialises map {name[len(MAP_INIT_PREFIX):]!r}, "
                    "which the object does not define"
                )
            data = bytes(m.spec.initial or b"")
            step = target.key_size + target.value_size
            if len(data) % step:
                raise EmulationError(
                    f"section {name} is {len(data)} bytes, not a multiple of the "
                    f"{step}-byte key+value entries of map {target.name}"
                )
            for off in range(0, len(data), step):
                target.update(data[off : off + target.key_size],
                              data[off + target.key_size : off + step])

    # -- translation ------------------------------------------------------------

    def _compile(self) -> None:
        ns: dict[str, Any] = {"__builtins__": {}}
        tr = _Translator(self.prog, self._map_handle, self._global_addr, self._describe,
                         step=self.trace_insns)
        ns.update(self._runtime(tr.errors))
        t = tr.translate(ns)
        self._funcs = t.funcs
        self._lens = t.lens
        self.source = t.source

    def _describe(self, pc: int) -> str:
        lines = getattr(self.prog, "lines", None) or {}
        sl = lines.get(pc)
        if sl is None:
            return ""
        text = getattr(sl, "text", "").strip()
        return f" ({sl.file}:{sl.line}{': ' + text if text else ''})"

    def _map_handle(self, name: str) -> int:
        if name not in self._map_key:
            raise _Unsupported(f"relocation names map {name!r}, which the object does not define")
        return _addr(self._map_key[name])

    def _global_addr(self, name: str, offset: int) -> int:
        m = self.maps.get(name)
        if not isinstance(m, ArrayMap):
            raise _Unsupported(f"global relocation into {name!r}, which is not an array map")
        if not 0 <= offset < m.value_size:
            raise _Unsupported(f"global relocation at offset {offset} of {name} "
                               f"({m.value_size} bytes)")
        return self._elem_addr(m, 0) + offset

    def _elem_addr(self, m: ArrayMap, idx: int) -> int:
        key = self._perm.get((m.name, idx))
        if key is None:
            key = self._perm[(m.name, idx)] = self._perm_next
            self._perm_next += 1
            buf = m.element(idx)
            self._rd[key] = buf
            if not m.read_only_for_program:
                self._wr[key] = buf
        return _addr(key)

    def _value_addr(self, m: EmuMap, key: bytes, buf: bytearray) -> int:
        if isinstance(m, ArrayMap):
            return self._elem_addr(m, int.from_bytes(key, "little"))
        rk = self._run_addr.get(id(buf))
        if rk is None:
            rk = self._run_addr[id(buf)] = self._run_next
            self._run_next += 1
            self._rd[rk] = buf
            self._wr[rk] = buf
        return _addr(rk)

    # -- runtime support for the generated code ------------------------------------

    def _fault(self, addr: int, size: int, pc: int, store: bool) -> EmulationError:
        key, off = addr >> _SHIFT, addr & _OFF
        where = f"at insn {pc}{self._describe(pc)}"
        verb = "store of" if store else "load of"
        if key == CTX_KEY:
            if store:
                return EmulationError(
                    f"store to the context (struct seccomp_data is read-only) {where}"
                )
            if off + size <= 64:
                return EmulationError(
                    f"misaligned {size}-byte context load at offset {off} {where} "
                    "(the verifier allows only naturally aligned loads)"
                )
            return EmulationError(
                f"{verb} {size} bytes at context offset {off} {where}: outside the 64-byte "
                "struct seccomp_data"
            )
        region = self._region_name(key)
        if region is not None and store and key not in self._wr:
            return EmulationError(f"{verb} {size} bytes into read-only {region} {where}")
        if region is not None:
            size_of = len(self._rd[key])
            return EmulationError(
                f"{verb} {size} bytes at offset {off} of {region} ({size_of} bytes) {where}: "
                "out of bounds"
            )
        if key in self._map_by_key:
            return EmulationError(
                f"{verb} {size} bytes through the map pointer of "
                f"{self._map_by_key[key].name} {where}: a map pointer is not memory"
            )
        return EmulationError(
            f"{verb} {size} bytes at address {addr:#x} {where}: not a pointer into the "
            "context, the stack or a map value"
        )

    def _region_name(self, key: int) -> str | None:
        if key not in self._rd:
            return None
        if _STACK_KEY <= key < _STACK_KEY + MAX_CALL_FRAMES:
            return f"the stack of frame {key - _STACK_KEY}"
        for (name, idx), k in self._perm.items():
            if k == key:
                m = self.maps[name]
                return f"global {name}" if m.is_global else f"value {idx} of map {name}"
        if key >= _RUN_KEY:
            return "a map value"
        return "a memory region"

    def uninit_error(self, addr: int, size: int, pc: int, what: str = "load of") -> EmulationError:
        key, off = addr >> _SHIFT, addr & _OFF
        frame = key - _STACK_KEY
        return EmulationError(
            f"{what} {size} bytes at fp{off - MAX_BPF_STACK:+d} (frame {frame}) at insn {pc}"
            f"{self._describe(pc)}: stack bytes that were never written in this run. The "
            "kernel refuses such a read below the tracing tier and reads stale data at it; "
            "the emulator does not guess: initialise the variable (e.g. = {0}) first"
        )

    def _mark_init(self, addr: int, size: int) -> None:
        shadow = self._shadow.get(addr >> _SHIFT)
        if shadow is not None:
            off = addr & _OFF
            shadow[off : off + size] = _ONES[:size]

    def _check_init(self, addr: int, size: int, pc: int, what: str) -> None:
        shadow = self._shadow.get(addr >> _SHIFT)
        if shadow is not None:
            off = addr & _OFF
            if shadow.find(0, off, off + size) != -1:
                raise self.uninit_error(addr, size, pc, what)

    def _runtime(self, errors: dict[int, str]) -> dict[str, Any]:
        rd, wr = self._rd, self._wr
        fault = self._fault
        ctxk = CTX_KEY
        sh, om = _SHIFT, _OFF
        shadows = self._shadow
        uninit = self.uninit_error
        ones = _ONES

        def make_ld(fmt: str, size: int) -> Callable[[int, int], int]:
            unpack = struct.Struct(fmt).unpack_from
            align = size - 1

            def ld(a: int, pc: int) -> int:
                k = a >> sh
                try:
                    if k == ctxk and a & align:
                        raise KeyError
                    value = unpack(rd[k], a & om)[0] & M64
                except (KeyError, struct.error):
                    raise fault(a, size, pc, False) from None
                shadow = shadows.get(k)
                if shadow is not None and shadow.find(0, a & om, (a & om) + size) != -1:
                    raise uninit(a, size, pc)
                return value

            return ld

        def make_st(fmt: str, size: int) -> Callable[[int, int, int], None]:
            pack = struct.Struct(fmt).pack_into
            mask = (1 << (8 * size)) - 1
            filled = ones[:size]

            def st(a: int, v: int, pc: int) -> None:
                k = a >> sh
                try:
                    pack(wr[k], a & om, v & mask)
                except (KeyError, struct.error):
                    raise fault(a, size, pc, True) from None
                shadow = shadows.get(k)
                if shadow is not None:
                    shadow[a & om : (a & om) + size] = filled

            return st

        ld4 = make_ld("<I", 4)
        ld8 = make_ld("<Q", 8)
        st4 = make_st("<I", 4)
        st8 = make_st("<Q", 8)

        def atomic(a: int, size: int, op: str, v: int, pc: int) -> int:
            ld, st = (ld4, st4) if size == 4 else (ld8, st8)
            if (a >> sh) not in wr:
                raise fault(a, size, pc, True)
            old = ld(a, pc)
            mask = M32 if size == 4 else M64
            if op == "add":
                new = (old + v) & mask
            elif op == "or":
                new = old | (v & mask)
            elif op == "and":
                new = old & v
            elif op == "xor":
                new = (old ^ v) & mask
            else:  # xchg
                new = v & mask
            st(a, new, pc)
            return old

        def cmpxchg(a: int, size: int, r0: int, v: int, pc: int) -> int:
            ld, st = (ld4, st4) if size == 4 else (ld8, st8)
            if (a >> sh) not in wr:
                raise fault(a, size, pc, True)
            old = ld(a, pc)
            mask = M32 if size == 4 else M64
            if old == r0 & mask:
                st(a, v, pc)
            return old

        def err(eid: int) -> int:
            raise EmulationError(errors[eid])

        frames = self._frames
        stacks = self._stacks
        stack_init = self._stack_init

        def call(R: list[int], ret: int, target: int, pc: int) -> int:
            depth = len(frames) + 1
            if depth >= MAX_CALL_FRAMES:
                raise EmulationError(
                    f"BPF-to-BPF call at insn {pc}{self._describe(pc)} would need more than "
                    f"{MAX_CALL_FRAMES} frames"
                )
            frames.append((ret, R[6:11]))
            stacks[depth][:] = _ZERO_STACK
            stack_init[depth][:] = _ZERO_STACK
            R[10] = _addr(_STACK_KEY + depth, MAX_BPF_STACK)
            return target

        def exit_(R: list[int]) -> int:
            if not frames:
                return -1
            ret, saved = frames.pop()
            R[6:11] = saved
            return ret

        ns: dict[str, Any] = {
            "LD1": make_ld("<B", 1), "LD2": make_ld("<H", 2), "LD4": ld4, "LD8": ld8,
            "LDS1": make_ld("<b", 1), "LDS2": make_ld("<h", 2), "LDS4": make_ld("<i", 4),
            "ST1": make_st("<B", 1), "ST2": make_st("<H", 2), "ST4": st4, "ST8": st8,
            "ATOMIC": atomic, "CMPXCHG": cmpxchg, "ERR": err, "CALL": call, "EXIT": exit_,
            "SDIV": sdiv, "SMOD": smod, "BSWAP": bswap,
        }  # fmt: skip
        for func_id, name in HELPER_IMPLS.items():
            ns[f"H{func_id}"] = self._helper(func_id, name)
        return ns

    # -- helpers ----------------------------------------------------------------

    def _helper(self, func_id: int, name: str) -> Callable[[list[int], int], int]:
        impl: Callable[[list[int], int], int] = getattr(self, f"_h_{name}")
        calls_of = self

        def call(R: list[int], pc: int) -> int:
            ret = impl(R, pc)
            calls_of._calls.append(HelperCall(pc, name, ret))
            return ret & M64

        return call

    def _hfail(self, pc: int, name: str, msg: str) -> EmulationError:
        return EmulationError(f"helper {name} at insn {pc}{self._describe(pc)}: {msg}")

    def _map_arg(self, r1: int, pc: int, name: str) -> EmuMap:
        m = self._map_by_key.get(r1 >> _SHIFT) if r1 & _OFF == 0 else None
        if m is None:
            raise self._hfail(pc, name, f"r1 ({r1:#x}) is not a map")
        return m

    def _read(self, addr: int, size: int, pc: int, name: str, what: str) -> bytes:
        buf = self._rd.get(addr >> _SHIFT)
        off = addr & _OFF
        if buf is None or off + size > len(buf) or addr >> _SHIFT == CTX_KEY:
            raise self._hfail(
                pc, name, f"{what} ({size} bytes at {addr:#x}) is not inside the stack or a "
                "map value"
            )
        self._check_init(addr, size, pc, f"helper {name} reading its {what}:")
        return bytes(buf[off : off + size])

    def _dest(self, addr: int, size: int, pc: int, name: str) -> tuple[bytearray, int]:
        buf = self._wr.get(addr >> _SHIFT)
        off = addr & _OFF
        if buf is None or off + size > len(buf):
            raise self._hfail(
                pc, name, f"destination ({size} bytes at {addr:#x}) is not inside the stack "
                "or a writable map value"
            )
        # the helpers define every byte of their destination on every return
        self._mark_init(addr, size)
        return buf, off

    def _h_map_lookup_elem(self, R: list[int], pc: int) -> int:
        m = self._map_arg(R[1], pc, "map_lookup_elem")
        key = self._read(R[2], m.key_size, pc, "map_lookup_elem", "key")
        buf = m._bpf_lookup(key)
        if buf is None:
            return 0
        return self._value_addr(m, key, buf)

    def _h_map_update_elem(self, R: list[int], pc: int) -> int:
        m = self._map_arg(R[1], pc, "map_update_elem")
        key = self._read(R[2], m.key_size, pc, "map_update_elem", "key")
        value = self._read(R[3], m.value_size, pc, "map_update_elem", "value")
        return m._bpf_update(key, value, R[4])

    def _h_map_delete_elem(self, R: list[int], pc: int) -> int:
        m = self._map_arg(R[1], pc, "map_delete_elem")
        key = self._read(R[2], m.key_size, pc, "map_delete_elem", "key")
        return m._bpf_delete(key)

    def _h_ktime_get_ns(self, R: list[int], pc: int) -> int:
        now = self.now_ns
        self.now_ns = now + self.env.ktime_step_ns
        return now

    def _h_get_prandom_u32(self, R: list[int], pc: int) -> int:
        return self.rng.getrandbits(32)

    def _h_get_current_pid_tgid(self, R: list[int], pc: int) -> int:
        pid, tgid, _, _ = self._ids()
        return ((tgid & M32) << 32) | (pid & M32)

    def _h_get_current_uid_gid(self, R: list[int], pc: int) -> int:
        _, _, uid, gid = self._ids()
        return ((gid & M32) << 32) | (uid & M32)

    def _may_read_user(self) -> bool:
        return self.env.dumpable or self.env.ptrace_reads

    def _user_bytes(self, addr: int, size: int, stop_at_nul: bool) -> bytes | None:
        """Up to SIZE bytes of user memory at ADDR; None if a byte faults first.

        With stop_at_nul, reading stops after the first NUL (included)."""
        user = self._user_memory()
        out = bytearray()
        starts = self._user_starts
        while len(out) < size:
            i = bisect.bisect_right(starts, addr) - 1
            if i < 0:
                return None
            start, data = user[i]
            off = addr - start
            if off >= len(data):
                return None
            chunk = data[off : off + size - len(out)]
            if stop_at_nul:
                nul = chunk.find(b"\0")
                if nul >= 0:
                    out += chunk[: nul + 1]
                    return bytes(out)
            out += chunk
            addr += len(chunk)
        return bytes(out)

    def _h_probe_read_user(self, R: list[int], pc: int) -> int:
        size = R[2] & M32
        buf, off = self._dest(R[1], size, pc, "probe_read_user")
        if not self._may_read_user():
            buf[off : off + size] = bytes(size)
            return -EPERM
        data = self._user_bytes(R[3], size, False)
        if data is None:
            buf[off : off + size] = bytes(size)
            return -EFAULT
        buf[off : off + size] = data
        return 0

    def _h_probe_read_user_str(self, R: list[int], pc: int) -> int:
        size = R[2] & M32
        buf, off = self._dest(R[1], size, pc, "probe_read_user_str")
        if not self._may_read_user():
            buf[off : off + size] = bytes(size)
            return -EPERM
        if size == 0:
            return 0
        data = self._user_bytes(R[3], size, True)
        if data is None:
            buf[off : off + size] = bytes(size)
            return -EFAULT
        buf[off : off + len(data)] = data
        # the kernel (v2) zeroes what follows the string: no stale byte survives
        buf[off + len(data) : off + size] = bytes(size - len(data))
        if data.endswith(b"\0"):
            # strncpy_from_user_nofault: string length + 1, but 0 for ""
            return len(data) if len(data) > 1 else 0
        buf[off + size - 1] = 0  # truncated: NUL in the last byte
        return size


_ZERO_STACK = bytes(MAX_BPF_STACK)
_ONES = b"\x01" * MAX_BPF_STACK
