"""Context and map access, on the settled data-flow states: loads and stores
through the context (struct seccomp_data), the stack, map values and
maybe-NULL lookup results; pointer arithmetic, comparisons and leaks; the
map declarations; the argument-width warning; which instruction first uses
each map or global section (what raised the tier)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import contract
from ..insn import (
    ALU_NAMES,
    BPF_ADD,
    BPF_ALU,
    BPF_ALU64,
    BPF_AND,
    BPF_ARSH,
    BPF_CALL,
    BPF_DIV,
    BPF_END,
    BPF_EXIT,
    BPF_JMP,
    BPF_JMP32,
    BPF_K,
    BPF_LDX,
    BPF_LSH,
    BPF_MEMSX,
    BPF_MOD,
    BPF_MOV,
    BPF_MUL,
    BPF_NEG,
    BPF_OR,
    BPF_RSH,
    BPF_ST,
    BPF_STX,
    BPF_SUB,
    BPF_X,
    BPF_XOR,
    SIZE_BYTES,
    Insn,
)
from . import cfg, state
from .state import Val, _is_pointer, _State

if TYPE_CHECKING:
    from .checker import Checker

_KIND_DESC = {
    "ctx": "ctx",
    "fp": "fp",
    "fpc": "fp",
    "map": "map_ptr",
    "mapval": "map_value",
    "mvn": "map_value_or_null",
    "func": "func",
}




def check_arg_widths(ck: Checker) -> None:
    """The arg-width trap: args[] are whole 64-bit registers, and a 32-bit
    int argument such as openat's dirfd usually arrives zero-extended
    (AT_FDCWD is 0x00000000ffffff9c).  A 64-bit comparison of a whole
    argument with a negative constant compares against the sign-extended
    0xffffffffffffff9c and does not match it."""
    for i, ins in enumerate(ck.insns):
        if ins.imm >= 0 or ins.code & 0x0F != BPF_JMP | BPF_K or not cfg.is_cond_jump(ins):
            continue
        field_ = state.field_of(ck.states[i], ins.dst)
        if not field_.startswith("args["):
            continue
        line = ck.line_for(i)
        at = f" ({line.file.rsplit('/', 1)[-1]}:{line.line})" if line else ""
        ck.warnings.append(
            f"insn {i}{at}: compares all 64 bits of {field_} with {ins.imm} "
            f"({ins.imm & 0xFFFFFFFFFFFFFFFF:#x}); a 32-bit int argument usually arrives "
            f"as {ins.imm & 0xFFFFFFFF:#010x} in a 64-bit register and will not match: "
            f"compare (int){field_} (or (__u32)) for int arguments"
        )


def map_refs(ck: Checker) -> dict[str, dict[str, Any]]:
    """Map or global section -> the first instruction referring to it."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(ck.prog.relocs, key=lambda r: r.insn):
        if r.map in out or r.map.startswith(".rodata.init."):
            continue
        line = ck.line_for(r.insn)
        out[r.map] = {
            "insn": r.insn,
            "symbol": r.symbol or None,
            "source": None if line is None else {
                "file": line.file, "line": line.line, "text": line.text},
        }
    return out


