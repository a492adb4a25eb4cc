"""OCI / Docker seccomp profiles: parsing and validation, with JSON paths.

`parse(text)` turns the JSON of a runtime's profile (the OCI runtime-spec
`linux.seccomp` object, or Docker's superset with `archMap`, `names`,
`includes`/`excludes`) into a `Profile`.  Every fault is a `PolicyError`
naming the JSON path of the offending value (`syscalls[12].args[0].op`), so
the CLI prints one line and exits 1; nothing here ever returns a profile that
is only partly understood.

`select(profile, arch=..., caps=..., kernel=...)` then does what a runtime
does before it hands the rules to libseccomp: choose the architectures (the
native one and its sub-architectures from `archMap`) and keep the rules whose
`includes`/`excludes` match the container's capabilities, architecture and
kernel.  The result, a `Selection`, is what `semantics.compile` turns into
per-architecture decisions.
"""

from __future__ import annotations

import errno as errno_module
import json
from dataclasses import dataclass, field

from ..errors import EbpfSeccompError
from ._known_names import KNOWN_NAMES


class PolicyError(EbpfSeccompError):
    """A profile that cannot be converted faithfully.  Exit status 1.

    `path` is the JSON path of the fault (`syscalls[3].action`), or the file.
    """


# --- vocabulary --------------------------------------------------------------

#: SCMP_ACT_* name -> seccomp return value without data.
ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": 0x00000000,  # libseccomp: SCMP_ACT_KILL == SCMP_ACT_KILL_THREAD
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
    "SCMP_ACT_NOTIFY": 0x7FC00000,
}

#: SCMP_CMP_* name -> libseccomp's enum scmp_compare value.
OPS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

#: SCMP_ARCH_* name -> (AUDIT_ARCH value, Go's GOARCH spelling used in includes/excludes).
ARCHES: dict[str, tuple[int, str]] = {
    "SCMP_ARCH_X86": (0x40000003, "386"),
    "SCMP_ARCH_X86_64": (0xC000003E, "amd64"),
    "SCMP_ARCH_X32": (0x4000003E, "x32"),
    "SCMP_ARCH_ARM": (0x40000028, "arm"),
    "SCMP_ARCH_AARCH64": (0xC00000B7, "arm64"),
    "SCMP_ARCH_MIPS": (0x00000008, "mips"),
    "SCMP_ARCH_MIPS64": (0x80000008, "mips64"),
    "SCMP_ARCH_MIPS64N32": (0xA0000008, "mips64n32"),
    "SCMP_ARCH_MIPSEL": (0x40000008, "mipsle"),
    "SCMP_ARCH_MIPSEL64": (0xC0000008, "mips64le"),
    "SCMP_ARCH_MIPSEL64N32": (0xE0000008, "mips64len32"),
    "SCMP_ARCH_PPC": (0x00000014, "ppc"),
    "SCMP_ARCH_PPC64": (0x80000015, "ppc64"),
    "SCMP_ARCH_PPC64LE": (0xC0000015, "ppc64le"),
    "SCMP_ARCH_S390": (0x00000016, "s390"),
    "SCMP_ARCH_S390X": (0x80000016, "s390x"),
    "SCMP_ARCH_PARISC": (0x0000000F, "parisc"),
    "SCMP_ARCH_PARISC64": (0x8000000F, "parisc64"),
    "SCMP_ARCH_RISCV64": (0xC00000F3, "riscv64"),
}

#: Architecture spellings accepted in includes/excludes `arches` (Docker uses
#: Go's names, e.g. amd64; "x86" appears in real profiles for 386).
GO_ARCHES = frozenset({v[1] for v in ARCHES.values()} | {"x86", "x86_64", "aarch64"})

#: The architectures `convert` can build an eBPF filter for: ebpfseccomp's
#: name -> SCMP_ARCH_* of the native ABI.
NATIVE: dict[str, str] = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}

#: The other ABIs a 64-bit kernel of a native architecture runs (x86_64:
#: IA32_EMULATION and X86_X32_ABI; arm64: COMPAT): the sub-architectures a
#: filter for that native ABI converts too.
SUB_ARCHES: dict[str, tuple[str, ...]] = {
    "SCMP_ARCH_X86_64": ("SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "SCMP_ARCH_AARCH64": ("SCMP_ARCH_ARM",),
}

#: Linux capabilities (include/uapi/linux/capability.h, 6.12).
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

#: The capabilities Docker gives a container by default (moby's
#: oci/caps/defaults.go); `--caps` without a value list means these.
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

#: seccomp(2) filter flags a profile may ask for -> ebpfseccomp.attach flag names.
FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": "tsync",
    "SECCOMP_FILTER_FLAG_LOG": "log",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": "spec-allow",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": "wait-killable-recv",
}

