"""Stack and register state: the one forward data-flow pass of the checker.

Per instruction it computes what each register and 8-byte stack slot may
hold (abstract values below), across subprograms (arguments and return
values).  On the settled states: registers read before they are written,
the exit without a return value, stack bytes read before they are written on
every path, and which registers hold a whole field of struct seccomp_data
(``field_of``: the disassembler's names and the argument-width warning)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import contract
from ..insn import (
    BPF_ADD,
    BPF_ALU,
    BPF_ALU64,
    BPF_ATOMIC,
    BPF_CALL,
    BPF_CMPXCHG,
    BPF_DW,
    BPF_END,
    BPF_EXIT,
    BPF_FETCH,
    BPF_JA,
    BPF_JEQ,
    BPF_JMP,
    BPF_JMP32,
    BPF_JNE,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_MEM,
    BPF_MEMSX,
    BPF_MOV,
    BPF_NEG,
    BPF_ST,
    BPF_STX,
    BPF_SUB,
    BPF_X,
    SIZE_BYTES,
    Insn,
)
from .cfg import BPF_JCOND, BPF_PSEUDO_CALL, BPF_PSEUDO_FUNC, is_cond_jump, jump_target

if TYPE_CHECKING:
    from .checker import Checker

# --- abstract values --------------------------------------------------------------
#
# A register's abstract value is a frozenset of possibilities (path-insensitive
# may-analysis).  Possibilities:
#   ("uninit",)  ("scalar",)  ("top",)
#   ("ctx", off|None)            pointer into struct seccomp_data
#   ("fp", off|None)             pointer into a stack frame
#   ("map", name)                a map (ld_imm64 with a map relocation)
#   ("mapval", name, off|None)   pointer into a map value / global section
#   ("mvn", name, id)            map value or NULL (lookup result, id = call insn)
#   ("func", target)             subprogram address (ld_imm64 pseudo func)

#   ("field", name)              a scalar holding a whole field of struct
#                                seccomp_data ("nr", "arch", "args[2]")

Val = frozenset
UNINIT: Val = frozenset({("uninit",)})
SCALAR: Val = frozenset({("scalar",)})
TOP: Val = frozenset({("top",)})
_FIELD_NR: Val = frozenset({("field", "nr")})
_FIELD_ARCH: Val = frozenset({("field", "arch")})
POINTER_KINDS = {"ctx", "fp", "fpc", "map", "mapval", "mvn", "func"}
_MAX_OFFSETS = 4
_MAX_POSS = 12


def _norm(v: Iterable[tuple]) -> Val:
    s = set(v)
    if ("top",) in s:
        return TOP
    by_kind: dict[tuple, list[tuple]] = {}
    for p in s:
        if p[0] in ("ctx", "fp", "fpc"):
            by_kind.setdefault((p[0],), []).append(p)
        elif p[0] == "mapval":
            by_kind.setdefault(("mapval", p[1]), []).append(p)
    for key, group in by_kind.items():
        if len(group) > _MAX_OFFSETS or any(g[-1] is None for g in group):
            for g in group:
                s.discard(g)
            s.add(key + (None,))
    if len(s) > _MAX_POSS:
        return TOP
    return frozenset(s)


def _join(a: Val, b: Val) -> Val:
    if a == b:
        return a
    return _norm(a | b)


def _is_pointer(p: tuple) -> bool:
    return p[0] in POINTER_KINDS


def _add_const(v: Val, delta: int | None) -> Val:
    out = set()
    for p in v:
        if p[0] in ("ctx", "fp", "fpc"):
            off = p[1]
            out.add((p[0], None if off is None or delta is None else off + delta))
        elif p[0] == "mapval":
            off = p[2]
            out.add(("mapval", p[1], None if off is None or delta is None else off + delta))
        elif p[0] == "uninit":
            out.add(("uninit",))
        elif p[0] in ("scalar", "top"):
            out.add(p)
        else:  # arithmetic on map pointers, maybe-NULL values, functions: refused
            out.add(("scalar",))
    return _norm(out)


@dataclass(frozen=True)
class _State:
    regs: tuple[Val, ...]
    stack: tuple[tuple[int, Val], ...]  # spilled 8-byte slots of the own frame

    def reg(self, r: int) -> Val:
        return self.regs[r] if 0 <= r < len(self.regs) else TOP

    def with_reg(self, r: int, v: Val) -> _State:
        if not 0 <= r < 10:
            return self
        if self.regs[r] is v:
            return self
        regs = list(self.regs)
        regs[r] = v
        return _State(tuple(regs), self.stack)

    def slot(self, off: int) -> Val | None:
        for k, v in self.stack:
            if k == off:
                return v
        return None

    def with_slot(self, off: int, v: Val | None) -> _State:
        items = {k: x for k, x in self.stack if k != off}
        if v is not None:
            items[off] = v
        return _State(self.regs, tuple(sorted(items.items())))

    def join(self, other: _State) -> _State:
        regs = tuple(_join(a, b) for a, b in zip(self.regs, other.regs, strict=True))
        mine, theirs = dict(self.stack), dict(other.stack)
        keys = set(mine) | set(theirs)
        stack = tuple(sorted((k, _join(mine.get(k, SCALAR), theirs.get(k, SCALAR))) for k in keys))
        return _State(regs, stack)

    def map_all(self, fn) -> _State:  # type: ignore[no-untyped-def]
        return _State(
            tuple(_norm(fn(v)) for v in self.regs),
            tuple((k, _norm(fn(v))) for k, v in self.stack),
        )


def _entry_state(args: list[Val] | None) -> _State:
    regs = [UNINIT] * 11
    if args is None:
        regs[1] = frozenset({("ctx", 0)})
    else:
        for i, v in enumerate(args, start=1):
            # the caller's stack pointers point into another frame
            regs[i] = frozenset(("fpc",) + p[1:] if p[0] == "fp" else p for p in v)
    regs[10] = frozenset({("fp", 0)})
    return _State(tuple(regs), ())


def _refine(v: Val, ids: set[int], not_null: bool) -> Val:
    out = set()
    for p in v:
        if p[0] == "mvn" and p[2] in ids:
            out.add(("mapval", p[1], 0) if not_null else ("scalar",))
        else:
            out.add(p)
    return frozenset(out)


#: helpers that fill their destination (r1, r2 bytes) on every return
_FILLS_R1 = frozenset(contract.HELPER_IDS[n] for n in (
    "probe_read_user", "probe_read_user_str", "probe_read", "probe_read_str",
    "probe_read_kernel", "probe_read_kernel_str"))




def dataflow(ck: Checker) -> None:
    starts = ck.subprog_starts
    entry_args: dict[int, list[Val] | None] = {0: None}
    returns: dict[int, Val] = {}
    for _round in range(12):
        changed = False
        ck.states = [None] * ck.n
        call_args: dict[int, list[Val]] = {}
        new_returns: dict[int, Val] = {}
        for s in starts:
            if s != 0 and s not in entry_args:
                continue
            _flow_subprog(ck, s, entry_args.get(s), returns, call_args, new_returns)
        for s, args in call_args.items():
            if entry_args.get(s) != args:
                entry_args[s] = args
                changed = True
        new_returns.pop(0, None)  # what the program returns is no input of the flow
        if new_returns != returns:
            returns = new_returns
            changed = True
        if not changed:
            break
    else:
        ck.notes.append("data flow did not settle; context tracking is approximate")


_MOV64_K = BPF_ALU64 | BPF_MOV | BPF_K
_STX_ATOMIC = BPF_STX | BPF_ATOMIC
_MOV32_K = BPF_ALU | BPF_MOV | BPF_K
#: jump operations that are no conditional jump
_NOT_COND = frozenset({BPF_JA, BPF_CALL, BPF_EXIT, BPF_JCOND})


def _flow_subprog(
    ck: Checker,
    start: int,
    args: list[Val] | None,
    returns: dict[int, Val],
    call_args: dict[int, list[Val]],
    new_returns: dict[int, Val],
) -> None:
    states = ck.states
    states[start] = _entry_state(args)
    work = [start]
    visits = bytearray(ck.n)
    insns = ck.insns
    intern = ck.interned.setdefault
    while work:
        i = work.pop()
        if visits[i] == 200:
            continue
        visits[i] += 1
        st = states[i]
        assert st is not None
        ins = insns[i]
        code = ins.code
        if code & 0x07 == BPF_JMP and code & 0x08 == BPF_K and code & 0xF0 not in _NOT_COND \
                and (ins.imm != 0 or code & 0xF0 not in (BPF_JEQ, BPF_JNE)):
            outs: list[tuple[int, _State]] = [(i + 1, st), (i + ins.off + 1, st)]  # fast path
        elif code == _MOV64_K or code == _MOV32_K:
            outs = [(i + 1, st.with_reg(ins.dst, SCALAR))]
        elif code == BPF_JMP | BPF_EXIT and start == 0:
            continue  # what the program returns is checked on the settled states
        else:
            outs = _transfer(ck, i, ins, st, returns, call_args, new_returns, start)
        for t, out in outs:
            old = states[t]
            if old is None:
                states[t] = out if out is st else intern(out, out)  # equal states: one object
                work.append(t)
            elif old is not out:
                new = old.join(out)
                if new != old:
                    states[t] = new
                    work.append(t)


def _transfer(
    ck: Checker,
    i: int,
    ins: Insn,
    st: _State,
    returns: dict[int, Val],
    call_args: dict[int, list[Val]],
    new_returns: dict[int, Val],
    sub: int,
) -> list[tuple[int, _State]]:
    cls = ins.cls
    nxt = i + 2 if ins.is_ld_imm64() else i + 1
    if cls in (BPF_ALU, BPF_ALU64):
        return [(nxt, st.with_reg(ins.dst, _alu(ck, ins, st)))]
    if cls == BPF_LDX:
        base = st.reg(ins.src)
        v = _ctx_load(base, ins)
        if ins.size == BPF_DW and ins.mode == BPF_MEM and base:
            offs = [p[1] + ins.off for p in base if p[0] == "fp" and p[1] is not None]
            if len(offs) == len(base) and all(o % 8 == 0 for o in offs):
                merged: Val | None = None
                for o in offs:
                    slot = st.slot(o)
                    got = slot if slot is not None else SCALAR
                    merged = got if merged is None else _join(merged, got)
                v = merged if merged is not None else SCALAR
        return [(nxt, st.with_reg(ins.dst, v))]
    if cls in (BPF_ST, BPF_STX):
        base = st.reg(ins.dst)
        value = st.reg(ins.src) if cls == BPF_STX else SCALAR
        if ins.mode == BPF_ATOMIC:
            value = SCALAR
            out = st
            if ins.imm & BPF_FETCH:
                reg = 0 if ins.imm == BPF_CMPXCHG else ins.src
                out = out.with_reg(reg, SCALAR)
            return [(nxt, out)]
        out = st
        fps = [p for p in base if p[0] == "fp"]
        for p in fps:
            if p[1] is None:
                continue
            off = p[1] + ins.off
            slot = off - off % 8
            if ins.size == BPF_DW and off % 8 == 0 and len(fps) == len(base):
                out = out.with_slot(off, value)
            else:
                out = out.with_slot(slot, None)
        return [(nxt, out)]
    if cls == BPF_LD:
        if ins.is_ld_imm64():
            r = ck.relocs.get(i)
            if r is not None and r.kind == "map":
                v: Val = frozenset({("map", r.map)})
            elif r is not None:
                v = frozenset({("mapval", r.map, r.offset)})
            elif ins.src == BPF_PSEUDO_FUNC:
                v = frozenset({("func", i + ins.imm + 1)})
            else:
                v = SCALAR
            return [(nxt, st.with_reg(ins.dst, v))]
        return [(nxt, st.with_reg(0, SCALAR))]
    # jumps
    if ins.is_exit():
        prev_ret = new_returns.get(sub)
        new_returns[sub] = st.reg(0) if prev_ret is None else _join(prev_ret, st.reg(0))
        return []
    if ins.is_call():
        out = st
        if ins.is_pseudo_call():
            target = i + ins.imm + 1
            args = [st.reg(r) for r in range(1, 6)]
            prev = call_args.get(target)
            call_args[target] = (
                args if prev is None else [_join(a, b) for a, b in zip(prev, args, strict=True)]
            )
            r0 = returns.get(target, TOP)
        elif ins.src == 0 and ins.imm == contract.HELPER_IDS["map_lookup_elem"]:
            maps = [p[1] for p in st.reg(1) if p[0] == "map"]
            r0 = _norm(("mvn", m, i) for m in maps) if maps else SCALAR
        else:
            r0 = SCALAR
        out = out.with_reg(0, r0)
        for r in range(1, 6):
            out = out.with_reg(r, UNINIT)
        return [(i + 1, out)]
    if ins.op == BPF_JA:
        return [(jump_target(i, ins), st)]  # type: ignore[list-item]
    target = jump_target(i, ins)
    assert target is not None
    taken, fall = st, st
    if ins.source == BPF_K and ins.imm == 0 and ins.op in (BPF_JEQ, BPF_JNE):
        ids = {p[2] for p in st.reg(ins.dst) if p[0] == "mvn"}
        if ids:
            null_side, ok_side = (taken, fall) if ins.op == BPF_JEQ else (fall, taken)
            null_side = null_side.map_all(lambda v: _refine(v, ids, False))
            ok_side = ok_side.map_all(lambda v: _refine(v, ids, True))
            taken, fall = (null_side, ok_side) if ins.op == BPF_JEQ else (ok_side, null_side)
    return [(i + 1, fall), (target, taken)]


def _alu(ck: Checker, ins: Insn, st: _State) -> Val:
    op = ins.op
    dst = st.reg(ins.dst)
    if op == BPF_MOV:
        if ins.source == BPF_X:
            src = st.reg(ins.src)
            if ins.cls == BPF_ALU64 and ins.off == 0:
                return src
            # a 32-bit move keeps nr and arch (32-bit fields), not a whole argument
            if ins.off == 0 and src in (_FIELD_NR, _FIELD_ARCH):
                return src
            return SCALAR
        return SCALAR
    if ins.cls == BPF_ALU64 and op in (BPF_ADD, BPF_SUB) and any(_is_pointer(p) for p in dst):
        if ins.source == BPF_K:
            return _add_const(dst, ins.imm if op == BPF_ADD else -ins.imm)
        src = st.reg(ins.src)
        if any(_is_pointer(p) for p in src):
            return SCALAR  # pointer - pointer
        return _add_const(dst, None)
    if ins.cls == BPF_ALU64 and op == BPF_ADD and ins.source == BPF_X:
        src = st.reg(ins.src)
        if any(_is_pointer(p) for p in src):
            return _add_const(src, None)
    return SCALAR


def _fp_off(ck: Checker, st: _State, reg: int) -> int | None:
    """The stack offset REG holds on every path, or None."""
    v = st.reg(reg)
    if len(v) == 1:
        (p,) = v
        if p[0] == "fp" and p[1] is not None:
            return int(p[1])
    return None


def _const_before(ck: Checker, i: int, reg: int) -> int | None:
    """REG's value at insn I if its last definition in I's straight-line run
    is a move of a constant (how clang passes a buffer's size), else None."""
    targets = ck.jump_targets
    j = i - 1
    while j >= 0 and i - j <= 16:
        ins = ck.insns[j]
        if ins.cls in (BPF_JMP, BPF_JMP32):
            return None
        if ins.cls in (BPF_ALU, BPF_ALU64) and ins.dst == reg:
            if ins.op == BPF_MOV and ins.source == BPF_K and ins.off == 0:
                return ins.imm if ins.cls == BPF_ALU64 else ins.imm & 0xFFFFFFFF
            return None
        if ins.cls in (BPF_LDX, BPF_LD) and ins.dst == reg:
            return None
        if j in targets:
            return None
        j -= 1
    return None


def check_stack_init(ck: Checker) -> None:
    """Must-analysis of written stack bytes, per subprogram: a read of bytes not
    written on every path reaches the kernel's "invalid read from stack" (refused
    without CAP_PERFMON; with it, stale data).  Writes through a pointer whose
    stack offset is not known on every path count as no write (conservative)."""
    base = contract.MAX_BPF_STACK
    ck.jump_targets = set(ck.targets.values())

    def bits(off: int, size: int) -> int:
        lo = max(off + base, 0)
        hi = min(off + base + size, base)
        return ((1 << (hi - lo)) - 1) << lo if hi > lo else 0

    found: dict[int, tuple[int, int]] = {}

    def need(i: int, off: int | None, size: int, mask: int) -> None:
        if off is not None and size > 0 and (mask & bits(off, size)) != bits(off, size):
            found.setdefault(i, (off, size))

    insns, states, succs = ck.insns, ck.states, ck.succs
    bounds = ck.subprog_starts + [ck.n]
    masks: list[int | None] = [None] * ck.n
    for k, start in enumerate(ck.subprog_starts):
        end = bounds[k + 1]
        masks[start] = 0
        work = [start]
        while work:
            i = work.pop()
            mask = masks[i]
            assert mask is not None
            ins = insns[i]
            st = states[i]
            if st is None:
                continue
            code = ins.code
            cls = code & 0x07
            outs = succs[i]
            if outs is None:
                outs = (i + 1,)
            if cls == BPF_LDX:
                if ins.mode in (BPF_MEM, BPF_MEMSX):
                    need(i, _mem_off(ck, st, ins.src, ins.off), SIZE_BYTES[ins.size], mask)
            elif cls == BPF_ST or cls == BPF_STX:
                off = _mem_off(ck, st, ins.dst, ins.off)
                if ins.mode == BPF_ATOMIC:
                    need(i, off, SIZE_BYTES[ins.size], mask)
                elif off is not None:
                    mask |= bits(off, SIZE_BYTES[ins.size])
            elif code == BPF_JMP | BPF_CALL:
                if ins.src == 0:
                    mask = _helper_stack(ck, i, ins.imm, st, mask, need, bits)
                elif ins.src == BPF_PSEUDO_CALL:
                    outs = (i + 1,)
            elif code == BPF_LD | BPF_DW and ins.src == BPF_PSEUDO_FUNC:
                outs = (i + 2,)
            for t in outs:
                if not start <= t < end:
                    continue
                old = masks[t]
                if old is None:
                    masks[t] = mask
                    work.append(t)
                elif old & mask != old:
                    masks[t] = old & mask
                    work.append(t)
    for i, (off, size) in sorted(found.items()):
        if ck.unprivileged:
            ck.problem(
                i,
                "uninit-stack",
                f"invalid read from stack off {off} size {size}: bytes not written on "
                f"every path",
                "initialise the variable first (e.g. `= {0}`), or load with CAP_PERFMON",
            )
        else:
            ck.notes.append(
                f"insn {i}: reads stack off {off} size {size}, not written on every path: "
                "the kernel refuses this below the tracing tier (a loader without "
                "CAP_BPF and CAP_PERFMON, or when the LSM denies helpers); at the "
                "tracing tier the read sees stale data (the emulator stops there)"
            )


def _mem_off(ck: Checker, st: _State, reg: int, insn_off: int) -> int | None:
    off = _fp_off(ck, st, reg)
    return None if off is None else off + insn_off


def _helper_stack(ck: Checker, i: int, func_id: int, st: _State, mask: int,
                  need: Any, bits: Any) -> int:
    name = contract.HELPER_NAMES.get(func_id, "")
    if func_id in _FILLS_R1:
        off, size = _fp_off(ck, st, 1), _const_before(ck, i, 2)
        if off is not None and size is not None:
            mask |= bits(off, size)
        return mask
    if name in ("map_lookup_elem", "map_update_elem", "map_delete_elem"):
        maps = [p[1] for p in st.reg(1) if p[0] == "map"]
        spec = ck.obj.maps.get(maps[0]) if len(maps) == 1 else None
        if spec is not None:
            need(i, _fp_off(ck, st, 2), spec.key_size, mask)
            if name == "map_update_elem":
                need(i, _fp_off(ck, st, 3), spec.value_size, mask)
    return mask


def _regs_read(ins: Insn) -> list[int]:
    """The registers instruction INS reads (helper arguments aside)."""
    cls = ins.cls
    if cls in (BPF_ALU, BPF_ALU64):
        regs = [] if ins.op == BPF_MOV else [ins.dst]
        if ins.source == BPF_X and ins.op not in (BPF_NEG, BPF_END):
            regs.append(ins.src)
        return regs
    if cls == BPF_LDX:
        return [ins.src]
    if cls == BPF_ST:
        return [ins.dst]
    if cls == BPF_STX:
        return [ins.dst, ins.src] + ([0] if ins.mode == BPF_ATOMIC and
                                     ins.imm == BPF_CMPXCHG else [])
    if is_cond_jump(ins) and ins.op != BPF_JCOND:
        return [ins.dst] + ([ins.src] if ins.source == BPF_X else [])
    return []


def check_registers(ck: Checker) -> None:
    """Registers read before they are written on some path (R0 at the
    program's exit included: the kernel's "R0 !read_ok")."""
    maybe_uninit: dict[int, frozenset[int]] = {}  # id(state) -> its maybe-unset registers
    by_code: dict[int, tuple[bool, bool]] = {}
    insns, states = ck.insns, ck.states
    for i, st in enumerate(states):
        if st is None:
            continue
        regs = maybe_uninit.get(id(st))
        if regs is None:
            regs = maybe_uninit[id(st)] = frozenset(
                r for r in range(10) if ("uninit",) in st.regs[r])
        if not regs:
            continue
        ins = insns[i]
        code = ins.code
        if code == BPF_JMP | BPF_EXIT:
            if 0 in regs and ck.subprog_of(i) == 0:
                ck.problem(
                    i,
                    "r0-uninit",
                    "R0 !read_ok: the program may exit without setting a return value "
                    "(on some path)",
                    "return a SECCOMP_RET_* value on every path",
                )
            continue  # an exit reads nothing else
        if code & 0xE7 != _STX_ATOMIC:
            reads = by_code.get(code)
            if reads is None:  # what _regs_read reads, by opcode (dst, src)
                probe = _regs_read(Insn(code, 1, 2, 0, 0))
                reads = by_code[code] = (1 in probe, 2 in probe)
            if not (reads[0] and ins.dst in regs) and not (reads[1] and ins.src in regs):
                continue  # reads no register that may be unset
        for r in _regs_read(ins):
            if r in regs:
                ck.problem(
                    i,
                    "uninit-reg",
                    f"R{r} !read_ok: the register may be read before it is written "
                    f"(helper calls leave R1-R5 unset)",
                    f"set R{r} first on every path",
                )


def _ctx_load(base: Val, ins: Insn) -> Val:
    """The value a load through BASE gives: a named field of struct seccomp_data
    when BASE is the context pointer on every path and the load reads a whole
    nr, arch or args[k], else SCALAR."""
    if len(base) == 1:
        (p,) = base
        if p[0] == "ctx" and p[1] is not None:
            name = contract.seccomp_data_field(p[1] + ins.off, SIZE_BYTES[ins.size])
            if name in ("nr", "arch") or (name.startswith("args[") and name.endswith("]")):
                return frozenset({("field", name)})
    return SCALAR


def field_of(st: _State | None, reg: int) -> str:
    """The field of struct seccomp_data REG holds on every path to the state ST
    (loaded from the context and only copied since), or ""."""
    if st is None:
        return ""
    v = st.reg(reg)
    if len(v) == 1:
        (p,) = v
        if p[0] == "field":
            return str(p[1])
    return ""
