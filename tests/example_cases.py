"""What each example filter in bpf/examples/ must answer, as data.

Used by tests/test_examples.py (through the emulator) and meant for the
kernel differential tests in the VM (through the real kernel): both run every
Scenario of an example, step by step on one freshly loaded filter, and
compare the verdict of each Step with `expect`.

Conventions:
- A Scenario starts from a freshly loaded filter (maps empty, globals zero,
  then ".rodata.init.<map>" sections applied, see bpf/include/ebpfseccomp/maps.h),
  and its steps run in order on that one filter, so state carries over.
- `syscall` is a name looked up in the table of the step's arch, or a raw
  number.  `arch` is the architecture the syscall is made on; None means the
  architecture the filter was built for.  A foreign arch ("i386") needs a
  raw number.
- `expect` is the verdict as ebpfseccomp prints it: "ALLOW", "ERRNO(13)",
  "KILL_PROCESS", ...
- `memory` maps user addresses to bytes for the user-memory read helpers.
- `time_ns` sets the clock bpf_ktime_get_ns() reads before the step (the
  kernel VM cannot set it: a scenario with `needs_clock` may be skipped
  there, or approximated with real sleeps).
- `env` holds Environment settings for the whole scenario (e.g.
  dumpable=False); `defines` are -D options for building the example.
- `only_arch` restricts a scenario to filters built for that architecture
  (x86_64 has open/creat, aarch64 does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ebpfseccomp.syscalls import nr as syscall_nr

#: Architectures every example is built for and tested on.
BUILD_ARCHES = ("x86_64", "aarch64")

ALLOW = "ALLOW"
KILL = "KILL_PROCESS"
EPERM = "ERRNO(1)"
EAGAIN = "ERRNO(11)"
EACCES = "ERRNO(13)"

AF_INET = 2
AF_UNIX = 1
AF_NETLINK = 16
O_RDONLY = 0
O_WRONLY = 0o1
O_CREAT = 0o100
O_TRUNC = 0o1000
O_CLOEXEC = 0o2000000
AT_FDCWD = -100 & 0xFFFFFFFFFFFFFFFF
X32_SYSCALL_BIT = 0x40000000

PATH_ADDR = 0x7FFF_0000_1000  # where scenarios put a path string
HOW_ADDR = 0x7FFF_0000_2000  # where scenarios put a struct open_how


@dataclass(frozen=True)
class Step:
    syscall: str | int
    expect: str
    args: tuple[int, ...] = ()
    arch: str | None = None
    memory: dict[int, bytes] | None = None
    time_ns: int | None = None
    note: str = ""

    def number(self, build_arch: str) -> int:
        """The syscall number this step passes in ctx->nr."""
        if isinstance(self.syscall, int):
            return self.syscall
        return syscall_nr(self.syscall, self.arch or build_arch)


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    env: dict[str, object] = field(default_factory=dict)
    defines: dict[str, str] = field(default_factory=dict)
    only_arch: str | None = None
    needs_clock: bool = False


def _one_each(name: str, steps: list[Step], **kw: object) -> Scenario:
    return Scenario(name, tuple(steps), **kw)  # type: ignore[arg-type]


def path(text: str) -> dict[int, bytes]:
    return {PATH_ADDR: text.encode() + b"\0"}


def open_how(flags: int) -> dict[int, bytes]:
    # struct open_how { __u64 flags; __u64 mode; __u64 resolve; }
    return {HOW_ADDR: flags.to_bytes(8, "little") + bytes(16)}


# syscalls the allowlist examples allow (a sample) and deny
ALLOWED_SAMPLE = ["read", "write", "openat", "close", "mmap", "brk", "execve", "exit_group",
                  "getpid", "rt_sigreturn", "futex", "getrandom"]
DENIED_SAMPLE = ["ptrace", "socket", "mount", "bpf", "kexec_load", "unshare", "setuid",
                 "reboot", "init_module", "process_vm_readv"]

def _allowlist() -> list[Scenario]:
    out = [
        _one_each("allowed", [Step(s, ALLOW) for s in ALLOWED_SAMPLE]),
        _one_each("denied", [Step(s, EPERM) for s in DENIED_SAMPLE]),
        _one_each("unknown number", [Step(5000, EPERM), Step(0x3FFF_FFFF, EPERM)]),
        _one_each("nr -1 on x86_64 has the x32 bit", [Step(0xFFFF_FFFF, KILL)],
                  only_arch="x86_64"),
        _one_each("nr -1 on aarch64", [Step(0xFFFF_FFFF, EPERM)], only_arch="aarch64"),
        _one_each("x86_64-only allowed", [Step("open", ALLOW), Step("arch_prctl", ALLOW),
                                          Step("access", ALLOW)], only_arch="x86_64"),
        _one_each("x32 killed", [Step(X32_SYSCALL_BIT | 0, KILL),
                                 Step(X32_SYSCALL_BIT | 39, KILL)], only_arch="x86_64"),
        _one_each("i386 killed", [Step(11, KILL, arch="i386"), Step(20, KILL, arch="i386")]),
        _one_each("aarch64 call on x86_64 filter", [Step(56, KILL, arch="aarch64")],
                  only_arch="x86_64"),
        _one_each("x86_64 call on aarch64 filter", [Step(257, KILL, arch="x86_64")],
                  only_arch="aarch64"),
    ]
    return out


EXAMPLES: dict[str, list[Scenario]] = {
    "allow_all": [
        _one_each("everything", [Step("ptrace", ALLOW), Step("reboot", ALLOW),
                                 Step(5000, ALLOW), Step(11, ALLOW, arch="i386")]),
    ],
    "deny_all_errno": [
        _one_each("exit allowed", [Step("exit", ALLOW), Step("exit_group", ALLOW)]),
        _one_each("all else EPERM", [Step("read", EPERM), Step("write", EPERM),
                                     Step("getpid", EPERM), Step("execve", EPERM),
                                     Step(5000, EPERM)]),
        _one_each("foreign exit denied", [Step(1, EPERM, arch="i386"),
                                          Step(252, EPERM, arch="i386")]),
    ],
    "arch_check": [
        _one_each("native allowed", [Step("getpid", ALLOW), Step("ptrace", ALLOW),
                                     Step(5000, ALLOW)]),
        _one_each("i386 killed", [Step(20, KILL, arch="i386")]),
        _one_each("x32 killed", [Step(X32_SYSCALL_BIT | 39, KILL)], only_arch="x86_64"),
        _one_each("aarch64 on x86_64 killed", [Step(172, KILL, arch="aarch64")],
                  only_arch="x86_64"),
        _one_each("x86_64 on aarch64 killed", [Step(39, KILL, arch="x86_64")],
                  only_arch="aarch64"),
    ],
    "allowlist_switch": _allowlist(),
    "allowlist_hashmap": _allowlist(),
    "allowlist_table": _allowlist(),
    "arg_rules": [
        _one_each("socket families", [
            Step("socket", EACCES, args=(AF_NETLINK, 3, 0)),
            Step("socket", ALLOW, args=(AF_INET, 1, 0)),
            Step("socket", ALLOW, args=(AF_UNIX, 1, 0)),
            Step("socket", EACCES, args=(AF_NETLINK | (1 << 32), 3, 0),
                 note="only the int's 32 bits count"),
        ]),
        _one_each("openat", [
            Step("openat", EACCES, args=(AT_FDCWD, PATH_ADDR, O_WRONLY | O_CREAT, 0o644),
                 memory=path("/tmp/protected/new")),
            Step("openat", ALLOW, args=(AT_FDCWD, PATH_ADDR, O_RDONLY, 0),
                 memory=path("/tmp/protected/new"), note="no O_CREAT: reading is fine"),
            Step("openat", ALLOW, args=(AT_FDCWD, PATH_ADDR, O_WRONLY | O_CREAT | O_TRUNC, 0),
                 memory=path("/tmp/elsewhere/new")),
            Step("openat", ALLOW, args=(AT_FDCWD, PATH_ADDR, O_CREAT, 0),
                 memory=path("/tmp/protected"), note="the directory name itself"),
            Step("openat", ALLOW, args=(AT_FDCWD, PATH_ADDR, O_CREAT, 0),
                 memory=path("/tmp/protecte/x")),
            Step("openat", ALLOW, args=(AT_FDCWD, PATH_ADDR, O_CREAT, 0), memory=path("")),
            Step("openat", EACCES, args=(AT_FDCWD, PATH_ADDR, O_CREAT | O_CLOEXEC, 0),
                 memory=path("/tmp/protected/" + "x" * 200), note="long path"),
            Step("openat", EACCES, args=(AT_FDCWD, 0x1234, O_CREAT, 0),
                 note="unreadable path: fail closed"),
            Step("openat", ALLOW, args=(AT_FDCWD, 0x1234, O_RDONLY, 0),
                 note="unreadable path without O_CREAT is not read at all"),
        ]),
        _one_each("openat2", [
            Step("openat2", EACCES, args=(AT_FDCWD, PATH_ADDR, HOW_ADDR, 24),
                 memory={**path("/tmp/protected/a"), **open_how(O_CREAT)}),
            Step("openat2", ALLOW, args=(AT_FDCWD, PATH_ADDR, HOW_ADDR, 24),
                 memory={**path("/tmp/protected/a"), **open_how(O_RDONLY)}),
            Step("openat2", ALLOW, args=(AT_FDCWD, PATH_ADDR, HOW_ADDR, 24),
                 memory={**path("/home/a"), **open_how(O_CREAT)}),
            Step("openat2", EACCES, args=(AT_FDCWD, PATH_ADDR, 0x1234, 24),
                 memory=path("/tmp/protected/a"), note="unreadable open_how"),
        ]),
        _one_each("x86_64 open and creat", [
            Step("open", EACCES, args=(PATH_ADDR, O_CREAT | O_WRONLY, 0o600),
                 memory=path("/tmp/protected/f")),
            Step("open", ALLOW, args=(PATH_ADDR, O_RDONLY, 0), memory=path("/tmp/protected/f")),
            Step("creat", EACCES, args=(PATH_ADDR, 0o600), memory=path("/tmp/protected/f")),
            Step("creat", ALLOW, args=(PATH_ADDR, 0o600), memory=path("/var/tmp/f")),
        ], only_arch="x86_64"),
        _one_each("not dumpable: creating opens fail closed", [
            Step("openat", EACCES, args=(AT_FDCWD, PATH_ADDR, O_CREAT, 0),
                 memory=path("/home/user/f")),
            Step("openat", ALLOW, args=(AT_FDCWD, PATH_ADDR, O_RDONLY, 0),
                 memory=path("/home/user/f")),
        ], env={"dumpable": False}),
        _one_each("not dumpable, loader with CAP_SYS_PTRACE", [
            Step("openat", ALLOW, args=(AT_FDCWD, PATH_ADDR, O_CREAT, 0),
                 memory=path("/home/user/f")),
            Step("openat", EACCES, args=(AT_FDCWD, PATH_ADDR, O_CREAT, 0),
                 memory=path("/tmp/protected/f")),
        ], env={"dumpable": False, "ptrace_reads": True}),
        _one_each("other syscalls", [Step("read", ALLOW), Step("ptrace", ALLOW),
                                     Step(11, KILL, arch="i386")]),
    ],
    "execve_once": [
        _one_each("second execve denied", [
            Step("getpid", ALLOW),
            Step("execve", ALLOW),
            Step("execve", EPERM),
            Step("execveat", EPERM),
            Step("read", ALLOW),
            Step("execve", EPERM),
        ]),
        _one_each("execveat counts too", [Step("execveat", ALLOW), Step("execve", EPERM)]),
        _one_each("foreign execve killed, not counted", [
            Step(11, KILL, arch="i386"),
            Step("execve", ALLOW),
        ]),
    ],
    "rate_limit": [
        _one_each("10 getpid per second", [
            *[Step("getpid", ALLOW, time_ns=5_000_000_000 + i) for i in range(10)],
            Step("getpid", EAGAIN, time_ns=5_000_000_100),
            Step("getpid", EAGAIN, time_ns=5_999_999_999),
            Step("getppid", ALLOW, time_ns=5_999_999_999, note="other syscalls unlimited"),
            Step("getpid", ALLOW, time_ns=6_000_000_000, note="a new window"),
        ], needs_clock=True),
        _one_each("RATE_LIMIT=2", [
            Step("getpid", ALLOW, time_ns=10**9),
            Step("getpid", ALLOW, time_ns=10**9),
            Step("getpid", EAGAIN, time_ns=10**9),
            Step("getpid", ALLOW, time_ns=3 * 10**9),
        ], defines={"RATE_LIMIT": "2"}, needs_clock=True),
        _one_each("other syscalls", [Step("read", ALLOW), Step("write", ALLOW),
                                     Step(20, KILL, arch="i386")]),
    ],
}


def scenarios_for(example: str, build_arch: str) -> list[Scenario]:
    """The scenarios of EXAMPLE that apply to a filter built for BUILD_ARCH."""
    return [s for s in EXAMPLES[example] if s.only_arch in (None, build_arch)]
