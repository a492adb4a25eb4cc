"""`ebpfseccomp emulate`: what a filter answers to a system call, without a kernel."""

from __future__ import annotations

import argparse
import errno as _errno
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..analysis.emulator import Emulator, Environment, Result, SyscallInput
from ..btf import decode
from ..contract import (
    ACTIONS_WITH_DATA,
    AUDIT_ARCH,
    MAX_ERRNO,
    SECCOMP_RET_DATA,
    Action,
    Verdict,
)
from ..elf import load_object
from ..errors import EbpfSeccompError, UsageError
from ..loader import encode, group_assignments, patch_global
from ..syscalls import ARCHES
from ..syscalls import name as name_of

M64 = (1 << 64) - 1

DESCRIPTION = """\
Run a filter in the emulator against one system call (or a sequence of them)
and print the action it returns: ALLOW, ERRNO(13), KILL_PROCESS, KILL_THREAD,
TRAP(5), LOG, USER_NOTIF, TRACE(7).

examples:
  ebpfseccomp emulate filter.o --syscall openat --arg 2=0x40
  ebpfseccomp emulate filter.o --syscall 59 --json
  ebpfseccomp emulate filter.o --syscall openat --arg 1=0x1000 --mem 0x1000=/etc/passwd
  ebpfseccomp emulate filter.o --syscall getpid --map allowed:39=0x7fff0000
  ebpfseccomp emulate filter.o --trace calls.jsonl

VALUE: decimal, 0x hex (0o, 0b too), negative numbers as 64-bit two's
complement.  --mem stores STRING NUL-terminated at ADDR in the caller's
memory (what probe_read_user_str reads); hex:0011ff stores raw bytes.
--map NAME:KEY=VALUE sets an entry before the first call, with the syntax of
`load` and `run`: KEY and VALUE are numbers (42, 0x2a, -1; little-endian,
sized to the map), syscall names (openat: its number on --arch), hex:BYTES
or str:TEXT (NUL-padded); for a global section (.data, .rodata, .bss) KEY is
the byte offset, e.g. --map .rodata:0=5.

--trace FILE.jsonl: one JSON object per line, e.g.
  {"syscall": "openat", "args": [0, 4096, 64], "arch": "x86_64", "pid": 10,
   "uid": 1000, "gid": 1000, "ip": 0, "mem": {"0x1000": "/tmp/x"}, "time": 5000}
Only "syscall" is needed; the command-line flags give the defaults.  Map and
global state carry over from line to line; each line prints a JSON result
with its "line" number, and a line the emulator cannot run prints
{"line": N, "error": ...} and the run goes on (exit status 1 at the end).

A line may say what the filter must answer: "expect": "ERRNO(EPERM)" (or
"ERRNO(1)", "ALLOW", "KILL_PROCESS", "TRAP(5)", ...).  The result then has
"ok": true or false, and with --check the run stops at the first mismatch
with exit status 1 and the line number: a trace file becomes a regression
test of a filter, e.g. in CI:
  ebpfseccomp emulate filter.o --trace cases.jsonl --check

The environment is deterministic: bpf_ktime_get_ns() returns --time (default
1000000000) and does not advance unless a trace line sets "time";
bpf_get_prandom_u32() is a PRNG seeded with --seed.  See docs/emulator.md.
"""


def parse_value(text: str, what: str = "value") -> int:
    """Decimal, 0x/0o/0b, or negative (as 64-bit two's complement)."""
    try:
        value = int(str(text).strip(), 0)
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: expected a number like 42, 0x2a or -1") from None
    if not -(1 << 63) <= value <= M64:
        raise UsageError(f"{what} {text!r} does not fit in 64 bits")
    return value & M64


def parse_arg(text: str) -> tuple[int, int]:
    idx, sep, value = text.partition("=")
    if not sep:
        raise UsageError(f"bad --arg {text!r}: expected I=VALUE with I from 0 to 5")
    try:
        i = int(idx)
    except ValueError:
        i = -1
    if not 0 <= i <= 5:
        raise UsageError(f"bad --arg {text!r}: the argument index must be 0..5")
    return i, parse_value(value, f"value of argument {i}")


def parse_bytes(text: str, what: str) -> bytes:
    hexpart = text[4:].replace(" ", "").replace(":", "")
    try:
        return bytes.fromhex(hexpart)
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: hex: must be followed by hex digits") from None


def mem_bytes(text: str, what: str = "memory") -> bytes:
    """STRING stored NUL-terminated; hex:BYTES raw."""
    if text.startswith("hex:"):
        return parse_bytes(text, what)
    return text.encode() + b"\0"


