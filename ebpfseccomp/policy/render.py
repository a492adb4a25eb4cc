"""The C of a converted profile, from the jinja2 template in templates/filter.c.j2.

`render(plan)` only writes down what `semantics.compile` decided: one
function per architecture (sub-architectures included) with a `switch` on
the syscall number (its name in a comment), whole-syscall rules grouped under
the rule that gave them (with the profile's comment), argument rules as `if`
chains in profile order; the program `switch`es on seccomp_data.arch, and
sends x32 numbers (X32_SYSCALL_BIT, under AUDIT_ARCH_X86_64) to x32's function.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jinja2

from .semantics import Cond, Plan, SyscallPlan

_OPS = {"EQ": "==", "NE": "!=", "LT": "<", "LE": "<=", "GT": ">", "GE": ">="}


def c_action(value: int) -> str:
    act, data = value & 0xFFFF0000, value & 0xFFFF
    return {
        0x7FFF0000: "SECCOMP_ALLOW",
        0x7FFC0000: "SECCOMP_LOG",
        0x7FC00000: "SECCOMP_USER_NOTIF",
        0x80000000: "SECCOMP_KILL_PROCESS",
        0x00000000: "SECCOMP_KILL_THREAD",
        0x00050000: f"SECCOMP_ERRNO({data})",
        0x00030000: f"SECCOMP_TRAP({data})",
        0x7FF00000: f"SECCOMP_TRACE({data})",
    }[act]


def c_cond(c: Cond) -> str:
    arg = f"ctx->args[{c.index}]" if c.width == 64 else f"(__u32)ctx->args[{c.index}]"
    suffix = "ULL" if c.width == 64 else "U"
    if c.op == "MASKED_EQ":
        return f"({arg} & 0x{c.mask:x}{suffix}) == 0x{c.value:x}{suffix}"
    return f"{arg} {_OPS[c.op]} 0x{c.value:x}{suffix}"


def c_conds(conds: tuple[Cond, ...]) -> str:
    return " && ".join(c_cond(c) for c in conds)


def comment(text: object) -> str:
    """Safe inside a /* */ comment on one line."""
    return " ".join(str(text).replace("*/", "* /").replace("/*", "/ *").split())


@dataclass
class _Group:
    whole: bool
    action: int
    rule: object
    syscalls: list[SyscallPlan] = field(default_factory=list)


def _groups(syscalls: dict[int, SyscallPlan]) -> list[_Group]:
    whole: dict[tuple[int, int], _Group] = {}
    out: list[_Group] = []
    for sp in syscalls.values():
        if sp.whole is not None:
            key = (sp.whole.rule.index, sp.whole.action)
            if key not in whole:
                whole[key] = _Group(True, sp.whole.action, sp.whole.rule)
            whole[key].syscalls.append(sp)
        else:
            out.append(_Group(False, 0, sp.branches[0].rule, [sp]))
    return sorted(whole.values(), key=lambda g: g.rule.index) + out


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("ebpfseccomp.policy", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)
_ENV.filters.update(c_action=c_action, c_conds=c_conds, comment=comment)


def render(plan: Plan) -> str:
    sel = plan.selection
    arches = []
    dispatch: dict[int, dict] = {}
    for ap in plan.arches:
        arches.append({"scmp": ap.scmp, "name": ap.name, "audit": ap.audit, "width": ap.width,
                       "syscalls": ap.syscalls, "x32_filter": ap.x32_filter,
                       "groups": _groups(ap.syscalls)})
        # x32 shares AUDIT_ARCH_X86_64: its numbers carry X32_SYSCALL_BIT
        entry = dispatch.setdefault(ap.audit, {"audit": ap.audit, "scmps": [], "name": ap.name,
                                               "x32": False})
        entry["scmps"].append(ap.scmp)
        if ap.name == "x32":
            entry["x32"] = True
    return _ENV.get_template("filter.c.j2").render(
        source=sel.profile.source, arches=sel.arches, dropped=sel.dropped_arches,
        caps=sel.caps, skipped=sel.skipped, default=plan.default,
        default_name=sel.profile.default_action_name, bad_arch=plan.bad_arch,
        arches_plans=arches, dispatch=list(dispatch.values()))