EPERM = 1
U64 = (1 << 64) - 1


# --- the model ---------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    index: int
    value: int
    value_two: int
    op: str  # SCMP_CMP_*
    path: str


@dataclass(frozen=True)
class Rule:
    """One entry of `syscalls[]`."""

    index: int  # position in syscalls[]
    names: tuple[str, ...]
    action: int  # full seccomp return value (data included)
    action_name: str
    args: tuple[Arg, ...]
    includes: dict
    excludes: dict
    comment: str

    @property
    def path(self) -> str:
        return f"syscalls[{self.index}]"


@dataclass(frozen=True)
class Profile:
    default_action: int
    default_action_name: str
    architectures: tuple[str, ...]  # SCMP_ARCH_* (flat OCI list)
    arch_map: dict[str, tuple[str, ...]]  # native SCMP_ARCH_* -> sub-architectures
    rules: tuple[Rule, ...]
    flags: tuple[str, ...]
    source: str = "<profile>"


@dataclass
class Selection:
    """A profile resolved for one container: arches, capabilities, kernel."""

    profile: Profile
    native: str  # SCMP_ARCH_* of the filter's native ABI
    arches: list[str]  # SCMP_ARCH_* in the filter, native first, then sub-architectures
    dropped_arches: list[str]  # wanted by the profile, not an ABI of the native one
    rules: list[Rule]  # in profile order, includes/excludes applied
    caps: tuple[str, ...]
    kernel: tuple[int, ...] | None
    skipped: list[str] = field(default_factory=list)  # why some rules were left out


# --- parsing -----------------------------------------------------------------


def _fail(path: str, message: str, hint: str | None = None) -> PolicyError:
    return PolicyError(message, path=path, hint=hint)