def parse_mem(text: str) -> tuple[int, bytes]:
    addr, sep, value = text.partition("=")
    if not sep:
        raise UsageError(f"bad --mem {text!r}: expected ADDR=STRING")
    return parse_value(addr, "--mem address"), mem_bytes(value, "--mem value")


def resolve_arch(text: str) -> str | int:
    low = text.lower()
    if low in AUDIT_ARCH:
        return low
    try:
        from ..syscalls import canonical_arch

        return canonical_arch(low)
    except UsageError:
        pass
    try:
        return int(text, 0)  # a raw AUDIT_ARCH value, e.g. to test a foreign arch
    except ValueError:
        raise UsageError(
            f"unknown architecture {text!r}",
            hint=f"choose one of: {', '.join(AUDIT_ARCH)}, or an AUDIT_ARCH number",
        ) from None


def resolve_syscall(value: Any, arch: str | int) -> int:
    if isinstance(value, bool):
        raise UsageError(f"bad syscall {value!r}")
    if isinstance(value, int):
        if value < 0 or value > 0xFFFFFFFF:
            raise UsageError(f"syscall number {value} is out of range")
        return value
    text = str(value).strip()
    try:
        return parse_value(text, "syscall number") & 0xFFFFFFFF
    except UsageError:
        pass
    if not isinstance(arch, str) or arch not in ("x86_64", "aarch64"):
        raise UsageError(
            f"cannot resolve syscall name {text!r} for architecture {arch!r}: give its number"
        )
    from ..syscalls import nr

    return nr(text, arch)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "emulate",
        help="run a filter against a system call in the emulator",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("obj", metavar="OBJ.o", help="the BPF object (ebpfseccomp build)")
    p.add_argument("--syscall", metavar="NAME|NR", help="the system call to emulate")
    p.add_argument("--program", metavar="NAME", help="the program to run, if there are several")
    p.add_argument("--arch", default="x86_64", metavar="ARCH",
                   help="x86_64 (default), i386 or aarch64: the seccomp_data arch value; "
                        "syscall names resolve for x86_64 and aarch64 (give i386 calls by number)")
    p.add_argument("--arg", action="append", default=[], metavar="I=VALUE",
                   help="system call argument I (0..5); repeatable")
    p.add_argument("--ip", default="0", metavar="X", help="instruction_pointer")
    p.add_argument("--pid", metavar="P", help="pid (and tgid unless --tgid) of the caller")
    p.add_argument("--tgid", metavar="T", help="tgid of the caller")
    p.add_argument("--uid", metavar="U", help="uid of the caller")
    p.add_argument("--gid", metavar="G", help="gid of the caller")
    p.add_argument("--mem", action="append", default=[], metavar="ADDR=STRING",
                   help="user memory for probe_read_user(_str); repeatable")
    p.add_argument("--time", metavar="NS", help="what bpf_ktime_get_ns() returns")
    p.add_argument("--seed", metavar="N", default="0", help="seed of bpf_get_prandom_u32()")
    p.add_argument("--not-dumpable", action="store_true",
                   help="the caller is not dumpable: user-memory reads return -EPERM")
    p.add_argument("--ptrace-reads", action="store_true",
                   help="the loader had CAP_SYS_PTRACE: read non-dumpable callers too")
    p.add_argument("--map", action="append", default=[], metavar="NAME:KEY=VALUE",
                   help="set a map entry before the first call; repeatable")
    p.add_argument("--budget", metavar="N", help="instructions per call before giving up")
    p.add_argument("--trace", metavar="FILE.jsonl",
                   help="run a sequence of calls, one JSON object per line")
    p.add_argument("--trace-insns", action="store_true",
                   help="print every instruction executed and the registers it changed")
    p.add_argument("--dump-maps", action="store_true",
                   help="after the run, print every map's entries (arrays: the non-zero ones), "
                        "decoded with the map's BTF types where the object has them")
    p.add_argument("--check", action="store_true",
                   help="with --trace: exit 1 at the first line whose \"expect\" differs")
    p.add_argument("--json", action="store_true", help="print the result as a JSON object")
    p.set_defaults(func=run)


def syscall_name(inp: SyscallInput) -> str | None:
    if not isinstance(inp.arch, str) or inp.arch not in ARCHES:
        return None
    return name_of(inp.nr, inp.arch)


