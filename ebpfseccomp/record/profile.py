"""A recording as an OCI seccomp profile (what Docker, podman and `convert` read).

    profile = to_profile(recording, native="x86_64", with_args=False)
    write(profile, "profile.json")

The profile allows every named syscall that was called, on every ABI that
was seen (the native one always), and refuses the rest with
`defaultErrnoRet` (ENOSYS by default: what a kernel answers for a call it
does not have, so programs take their fallbacks).  OCI rules name syscalls,
not (ABI, number) pairs: a name called only under i386 is allowed under
x86_64 too, and a number no table names cannot be allowed at all (it is in
the summary, and gets the default action).

With `with_args`, each syscall of the argument table gets one ALLOW rule per
distinct tuple of recorded values (EQ for 64-bit arguments, MASKED_EQ on the
low 32 bits for int arguments, which is all the kernel reads of them) instead
of a whole-syscall rule; a syscall with more than MAX_COMBOS tuples, or one
called on an ABI where its arguments are not in registers, stays whole.  The
profile never allows less than was seen.
"""

from __future__ import annotations

import errno as errno_module
import json
import os
from pathlib import Path

from ..errors import EbpfSeccompError
from .model import ABIS, NOT_IN_REGISTERS, ArgSpec, Recording, syscall_name

#: Above this many distinct argument tuples a syscall is allowed whole.
MAX_COMBOS = 64

#: errno names `--default-errno` accepts.
DEFAULT_ERRNOS = ("ENOSYS", "EPERM")


def _arg(spec: ArgSpec, value: int) -> dict[str, object]:
    if spec.bits == 32:
        return {"index": spec.index, "value": 0xFFFFFFFF, "valueTwo": value,
                "op": "SCMP_CMP_MASKED_EQ"}
    return {"index": spec.index, "value": value, "op": "SCMP_CMP_EQ"}


def to_profile(rec: Recording, native: str = "x86_64", with_args: bool = False,
               default_errno: str = "ENOSYS") -> dict[str, object]:
    """The OCI profile for REC; NATIVE is the machine's ABI (always listed)."""
    if default_errno not in DEFAULT_ERRNOS:
        raise EbpfSeccompError(f"--default-errno {default_errno}: not one of "
                               + ", ".join(DEFAULT_ERRNOS))
    arches = [ABIS[native].scmp]
    for abi in rec.abis():
        scmp = ABIS[abi].scmp if abi in ABIS else None
        if scmp and scmp not in arches:
            arches.append(scmp)
    whole: set[str] = set()
    combos: dict[str, dict[tuple[int, ...], tuple[ArgSpec, ...]]] = {}
    for (abi, num), _count in rec.calls.items():
        name = syscall_name(abi, num)
        if name is None:
            continue
        specs = rec.specs(abi, num)
        if not with_args or not specs or (abi, name) in NOT_IN_REGISTERS \
                or (abi, num) in rec.overflowed:
            whole.add(name)
            continue
        for combo in rec.values.get((abi, num), {}):
            combos.setdefault(name, {})[combo] = specs
    rules: list[dict[str, object]] = []
    arg_rules: list[dict[str, object]] = []
    for name in sorted(combos):
        seen = combos[name]
        if name in whole or len(seen) > MAX_COMBOS or len({s for s in seen.values()}) > 1:
            whole.add(name)
            continue
        for combo, specs in sorted(seen.items()):
            arg_rules.append({
                "names": [name], "action": "SCMP_ACT_ALLOW",
                "args": [_arg(s, v) for s, v in zip(specs, combo, strict=True)],
                "comment": "recorded: " + ", ".join(f"{s.label}={v:#x}"
                                                   for s, v in zip(specs, combo, strict=True)),
            })
    if whole:
        rules.append({"names": sorted(whole), "action": "SCMP_ACT_ALLOW",
                      "comment": f"recorded by ebpfseccomp record ({rec.backend})"})
    rules.extend(arg_rules)
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": getattr(errno_module, default_errno),
        "architectures": arches,
        "syscalls": rules,
    }


def dumps(profile: dict[str, object]) -> str:
    return json.dumps(profile, indent=2) + "\n"


def write(profile: dict[str, object], path: str | os.PathLike[str]) -> Path:
    """Write PROFILE to PATH atomically (a reader never sees half a profile)."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(dumps(profile))
        os.replace(tmp, out)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise EbpfSeccompError(f"cannot write the profile: {exc.strerror}",
                               path=str(path)) from None
    return out
