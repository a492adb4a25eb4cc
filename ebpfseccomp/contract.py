"""The kernel/toolchain contract (../shared/DESIGN-NOTES.md) as data.

Every module that needs a number, a flag, an action or a helper tier takes it
from here, so that the kernel patches and the toolchain have one place to be
compared against.  Nothing in this module does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._helper_ids import HELPER_IDS, HELPER_NAMES

# --- program type and attach flags -------------------------------------------

BPF_PROG_TYPE_SECCOMP = 33
SECTION_NAME = "seccomp"
SECCOMP_DATA_SIZE = 64

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2

#: seccomp(2) filter flags by the name the CLI accepts.
FILTER_FLAGS: dict[str, int] = {
    "tsync": 1 << 0,
    "log": 1 << 1,
    "spec-allow": 1 << 2,
    "new-listener": 1 << 3,
    "tsync-esrch": 1 << 4,
    "wait-killable-recv": 1 << 5,
    "extended": 1 << 6,
}
SECCOMP_FILTER_FLAG_EXTENDED = FILTER_FLAGS["extended"]

# --- struct seccomp_data layout ----------------------------------------------

#: offset -> (field name, size).  args[i] is at 16 + 8*i.
SECCOMP_DATA_FIELDS: dict[int, tuple[str, int]] = {
    0: ("nr", 4),
    4: ("arch", 4),
    8: ("instruction_pointer", 8),
    **{16 + 8 * i: (f"args[{i}]", 8) for i in range(6)},
}


def seccomp_data_field(off: int, size: int) -> str:
    """Name the part of struct seccomp_data that a load of SIZE at OFF reads."""
    for base, (name, width) in SECCOMP_DATA_FIELDS.items():
        if base <= off < base + width:
            if off == base and size == width:
                return name
            return f"{name}+{off - base}" if off != base else f"{name}[{size}B]"
    return f"ctx+{off}"


# --- actions ------------------------------------------------------------------

SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF


class Action(enum.IntEnum):
    KILL_PROCESS = 0x80000000
    KILL_THREAD = 0x00000000
    TRAP = 0x00030000
    ERRNO = 0x00050000
    USER_NOTIF = 0x7FC00000
    TRACE = 0x7FF00000
    LOG = 0x7FFC0000
    ALLOW = 0x7FFF0000


#: Actions whose low 16 bits carry data worth printing.
ACTIONS_WITH_DATA = {Action.TRAP, Action.ERRNO, Action.TRACE}

#: Least permissive first, as the kernel orders them (signed comparison).
ACTION_PRECEDENCE = [
    Action.KILL_PROCESS,
    Action.KILL_THREAD,
    Action.TRAP,
    Action.ERRNO,
    Action.USER_NOTIF,
    Action.TRACE,
    Action.LOG,
    Action.ALLOW,
]


#: The kernel caps an ERRNO action's data at this (include/linux/err.h).
MAX_ERRNO = 4095


@dataclass(frozen=True)
class Verdict:
    """A filter's 32-bit return value, decoded as the kernel decodes it."""

    value: int

    @property
    def action(self) -> Action:
        full = self.value & SECCOMP_RET_ACTION_FULL
        try:
            return Action(full)
        except ValueError:
            # The kernel treats unknown actions as KILL_PROCESS.
            return Action.KILL_PROCESS

    @property
    def data(self) -> int:
        return self.value & SECCOMP_RET_DATA

    @property
    def errno(self) -> int | None:
        """For ERRNO: the errno the syscall fails with; the kernel caps the
        data at MAX_ERRNO (4095).  None for other actions."""
        if self.action != Action.ERRNO:
            return None
        return min(self.data, MAX_ERRNO)

    def __str__(self) -> str:
        act = self.action
        if act == Action.ERRNO and self.data > MAX_ERRNO:
            return f"ERRNO({MAX_ERRNO})"  # what the caller sees; data holds the raw value
        if act in ACTIONS_WITH_DATA:
            return f"{act.name}({self.data})"
        return act.name


def least_permissive(values: list[int]) -> int:
    """Combine the return values of a filter chain as seccomp does."""

    def rank(v: int) -> int:
        # seccomp compares the action part as a signed 32-bit integer.
        act = v & SECCOMP_RET_ACTION_FULL
        return act - (1 << 32) if act & 0x80000000 else act

    return min(values, key=rank)


# --- architectures ------------------------------------------------------------

AUDIT_ARCH: dict[str, int] = {
    "x86_64": 0xC000003E,
    "i386": 0x40000003,
    "aarch64": 0xC00000B7,
}

# --- helper tiers -------------------------------------------------------------