def result_json(inp: SyscallInput, res: Result) -> dict[str, Any]:
    v = res.verdict
    return {
        "syscall": inp.nr,
        "name": syscall_name(inp),
        "action": v.action.name,
        "data": v.data,
        "value": v.value,
        "verdict": str(v),
        "errno": v.errno,
        "insns": res.insns_executed,
        "helpers": [{"insn": c.insn, "name": c.name, "ret": c.ret} for c in res.helper_calls],
    }


def _u32(text: str, what: str) -> int:
    """pid, tgid, uid and gid are 32-bit: the helpers pack two of them in 64 bits."""
    value = parse_value(text, what)
    if not 0 <= value <= 0xFFFFFFFF:
        raise UsageError(f"{what} {text}: out of range (0..4294967295)")
    return value


def _env(args: argparse.Namespace) -> Environment:
    env = Environment()
    if args.time is not None:
        env.time_ns = parse_value(args.time, "--time")
    env.seed = parse_value(args.seed, "--seed")
    if args.pid is not None:
        env.pid = _u32(args.pid, "--pid")
    if args.tgid is not None:
        env.tgid = _u32(args.tgid, "--tgid")
    if args.uid is not None:
        env.uid = _u32(args.uid, "--uid")
    if args.gid is not None:
        env.gid = _u32(args.gid, "--gid")
    if args.budget is not None:
        env.budget = parse_value(args.budget, "--budget")
    env.dumpable = not args.not_dumpable
    env.ptrace_reads = args.ptrace_reads
    env.memory = dict(parse_mem(m) for m in args.mem)
    return env


def run(args: argparse.Namespace) -> int:
    if args.trace is None and args.syscall is None:
        raise UsageError("give --syscall NAME|NR (or --trace FILE.jsonl)")
    if args.trace is not None and args.syscall is not None:
        raise UsageError("--syscall and --trace exclude each other")
    arch = resolve_arch(args.arch)
    call_args = [0] * 6
    for text in args.arg:
        i, value = parse_arg(text)
        call_args[i] = value
    ip = parse_value(args.ip, "--ip")
    env = _env(args)
    # one --map syntax and one parser for emulate, load and run (loader.py)
    map_sets = group_assignments(args.map)
    names_arch = arch if isinstance(arch, str) and arch in ARCHES else None

    obj = load_object(args.obj)
    if args.program is None and len(obj.programs) > 1 and args.trace is None and not args.map:
        return _run_each_program(args, obj, env, arch, call_args, ip)
    emu = Emulator(obj, args.program, env, trace_insns=args.trace_insns)
    for name, content in map_sets.items():
        m = emu.maps.get(name)
        if m is None:
            raise UsageError(
                f"--map {name}: the program has no map {name!r} "
                f"(maps: {', '.join(emu.maps) or 'none'})"
            )
        if m.is_global:
            current = m.lookup(0) or bytes(m.value_size)
            m.update(0, patch_global(name, current, content))
            continue
        for key, value in content.items():
            m.update(encode(key, m.key_size, what=f"key of map '{name}'", arch=names_arch),
                     encode(value, m.value_size, what=f"value of map '{name}'",
                            arch=names_arch))

    if args.trace is None:
        inp = SyscallInput(resolve_syscall(args.syscall, arch), arch, tuple(call_args), ip)
        res = emu.run(inp)
        if args.json:
            out = result_json(inp, res)
            if args.dump_maps:
                out["maps"] = dump_maps(emu)
            if args.trace_insns:
                out["steps"] = [{"insn": i, "regs": {f"r{r}": v for r, v in ch.items()}}
                                for i, ch in res.steps]
            print(json.dumps(out))
        else:
            if args.trace_insns:
                print_steps(emu, res)
            print(res.verdict)
            if args.dump_maps:
                print_maps(dump_maps(emu))
        return 0

    if args.check and args.trace is None:
        raise UsageError("--check needs --trace FILE.jsonl (lines with \"expect\")")
    status = 0
    for lineno, inp, expect in _trace_inputs(args.trace, arch, call_args, ip):
        try:
            res = emu.run(inp)
        except EbpfSeccompError as exc:
            print(json.dumps({"line": lineno, "syscall": inp.nr, "name": syscall_name(inp),
                              "error": exc.message}), flush=True)
            if args.check:
                raise type(exc)(f"line {lineno}: {exc.message}", path=args.trace,
                                hint=exc.hint) from None
            status = 1
            continue
        record = {"line": lineno, **result_json(inp, res)}
        if expect is not None:
            record["expect"] = expect
            record["ok"] = verdict_matches(res.verdict, expect)
        print(json.dumps(record), flush=False)
        if args.check and record.get("ok") is False:
            sys.stdout.flush()
            print(f"ebpfseccomp emulate: {args.trace}:{lineno}: expected {expect}, the filter "
                  f"answered {res.verdict}", file=sys.stderr)
            return 1
    if args.dump_maps:
        maps = dump_maps(emu)
        if args.json:
            print(json.dumps({"maps": maps}))
        else:
            print_maps(maps)
    sys.stdout.flush()
    return status