def check_accesses(ck: Checker) -> None:
    """Memory accesses, pointer arithmetic, comparisons and leaks, helper map
    arguments, on the settled states."""
    ptr_regs: dict[int, frozenset[int]] = {}  # id(state) -> registers that may hold pointers
    insns = ck.insns
    main_end = ck.subprog_starts[1] if len(ck.subprog_starts) > 1 else ck.n
    for i, st in enumerate(ck.states):  # in order: the notes follow the instructions
        if st is None:
            continue
        ins = insns[i]
        code = ins.code
        cls = code & 0x07
        if (cls == BPF_JMP or cls == BPF_JMP32) and code & 0x08 == BPF_K \
                and code & 0xF0 not in (BPF_CALL, BPF_EXIT):
            continue  # a jump on a constant: nothing to check
        if cls == BPF_ALU or cls == BPF_ALU64 or code == BPF_JMP | BPF_EXIT:
            ptrs = ptr_regs.get(id(st))
            if ptrs is None:
                ptrs = ptr_regs[id(st)] = frozenset(
                    r for r in range(11) if any(_is_pointer(p) for p in st.regs[r]))
            if code == BPF_JMP | BPF_EXIT:
                if 0 not in ptrs or i >= main_end:
                    continue  # returns no pointer (or returns from a subprogram)
            elif ins.dst not in ptrs and (code & 0x08 == BPF_K or ins.src not in ptrs):
                continue  # no pointer involved
        if cls == BPF_LDX:
            _check_mem(ck, i, ins, st.reg(ins.src), ins.src, write=False)
        elif cls in (BPF_ST, BPF_STX):
            _check_mem(ck, i, ins, st.reg(ins.dst), ins.dst, write=True)
            if cls == BPF_STX and ck.unprivileged:
                val = st.reg(ins.src)
                base = st.reg(ins.dst)
                if any(_is_pointer(p) for p in val) and any(
                    p[0] in ("mapval", "mvn") for p in base
                ):
                    ck.problem(
                        i,
                        "ptr-leak",
                        f"R{ins.src} leaks addr into map",
                        "store values, not pointers, in maps (or load with CAP_BPF)",
                    )
        elif cls in (BPF_ALU, BPF_ALU64):
            _check_ptr_alu(ck, i, ins, st)
        elif ins.is_exit() and ck.subprog_of(i) == 0:
            r0 = st.reg(0)
            if ("uninit",) not in r0 and any(_is_pointer(p) for p in r0):
                if ck.unprivileged:
                    ck.problem(
                        i,
                        "ptr-return",
                        "R0 leaks addr as return value",
                        "return a SECCOMP_RET_* value, not a pointer",
                    )
                else:
                    ck.notes.append(
                        f"insn {i}: the program may return a pointer; the kernel allows "
                        "that only with CAP_PERFMON, and the action is then meaningless"
                    )
        elif cfg.is_cond_jump(ins) and ins.source == BPF_X and ck.unprivileged:
            if any(_is_pointer(p) for p in st.reg(ins.src)):
                ck.problem(
                    i,
                    "ptr-compare",
                    f"R{ins.src} pointer comparison prohibited",
                    "compare values, not pointers (or load with CAP_BPF)",
                )
        elif ins.is_call():
            _check_call_args(ck, i, ins, st)


def _check_call_args(ck: Checker, i: int, ins: Insn, st: _State) -> None:
    if not ins.is_helper_call():
        return
    keyed = ins.imm in contract.KEYED_MAP_HELPERS
    ring = ins.imm in contract.RINGBUF_MAP_HELPERS
    if not keyed and not ring:
        return
    r1 = st.reg(1)
    name = contract.helper_name(ins.imm)
    if not any(p[0] == "map" for p in r1) and ("top",) not in r1:
        ck.problem(
            i,
            "map-arg",
            f"R1 of bpf_{name} is not a map",
            "pass &map_name as the first argument",
        )
        return
    # the verifier's check_map_func_compatibility: a ring buffer only with
    # the ringbuf helpers, and those only with a ring buffer
    for p in sorted(r1, key=repr):
        spec = ck.obj.maps.get(p[1]) if p[0] == "map" else None
        if spec is None:
            continue
        is_ring = spec.type == contract.BPF_MAP_TYPE_RINGBUF
        if is_ring != ring:
            tname = contract.MAP_TYPES.get(spec.type, str(spec.type))
            ck.problem(
                i,
                "map-arg",
                f"cannot pass map_type {spec.type} ({tname}, {p[1]!r}) into func "
                f"bpf_{name}#{ins.imm}",
                "write a ring buffer with bpf_ringbuf_output/reserve/submit"
                if is_ring else "bpf_ringbuf_* helpers take a BPF_MAP_TYPE_RINGBUF map",
            )