class Tier(enum.IntEnum):
    """What a seccomp program may use, decided when it is loaded.

    NONE      - no helpers, no maps, no globals: what cBPF can do.
    EXTENDED  - the contract's helper list and maps (LSM hook allows).
    PTRACE    - EXTENDED, and user-memory reads also of non-dumpable tasks.
                The kernel decides this at each read, by ptrace's rule, from
                the loader's credentials kept in the program: CAP_SYS_PTRACE
                over the user namespace of the task's mm.  The toolchain
                predicts it for a loader with CAP_SYS_PTRACE in the initial
                user namespace; one with it only in a child namespace reads
                dumpable tasks (and non-dumpable ones whose mm belongs to its
                own namespace), like an unprivileged loader.
    TRACING   - EXTENDED plus the kernel's base/tracing helper set
                (loader has CAP_BPF and CAP_PERFMON).
    """

    NONE = 0
    EXTENDED = 1
    PTRACE = 2
    TRACING = 3


#: Helpers every program in the EXTENDED tier may call.
EXTENDED_HELPERS = frozenset(
    HELPER_IDS[n]
    for n in (
        "map_lookup_elem",
        "map_update_elem",
        "map_delete_elem",
        "ktime_get_ns",
        "get_prandom_u32",
        "get_current_uid_gid",
        "get_current_pid_tgid",
        "probe_read_user",
        "probe_read_user_str",
    )
)

#: Helpers whose reads are limited to dumpable tasks without CAP_SYS_PTRACE.
USER_READ_HELPERS = frozenset(
    HELPER_IDS[n] for n in ("probe_read_user", "probe_read_user_str")
)

#: Helpers the kernel's bpf_base_func_proto() hands out (6.12), which the
#: TRACING tier falls back to when the loader has CAP_BPF and CAP_PERFMON;
#: without the bpf_timer helpers, which the series refuses at every tier (their
#: callbacks would run outside the filter's run).
TRACING_HELPERS = frozenset(
    HELPER_IDS[n]
    for n in (
        "map_push_elem", "map_pop_elem", "map_peek_elem",
        "map_lookup_percpu_elem", "get_smp_processor_id", "get_numa_node_id",
        "tail_call", "ktime_get_boot_ns", "ktime_get_tai_ns",
        "ringbuf_output", "ringbuf_reserve", "ringbuf_submit",
        "ringbuf_discard", "ringbuf_query", "strncmp", "strtol", "strtoul",
        "get_ns_current_pid_tgid", "spin_lock", "spin_unlock", "jiffies64",
        "per_cpu_ptr", "this_cpu_ptr", "kptr_xchg", "for_each_map_elem",
        "loop", "user_ringbuf_drain", "ringbuf_reserve_dynptr",
        "ringbuf_submit_dynptr", "ringbuf_discard_dynptr", "dynptr_from_mem",
        "dynptr_read", "dynptr_write", "dynptr_data", "cgrp_storage_get",
        "cgrp_storage_delete", "get_current_cgroup_id",
        "get_current_ancestor_cgroup_id", "trace_printk", "get_current_task",
        "get_current_task_btf", "probe_read_kernel", "probe_read_kernel_str",
        "snprintf_btf", "snprintf", "task_pt_regs", "trace_vprintk",
    )
) | EXTENDED_HELPERS  # fmt: skip


def helper_name(func_id: int) -> str:
    return HELPER_NAMES.get(func_id, f"helper#{func_id}")


def helper_tier(func_id: int) -> Tier | None:
    """The lowest tier in which FUNC_ID may be called, None if never."""
    if func_id in USER_READ_HELPERS:
        return Tier.EXTENDED
    if func_id in EXTENDED_HELPERS:
        return Tier.EXTENDED
    if func_id in TRACING_HELPERS:
        return Tier.TRACING
    return None


# --- map types ----------------------------------------------------------------

#: Map types the toolchain accepts for seccomp programs (and the emulator runs):
#: the kernel's seccomp_bpf_map_type_allowed() (patch 0005).  The ring buffer
#: is written only through the bpf_ringbuf_* helpers, which are base helpers
#: (TRACING tier); it has no keys or values (key and value size 0) and its
#: max_entries is its size in bytes, a power of two and a multiple of the page.
MAP_TYPES: dict[int, str] = {
    1: "hash",
    2: "array",
    5: "percpu_hash",
    6: "percpu_array",
    9: "lru_hash",
    10: "lru_percpu_hash",
    27: "ringbuf",
}
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27

#: Helpers whose first argument must be a ring buffer map (the verifier's
#: check_map_func_compatibility), and the map helpers a ring buffer refuses.
RINGBUF_MAP_HELPERS = frozenset(
    HELPER_IDS[n] for n in ("ringbuf_output", "ringbuf_reserve", "ringbuf_query")
)
KEYED_MAP_HELPERS = frozenset(
    HELPER_IDS[n] for n in ("map_lookup_elem", "map_update_elem", "map_delete_elem")
)

# --- limits -------------------------------------------------------------------

BPF_MAXINSNS = 4096  # program length without CAP_BPF
BPF_COMPLEXITY_LIMIT_INSNS = 1_000_000  # with CAP_BPF
MAX_BPF_STACK = 512

# --- sysctls ------------------------------------------------------------------

YAMA_PTRACE_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"
UNPRIVILEGED_BPF_DISABLED = "/proc/sys/kernel/unprivileged_bpf_disabled"