def _run_each_program(args: argparse.Namespace, obj: Any, env: Environment,
                      arch: str | int, call_args: list[int], ip: int) -> int:
    """An object with several programs and no --program: the call through each."""
    inp = SyscallInput(resolve_syscall(args.syscall, arch), arch, tuple(call_args), ip)
    results = []
    for prog in obj.programs:
        res = Emulator(obj, prog.name, env).run(inp)
        results.append({"program": prog.name, **result_json(inp, res)})
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['program']}: {r['verdict']}")
    return 0


def _number(raw: bytes) -> int | str:
    """A key or value: an integer if it is 1, 2, 4 or 8 bytes, else hex."""
    if len(raw) in (1, 2, 4, 8):
        return int.from_bytes(raw, "little")
    return "hex:" + raw.hex()


def dump_maps(emu: Emulator) -> dict[str, Any]:
    """Every map's entries after the run; arrays list only non-zero values.
    Keys and values as numbers (1, 2, 4, 8 bytes) or hex; where the object
    has BTF for the map also "key_btf"/"value_btf": decoded with its types
    (structs as objects, char arrays as text).  A global section: its bytes,
    and "vars" (each variable's value) where BTF describes it."""
    out: dict[str, Any] = {}
    for name, m in emu.maps.items():
        if name.startswith(".rodata.init."):
            continue
        spec = m.spec
        btf = getattr(spec, "btf", None)
        if m.is_global:
            raw = m.lookup(0) or b""
            out[name] = {"bytes": raw.hex()}
            if btf is not None and spec.value_type:
                out[name]["vars"] = decode(btf, spec.value_type, raw)
            continue
        entries = []
        for k, v in m.items():
            if m.__class__.__name__.startswith("Array") and not any(v):
                continue
            entry: dict[str, Any] = {"key": _number(k), "value": _number(v)}
            if btf is not None and spec.key_type:
                entry["key_btf"] = decode(btf, spec.key_type, k)
            if btf is not None and spec.value_type:
                entry["value_btf"] = decode(btf, spec.value_type, v)
            entries.append(entry)
        out[name] = {"entries": entries}
    return out


def print_steps(emu: Emulator, res: Result) -> None:
    """seccomp-tools emu style: each instruction as disasm shows it, and what it set."""
    from ..analysis.disasm import _Disassembler

    dis = _Disassembler(emu.obj, emu.prog)
    insns = emu.prog.insns
    width = len(str(len(insns)))
    for i, changed in res.steps:
        text = dis.text(i, insns[i])
        regs = "  ".join(f"r{r}={v:#x}" for r, v in changed.items())
        print(f"{i:>{width}}: {text:<48} {('; ' + regs) if regs else ''}".rstrip())