def _check_ptr_alu(ck: Checker, i: int, ins: Insn, st: _State) -> None:
    if ins.op == BPF_MOV:
        if ins.source == BPF_X and (ins.cls == BPF_ALU or ins.off):
            if any(_is_pointer(p) for p in st.reg(ins.src)) and ck.unprivileged:
                ck.problem(i, "ptr-alu", f"R{ins.src} partial copy of pointer",
                             "copy pointers with 64-bit moves")  # fmt: skip
        return
    dst = st.reg(ins.dst)
    ptrs = [p for p in dst if _is_pointer(p)]
    if not ptrs:
        return
    kinds = sorted({p[0] for p in ptrs})
    desc = "/".join(_KIND_DESC.get(k, k) for k in kinds)
    if ins.cls == BPF_ALU:
        ck.problem(i, "ptr-alu", f"R{ins.dst} 32-bit pointer arithmetic prohibited",
                     "do pointer arithmetic in 64 bits")  # fmt: skip
    elif ins.op not in (BPF_ADD, BPF_SUB):
        name = ALU_NAMES.get(ins.op, hex(ins.op))
        if ins.op in (BPF_AND, BPF_OR, BPF_XOR, BPF_LSH, BPF_RSH, BPF_ARSH, BPF_MUL,
                      BPF_DIV, BPF_MOD, BPF_NEG, BPF_END):  # fmt: skip
            ck.problem(
                i,
                "ptr-alu",
                f"R{ins.dst} bitwise operator {name} on pointer ({desc}) prohibited",
                "only add or subtract constants to pointers",
            )
    elif ins.source == BPF_X and ins.op == BPF_ADD and \
            any(_is_pointer(p) for p in st.reg(ins.src)):
        ck.problem(i, "ptr-alu", f"R{ins.dst} pointer += pointer prohibited",
                     "add a scalar offset to a pointer, never another pointer")
    elif any(p[0] in ("mvn", "map", "func") for p in ptrs):
        ck.problem(
            i,
            "ptr-alu",
            f"R{ins.dst} pointer arithmetic on {desc} prohibited"
            + (", null-check it first" if any(p[0] == "mvn" for p in ptrs) else ""),
            "check the lookup result for NULL before using it",
        )


def _check_mem(ck: Checker, i: int, ins: Insn, base: Val, reg: int, write: bool) -> None:
    size = SIZE_BYTES[ins.size]
    for p in sorted(base, key=repr):
        kind = p[0]
        if kind == "ctx":
            _check_ctx(ck, i, ins, p[1], reg, size, write)
        elif kind in ("fp", "fpc") and p[1] is not None:
            off = p[1] + ins.off
            if off < -contract.MAX_BPF_STACK or off + size > 0:
                ck.problem(
                    i,
                    "stack",
                    f"invalid {'write' if write else 'read'} to stack R{reg} off={off} "
                    f"size={size}",
                    f"keep locals within the {contract.MAX_BPF_STACK}-byte stack",
                )
            elif kind == "fp":
                sub = ck.subprog_of(i)
                ck.stack_depth[sub] = max(ck.stack_depth.get(sub, 0), -off)
        elif kind == "mvn":
            ck.problem(
                i,
                "null",
                f"R{reg} invalid mem access 'map_value_or_null': the result of "
                f"bpf_map_lookup_elem({p[1]}) may be NULL",
                "test the pointer for NULL before using it",
            )
        elif kind == "map":
            ck.problem(
                i,
                "map-ptr",
                f"R{reg} points to map {p[1]!r} itself, not to a value",
                "use bpf_map_lookup_elem() to get a value pointer",
            )
        elif kind == "mapval" and p[2] is not None:
            spec = ck.obj.maps.get(p[1])
            off = p[2] + ins.off
            if spec is not None and (off < 0 or off + size > spec.value_size):
                ck.problem(
                    i,
                    "map-range",
                    f"invalid access to map value, value_size={spec.value_size} "
                    f"off={off} size={size} ({p[1]})",
                    "stay inside the value",
                )
            elif spec is not None and write and spec.is_global and spec.flags & (1 << 7):
                ck.problem(
                    i,
                    "rodata-write",
                    f"write into map value is not allowed ({p[1]} is read-only)",
                    "do not write to const globals",
                )
        elif kind == "top" and write:
            ck.notes.append(
                f"insn {i}: cannot tell where R{reg} points; if it can be the context "
                "pointer the kernel will refuse this store"
            )