def _typename(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")


def _expect(value: object, kind: type | tuple[type, ...], path: str, what: str) -> None:
    if isinstance(value, bool) and kind is not bool and bool not in (
        kind if isinstance(kind, tuple) else (kind,)
    ):
        raise _fail(path, f"expected {what}, found {_typename(value)}")
    if not isinstance(value, kind):
        raise _fail(path, f"expected {what}, found {_typename(value)}")


def _known_keys(obj: dict, allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise _fail(f"{path}.{key}" if path else key, "unknown field",
                        hint="allowed: " + ", ".join(sorted(allowed)))


def _u64(value: object, path: str) -> int:
    _expect(value, int, path, "an unsigned 64-bit integer")
    assert isinstance(value, int)
    if not 0 <= value <= U64:
        raise _fail(path, f"{value} is not an unsigned 64-bit integer")
    return value


def _errno(value: object, path: str) -> int:
    _expect(value, int, path, "an errno number")
    assert isinstance(value, int)
    if not 0 <= value <= 0xFFFF:
        raise _fail(path, f"{value} does not fit the 16 data bits of a seccomp action")
    return value


def _errno_of(obj: dict, num_key: str, name_key: str, prefix: str) -> int | None:
    """errnoRet (a number) wins; Docker's errno name (\"EPERM\") is used without it."""
    if obj.get(num_key) is not None:
        return _errno(obj[num_key], prefix + num_key)
    name = obj.get(name_key)
    if name in (None, ""):
        return None
    _expect(name, str, prefix + name_key, "an errno name such as \"EPERM\"")
    value = getattr(errno_module, name, None) if name.startswith("E") else None
    if not isinstance(value, int):
        raise _fail(prefix + name_key, f"unknown errno name {name!r}")
    return value


def _action(name: object, errno_ret: int | None, path: str) -> tuple[int, str]:
    _expect(name, str, path, "an action name (SCMP_ACT_*)")
    assert isinstance(name, str)
    if name not in ACTIONS:
        raise _fail(path, f"unknown action {name!r}", hint="one of " + ", ".join(ACTIONS))
    base = ACTIONS[name]
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        # runc/crun: an ERRNO or TRACE without errnoRet means EPERM.
        return base | (EPERM if errno_ret is None else errno_ret), name
    return base, name


def _str_list(value: object, path: str, what: str) -> list[str]:
    _expect(value, list, path, f"an array of {what}")
    assert isinstance(value, list)
    for i, item in enumerate(value):
        _expect(item, str, f"{path}[{i}]", what)
    return list(value)


def _arch(name: object, path: str) -> str:
    _expect(name, str, path, "an architecture name (SCMP_ARCH_*)")
    assert isinstance(name, str)
    if name not in ARCHES:
        raise _fail(path, f"unknown architecture {name!r}",
                    hint="one of " + ", ".join(ARCHES))
    return name


def _arch_map(value: object) -> dict[str, tuple[str, ...]]:
    """Docker's archMap: native SCMP_ARCH_* -> its sub-architectures."""
    arch_map: dict[str, tuple[str, ...]] = {}
    if value is None:
        return arch_map
    _expect(value, list, "archMap", "an array")
    assert isinstance(value, list)
    where: dict[str, str] = {}
    for i, entry in enumerate(value):
        p = f"archMap[{i}]"
        _expect(entry, dict, p, "an object with architecture and subArchitectures")
        _known_keys(entry, {"architecture", "subArchitectures"}, p)
        if "architecture" not in entry:
            raise _fail(f"{p}.architecture", "missing")
        arch = _arch(entry["architecture"], f"{p}.architecture")
        if arch in where:
            raise _fail(f"{p}.architecture", f"{arch} is mapped twice (also at {where[arch]})",
                        hint="give each architecture one entry")
        where[arch] = p
        subs = entry.get("subArchitectures") or []
        subs = _str_list(subs, f"{p}.subArchitectures", "architecture names")
        out: list[str] = []
        for j, name in enumerate(subs):
            sub = _arch(name, f"{p}.subArchitectures[{j}]")
            runs = SUB_ARCHES.get(arch)
            if runs is not None and sub not in runs:
                # a filter for ARCH would silently leave SUB out: refuse
                raise _fail(f"{p}.subArchitectures[{j}]",
                            f"{sub} is not an ABI a {arch} kernel runs",
                            hint=f"{arch}'s sub-architectures: " + ", ".join(runs))
            if sub not in out:
                out.append(sub)
        arch_map[arch] = tuple(out)
    return arch_map


def _filter(obj: object, path: str) -> dict:
    if obj is None:
        return {}
    _expect(obj, dict, path, "an object")
    assert isinstance(obj, dict)
    _known_keys(obj, {"caps", "arches", "minKernel"}, path)
    out: dict = {}
    if obj.get("caps") is not None:
        caps = _str_list(obj["caps"], f"{path}.caps", "capability names")
        for i, cap in enumerate(caps):
            if cap not in CAPABILITIES:
                raise _fail(f"{path}.caps[{i}]", f"unknown capability {cap!r}")
        if caps:
            out["caps"] = tuple(caps)
    if obj.get("arches") is not None:
        arches = _str_list(obj["arches"], f"{path}.arches", "architecture names")
        for i, a in enumerate(arches):
            if a not in GO_ARCHES:
                raise _fail(f"{path}.arches[{i}]", f"unknown architecture {a!r}",
                            hint="Go's names: " + ", ".join(sorted(GO_ARCHES)))
        if arches:
            out["arches"] = tuple(arches)
    if obj.get("minKernel") not in (None, ""):
        out["minKernel"] = parse_kernel(obj["minKernel"], f"{path}.minKernel")
    return out


def parse_kernel(text: object, path: str = "--kernel-version") -> tuple[int, ...]:
    """'5.8' or '6.12.3-amd64' -> (5, 8) / (6, 12, 3)."""
    _expect(text, str, path, "a kernel version such as \"5.8\"")
    assert isinstance(text, str)
    parts = text.split("-", 1)[0].split(".")
    try:
        nums = tuple(int(p) for p in parts[:3])
    except ValueError:
        raise _fail(path, f"{text!r} is not a kernel version (MAJOR.MINOR[.PATCH])") from None
    if len(nums) < 2 or any(n < 0 for n in nums):
        raise _fail(path, f"{text!r} is not a kernel version (MAJOR.MINOR[.PATCH])")
    return nums


def _args(value: object, path: str) -> tuple[Arg, ...]:
    if value is None:
        return ()
    _expect(value, list, path, "an array of argument comparisons")
    assert isinstance(value, list)
    out: list[Arg] = []
    seen: dict[int, str] = {}
    for i, item in enumerate(value):
        p = f"{path}[{i}]"
        _expect(item, dict, p, "an object with index, value, op")
        _known_keys(item, {"index", "value", "valueTwo", "op"}, p)
        for key in ("index", "op"):
            if key not in item:
                raise _fail(f"{p}.{key}", "missing")
        index = item["index"]
        _expect(index, int, f"{p}.index", "an argument index 0-5")
        if not 0 <= index <= 5:
            raise _fail(f"{p}.index", f"argument index {index} is not 0-5",
                        hint="seccomp sees six arguments")
        op = item["op"]
        _expect(op, str, f"{p}.op", "a comparison (SCMP_CMP_*)")
        if op not in OPS:
            raise _fail(f"{p}.op", f"unknown comparison {op!r}", hint="one of " + ", ".join(OPS))
        if index in seen:
            # libseccomp's db_col_rule_add refuses a second comparison of the
            # same argument in one rule (-EINVAL): the runtime would fail.
            raise _fail(p, f"argument {index} is compared twice in one rule "
                        f"(also at {seen[index]}); libseccomp refuses such a rule",
                        hint="split it into two syscalls[] entries")
        seen[index] = p
        out.append(Arg(index=index, value=_u64(item.get("value", 0), f"{p}.value"),
                       value_two=_u64(item.get("valueTwo", 0), f"{p}.valueTwo"),
                       op=op, path=p))
    return tuple(out)


def _rule(item: object, i: int) -> Rule:
    path = f"syscalls[{i}]"
    _expect(item, dict, path, "an object")
    assert isinstance(item, dict)
    _known_keys(item, {"names", "name", "action", "errnoRet", "errno", "args", "includes",
                       "excludes", "comment"}, path)
    if "names" in item and item["names"] is not None:
        names = _str_list(item["names"], f"{path}.names", "syscall names")
    elif "name" in item:
        _expect(item["name"], str, f"{path}.name", "a syscall name")
        names = [item["name"]]
    else:
        raise _fail(f"{path}.names", "missing", hint="a rule needs the syscalls it applies to")
    if not names:
        raise _fail(f"{path}.names", "empty: the rule names no syscall")
    for j, n in enumerate(names):
        if n not in KNOWN_NAMES:
            raise _fail(f"{path}.names[{j}]", f"{n!r} is not a syscall on any architecture "
                        "Linux 6.12 supports")
    if "action" not in item:
        raise _fail(f"{path}.action", "missing")
    errno_ret = _errno_of(item, "errnoRet", "errno", path + ".")
    action, action_name = _action(item["action"], errno_ret, f"{path}.action")
    comment = item.get("comment") or ""
    _expect(comment, str, f"{path}.comment", "a string")
    return Rule(index=i, names=tuple(names), action=action, action_name=action_name,
                args=_args(item.get("args"), f"{path}.args"),
                includes=_filter(item.get("includes"), f"{path}.includes"),
                excludes=_filter(item.get("excludes"), f"{path}.excludes"),
                comment=comment)


def parse(text: str | bytes, source: str = "<profile>") -> Profile:
    """Parse and validate a profile; PolicyError with the JSON path of any fault."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                          path=source) from None
    except UnicodeDecodeError:
        raise PolicyError("not JSON: not UTF-8 text", path=source) from None
    if not isinstance(data, dict):
        raise PolicyError(f"expected a profile object at the top, found {_typename(data)}",
                          path=source)
    # A whole OCI config.json: take linux.seccomp.
    if "defaultAction" not in data and isinstance(data.get("linux"), dict) \
            and isinstance(data["linux"].get("seccomp"), dict):
        data = data["linux"]["seccomp"]
    _known_keys(data, {"defaultAction", "defaultErrnoRet", "defaultErrno", "architectures",
                       "archMap", "syscalls", "flags", "listenerPath", "listenerMetadata"},
                "")
    if "defaultAction" not in data:
        raise _fail("defaultAction", "missing")
    default_errno = _errno_of(data, "defaultErrnoRet", "defaultErrno", "")
    default, default_name = _action(data["defaultAction"], default_errno, "defaultAction")

    architectures: list[str] = []
    if data.get("architectures") is not None:
        for i, a in enumerate(_str_list(data["architectures"], "architectures",
                                        "architecture names")):
            architectures.append(_arch(a, f"architectures[{i}]"))
    arch_map = _arch_map(data.get("archMap"))
    if arch_map and architectures:
        # moby refuses the same profile: which list would apply?
        raise _fail("archMap", "both architectures and archMap are given",
                    hint="use either architectures (OCI) or archMap (Docker)")
    rules: list[Rule] = []
    if data.get("syscalls") is not None:
        _expect(data["syscalls"], list, "syscalls", "an array of rules")
        rules = [_rule(item, i) for i, item in enumerate(data["syscalls"])]
    flags: list[str] = []
    if data.get("flags") is not None:
        for i, f in enumerate(_str_list(data["flags"], "flags", "filter flags")):
            if f not in FLAGS and f != "SECCOMP_FILTER_FLAG_NEW_LISTENER":
                raise _fail(f"flags[{i}]", f"unknown or unsupported flag {f!r}",
                            hint="one of " + ", ".join(FLAGS))
            flags.append(f)
    return Profile(default_action=default, default_action_name=default_name,
                   architectures=tuple(architectures), arch_map=arch_map, rules=tuple(rules),
                   flags=tuple(flags), source=source)


def load(path: str) -> Profile:
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise PolicyError(f"cannot read the profile: {exc.strerror}", path=path) from None
    return parse(text, source=path)


# --- selection for one container --------------------------------------------


def parse_caps(text: str | None) -> tuple[str, ...]:
    """--caps: None -> Docker's defaults; "" or "none" -> none; "all"; else a list."""
    if text is None:
        return DEFAULT_CAPS
    if text.strip().lower() in ("", "none"):
        return ()
    if text.strip().lower() == "all":
        return CAPABILITIES
    out = []
    for raw in text.split(","):
        cap = raw.strip().upper()
        if not cap.startswith("CAP_"):
            cap = "CAP_" + cap
        if cap not in CAPABILITIES:
            raise PolicyError(f"unknown capability {raw.strip()!r}", path="--caps",
                              hint="e.g. CAP_SYS_ADMIN,CAP_NET_ADMIN, or all, or none")
        out.append(cap)
    return tuple(out)


def _go_arch(scmp: str) -> set[str]:
    go = ARCHES[scmp][1]
    return {go, {"386": "x86", "amd64": "x86_64", "arm64": "aarch64"}.get(go, go)}


def select(profile: Profile, arch: str = "x86_64", caps: tuple[str, ...] = DEFAULT_CAPS,
           kernel: tuple[int, ...] | None = None) -> Selection:
    """Resolve archMap and includes/excludes as Docker and containers/common do."""
    if arch not in NATIVE:
        raise PolicyError(f"cannot build an eBPF filter for {arch!r}", path="--arch",
                          hint="one of " + ", ".join(NATIVE))
    native = NATIVE[arch]
    if profile.arch_map:
        wanted = [native, *profile.arch_map.get(native, ())]
    elif profile.architectures:
        wanted = list(profile.architectures)
    else:
        wanted = [native]
    # The native ABI (always there: libseccomp's seccomp_init adds it) and the
    # sub-architectures its kernel runs are converted; other ABIs the profile
    # names (another machine's) are reported and left out of both filters:
    # their calls get the bad-architecture action (kill), never more than the
    # profile allows, and a kernel of this architecture never presents them.
    arches = [native]
    for a in wanted:
        if a in SUB_ARCHES[native] and a not in arches:
            arches.append(a)
    dropped = [a for a in dict.fromkeys(wanted) if a not in arches]
    sel = Selection(profile=profile, native=native, arches=arches, dropped_arches=dropped,
                    rules=[], caps=tuple(caps), kernel=kernel)
    here = _go_arch(native)
    for rule in profile.rules:
        inc, exc = rule.includes, rule.excludes
        why = None
        if inc.get("arches") and not here & set(inc["arches"]):
            why = "includes.arches"
        elif inc.get("caps") and not set(inc["caps"]) <= set(caps):
            why = "includes.caps"
        elif inc.get("minKernel") and kernel is not None and kernel < inc["minKernel"]:
            why = "includes.minKernel"
        elif exc.get("arches") and here & set(exc["arches"]):
            why = "excludes.arches"
        elif exc.get("caps") and set(exc["caps"]) & set(caps):
            why = "excludes.caps"
        if why:
            sel.skipped.append(f"{rule.path}: left out by {why}")
            continue
        sel.rules.append(rule)
    return sel


def dumps_error(exc: PolicyError) -> str:
    return json.dumps({"error": exc.message, "path": exc.path, "hint": exc.hint})