def print_maps(maps: dict[str, Any]) -> None:
    def show(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    for name, data in maps.items():
        if "bytes" in data:
            print(f"{name}: {data['bytes'] or '(empty)'}")
            for var, value in data.get("vars", {}).items():
                print(f"  {var} = {show(value)}")
            continue
        print(f"{name}: {len(data['entries'])} entr{'y' if len(data['entries']) == 1 else 'ies'}")
        for e in data["entries"]:
            print(f"  {show(e.get('key_btf', e['key']))} -> {show(e.get('value_btf', e['value']))}")


def parse_expect(text: str) -> str:
    """Normalise an expected action: ALLOW, ERRNO(EPERM) -> ERRNO(1), TRAP(5) ...;
    UsageError naming the problem for anything else."""
    t = text.strip().upper().replace(" ", "")
    m = re.fullmatch(r"([A-Z_]*)(?:\(([^()]*)\))?", t)
    if m is None:
        raise UsageError(f"malformed action {text!r} in \"expect\"",
                         hint="write an action name, with its data in parentheses: "
                              "ALLOW, ERRNO(EPERM), TRAP(5)")
    head, data = m.group(1), m.group(2)
    if head.startswith("SECCOMP_RET_"):
        head = head[len("SECCOMP_RET_"):]
    if head == "KILL":
        head = "KILL_THREAD"
    if head not in Action.__members__:
        raise UsageError(f"unknown action {text!r} in \"expect\"",
                         hint=f"one of {', '.join(Action.__members__)}, e.g. ERRNO(EPERM)")
    act = Action[head]
    if data is None:
        if act in ACTIONS_WITH_DATA:
            return f"{act.name}(0)"
        return act.name
    if act not in ACTIONS_WITH_DATA:
        raise UsageError(f"{act.name} carries no data: {text!r}",
                         hint=f"write {act.name} alone")
    if re.fullmatch(r"[0-9]+|0X[0-9A-F]+", data):
        code = int(data, 0)
    elif re.fullmatch(r"E[A-Z0-9]+", data) and isinstance(getattr(_errno, data, None), int):
        code = getattr(_errno, data)
    else:
        raise UsageError(f"{data!r} in \"expect\" {text!r} is neither an errno name nor a "
                         "number", hint="e.g. ERRNO(EPERM), ERRNO(13), TRAP(0x10)")
    if code > SECCOMP_RET_DATA:
        raise UsageError(f"{act.name} data {code} in \"expect\" does not fit the 16 bits "
                         f"of SECCOMP_RET_DATA (0..{SECCOMP_RET_DATA})",
                         hint="a filter can never return it: fix the expectation")
    if act == Action.ERRNO:
        code = min(code, MAX_ERRNO)
    return f"{act.name}({code})"


def verdict_matches(verdict: Verdict, expect: str) -> bool:
    return str(verdict) == expect


_TRACE_KEYS = {"syscall", "args", "arch", "pid", "tgid", "uid", "gid", "ip", "mem", "time",
               "expect"}


def _int_field(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UsageError(f"{what} must be an integer, got {value!r}")
    return parse_value(value, what) if isinstance(value, str) else parse_value(str(value), what)


def _trace_inputs(
    path: str, arch: str | int, call_args: list[int], ip: int
) -> Iterator[tuple[int, SyscallInput, str | None]]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise EbpfSeccompError(f"cannot read the trace: {exc.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise EbpfSeccompError("the trace is not UTF-8 text", path=path) from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            inp = _trace_line(line, arch, call_args, ip)
            rec = json.loads(line)
            expect = None
            if "expect" in rec:
                if not isinstance(rec["expect"], str):
                    raise EbpfSeccompError("expect must be a string like \"ERRNO(EPERM)\"")
                expect = parse_expect(rec["expect"])
        except EbpfSeccompError as exc:
            raise EbpfSeccompError(f"line {lineno}: {exc.message}", path=path,
                                   hint=exc.hint) from None
        yield lineno, inp, expect


def _trace_line(line: str, arch: str | int, call_args: list[int], ip: int) -> SyscallInput:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EbpfSeccompError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(rec, dict):
        raise EbpfSeccompError("expected a JSON object like {\"syscall\": \"openat\"}")
    unknown = sorted(set(rec) - _TRACE_KEYS)
    if unknown:
        raise EbpfSeccompError(
            f"unknown key {unknown[0]!r} (keys: {', '.join(sorted(_TRACE_KEYS))})"
        )
    if "syscall" not in rec:
        raise EbpfSeccompError("missing \"syscall\" (a name or a number)")
    if "arch" in rec:
        if not isinstance(rec["arch"], str):
            raise EbpfSeccompError(f"arch must be a string, got {rec['arch']!r}")
        arch = resolve_arch(rec["arch"])
    args = list(call_args)
    if "args" in rec:
        vals = rec["args"]
        if not isinstance(vals, list) or len(vals) > 6:
            raise EbpfSeccompError("args must be a list of at most 6 integers")
        args = [_int_field(v, f"args[{i}]") for i, v in enumerate(vals)]
        args += [0] * (6 - len(args))
    mem: dict[int, bytes] | None = None
    if "mem" in rec:
        if not isinstance(rec["mem"], dict):
            raise EbpfSeccompError("mem must be an object {\"0xADDR\": \"string\"}")
        mem = {}
        for addr, value in rec["mem"].items():
            if not isinstance(value, str):
                raise EbpfSeccompError(f"mem[{addr}] must be a string")
            mem[parse_value(addr, "mem address")] = mem_bytes(value)

    def opt(key: str) -> int | None:
        return _int_field(rec[key], key) if key in rec else None

    return SyscallInput(
        nr=resolve_syscall(rec["syscall"], arch),
        arch=arch,
        args=tuple(args),
        ip=ip if "ip" not in rec else _int_field(rec["ip"], "ip"),
        pid=opt("pid"),
        tgid=opt("tgid"),
        uid=opt("uid"),
        gid=opt("gid"),
        memory=mem,
        time_ns=opt("time"),
    )