def _check_ctx(
    ck: Checker, i: int, ins: Insn, reg_off: int | None, reg: int, size: int, write: bool
) -> None:
    if write:
        field = ""
        if reg_off is not None:
            field = f" ({contract.seccomp_data_field(reg_off + ins.off, size)})"
        ck.problem(
            i,
            "ctx-store",
            f"store to the context{field}: struct seccomp_data is read-only",
            "copy the field into a local variable and change that",
        )
        return
    if reg_off is None:
        ck.problem(
            i,
            "ctx-var",
            f"variable ctx access through R{reg} disallowed",
            "read fields with constant offsets (ctx->args[2], not ctx->args[i])",
        )
        return
    if reg_off != 0:
        ck.problem(
            i,
            "ctx-modified",
            f"dereference of modified ctx ptr R{reg} off={reg_off} disallowed",
            "read the field through the original context pointer (ctx->field)",
        )
        return
    off = ins.off
    if ins.mode == BPF_MEMSX:
        ck.notes.append(
            f"insn {i}: sign-extending context load; the contract allows plain loads"
        )
    if off < 0 or off + size > contract.SECCOMP_DATA_SIZE:
        ck.problem(
            i,
            "ctx-range",
            f"invalid bpf_context access off={off} size={size}: outside the "
            f"{contract.SECCOMP_DATA_SIZE}-byte struct seccomp_data",
            "read only nr, arch, instruction_pointer or args[0..5]",
        )
    elif off % size:
        ck.problem(
            i,
            "ctx-align",
            f"misaligned context access off={off} size={size}",
            f"read {size}-byte values at offsets that are a multiple of {size}",
        )


def check_maps(ck: Checker) -> None:
    """The maps the program refers to: known, of a type seccomp filters may use,
    with sane sizes."""
    rings: set[str] = set()
    for r in ck.prog.relocs:
        if r.map not in ck.maps_used:
            ck.maps_used.append(r.map)
        spec = ck.obj.maps.get(r.map)
        if spec is None:
            ck.problem(r.insn, "map", f"relocation against unknown map {r.map!r}", "")
            continue
        if spec.is_global:
            continue
        if spec.type not in contract.MAP_TYPES:
            allowed = ", ".join(contract.MAP_TYPES.values())
            ck.problem(
                r.insn,
                "map-type",
                f"map {r.map!r} has type {spec.type}, which seccomp filters cannot use",
                f"use one of: {allowed}",
            )
        if spec.type == contract.BPF_MAP_TYPE_RINGBUF:
            if r.map not in rings:  # once, at its first use
                rings.add(r.map)
                _check_ringbuf(ck, r.insn, r.map, spec)
            continue
        if spec.max_entries == 0:
            ck.problem(r.insn, "map-size", f"map {r.map!r} has max_entries 0",
                         "set __uint(max_entries, N)")  # fmt: skip
        if spec.key_size == 0 or spec.value_size == 0:
            ck.problem(r.insn, "map-size", f"map {r.map!r} has a zero key or value size",
                         "declare __type(key, ...) and __type(value, ...)")  # fmt: skip
        if spec.type in (2, 6) and spec.key_size != 4:
            ck.problem(r.insn, "map-size",
                         f"array map {r.map!r} needs a 4-byte key, not {spec.key_size}",
                         "use __type(key, __u32)")  # fmt: skip



def _check_ringbuf(ck: Checker, insn: int, name: str, spec: Any) -> None:
    """The kernel's ringbuf_map_alloc(): no key or value, and a size in bytes
    that is a power of two and a multiple of the page size."""
    size = spec.max_entries
    if size < RINGBUF_PAGE or size & (size - 1):
        ck.problem(insn, "map-size",
                   f"ring buffer {name!r} has max_entries {size}: it must be a power of two "
                   f"and a multiple of the page size ({RINGBUF_PAGE})",
                   "set __uint(max_entries, 4096 * 2^k), e.g. 256 * 1024")  # fmt: skip
    if spec.key_size or spec.value_size:
        ck.problem(insn, "map-size",
                   f"ring buffer {name!r} has key size {spec.key_size} and value size "
                   f"{spec.value_size}; both must be 0",
                   "declare only __uint(type, ...) and __uint(max_entries, ...)")  # fmt: skip


#: The page size the ring buffer's size must be a multiple of (x86_64 and
#: aarch64 with 4 KiB pages; a 64 KiB-page arm64 kernel wants more).
RINGBUF_PAGE = 4096
