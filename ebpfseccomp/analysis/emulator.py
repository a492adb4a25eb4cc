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
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .. import insn as I
from ..contract import AUDIT_ARCH, MAX_BPF_STACK, Verdict
from ..errors import EmulationError
from .emumaps import EINVAL, ArrayMap, EmuMap, RingbufMap
from .translate import HELPER_IMPLS, M32, M64, _Translator, _Unsupported, bswap, sdiv, smod

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
#: programs of up to this many blocks are translated at once, bigger ones a
#: chunk of _CHUNK_BLOCKS at a time when execution first reaches it
_EAGER_BLOCKS = 4096
_CHUNK_BLOCKS = 512

EPERM = 1
EFAULT = 14


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
        # ring buffer records reserved in this run and not yet submitted: key -> (map, buffer)
        self._ring_open: dict[int, tuple[RingbufMap, bytearray]] = {}
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
        if self._ring_open:  # a run that raised left them: the kernel frees them on exit
            for m, buf in self._ring_open.values():
                m._discard(buf)
            self._ring_open.clear()
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
        back = -1  # the last block that jumped backwards (a loop's tail)
        steps: list[tuple[int, dict[int, int]]] = []
        trace = self.trace_insns
        jump_at = self._plan.jump_at
        while pc >= 0:
            n += lens[pc]
            if n > budget:
                raise self._budget_error(pc, n, back)
            f = funcs[pc] or self._translate_at(pc)
            if trace:
                before = list(R)
                at = pc
                pc = f(R)
                steps.append((at, {r: R[r] for r in range(11) if R[r] != before[r]}))
                continue
            t = f(R)
            if 0 <= t <= pc and jump_at[pc] >= 0:
                back = pc
            pc = t
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
        self._translator, self._ns = tr, ns
        self._plan = plan = tr.plan()
        self._funcs = plan.funcs
        self._lens = plan.lens
        if len(plan.leaders) <= _EAGER_BLOCKS:
            tr.translate(ns, plan, 0, len(plan.leaders))

    @property
    def source(self) -> str:
        """The Python source of the blocks translated so far."""
        return "\n".join(self._plan.sources)

    def _translate_at(self, pc: int) -> Callable[[list[int]], int]:
        """Translate the block at PC and the blocks after it (a chunk)."""
        plan = self._plan
        first = bisect.bisect_left(plan.leaders, pc)
        self._translator.translate(self._ns, plan, first, _CHUNK_BLOCKS)
        f = plan.funcs[pc]
        assert f is not None
        return f

    def _budget_error(self, pc: int, n: int, back: int) -> EmulationError:
        """The budget ran out at PC after N instructions; BACK is the block that
        last jumped backwards (-1: none): name that loop, with source lines."""
        budget = self.budget
        jump = self._plan.jump_at[back] if back >= 0 else -1
        if jump < 0:
            return EmulationError(
                f"instruction budget of {budget} exhausted at insn {pc}{self._near(pc)} "
                f"after {n - self._lens[pc]} instructions without taking a loop: the path "
                "is longer than the budget; raise it (--budget)"
            )
        ins = self.prog.insns[jump]
        target = jump + (ins.imm if ins.cls == I.BPF_JMP32 and ins.op == I.BPF_JA
                         else ins.off) + 1
        return EmulationError(
            f"instruction budget of {budget} exhausted in the loop from insn {jump}"
            f"{self._near(jump)} back to insn {target}{self._near(target)} (an endless "
            "loop? or raise --budget)"
        )

    def _near(self, pc: int) -> str:
        """' (file:line: text)' of the source line at or before PC, or ''."""
        lines = getattr(self.prog, "lines", None) or {}
        for j in range(pc, max(pc - 64, -1), -1):
            sl = lines.get(j)
            if sl is not None:
                text = getattr(sl, "text", "").strip()
                return f" ({sl.file}:{sl.line}{': ' + text if text else ''})"
        return ""

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

    # the ring buffer (TRACING tier): emumaps.RingbufMap

    def _ring_arg(self, r1: int, pc: int, name: str) -> RingbufMap:
        m = self._map_arg(r1, pc, name)
        if not isinstance(m, RingbufMap):
            raise self._hfail(pc, name, f"map {m.name} is not a ring buffer")
        return m

    def _h_ringbuf_output(self, R: list[int], pc: int) -> int:
        m = self._ring_arg(R[1], pc, "ringbuf_output")
        size = R[3] & M32
        data = self._read(R[2], size, pc, "ringbuf_output", "data")
        return m._output(data) if R[4] & ~3 == 0 else -EINVAL

    def _h_ringbuf_reserve(self, R: list[int], pc: int) -> int:
        m = self._ring_arg(R[1], pc, "ringbuf_reserve")
        if R[3]:
            return 0  # flags must be 0: NULL
        buf = m._reserve(R[2])
        if buf is None:
            return 0
        key = self._run_next
        self._run_next += 1
        self._rd[key] = self._wr[key] = buf
        self._run_addr[id(buf)] = key
        self._ring_open[key] = (m, buf)
        return _addr(key)

    def _ring_record(self, addr: int, pc: int, name: str) -> tuple[RingbufMap, bytearray]:
        rec = self._ring_open.pop(addr >> _SHIFT, None) if addr & _OFF == 0 else None
        if rec is None:
            raise self._hfail(pc, name, f"r1 ({addr:#x}) is not a record reserved by "
                              "bpf_ringbuf_reserve in this run (or it was already released)")
        return rec

    def _h_ringbuf_submit(self, R: list[int], pc: int) -> int:
        m, buf = self._ring_record(R[1], pc, "ringbuf_submit")
        m._submit(buf)
        return 0

    def _h_ringbuf_discard(self, R: list[int], pc: int) -> int:
        m, buf = self._ring_record(R[1], pc, "ringbuf_discard")
        m._discard(buf)
        return 0

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
