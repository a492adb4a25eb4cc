#!/usr/bin/env python3
"""Try a fixed list of system calls and print one line per call (vm/demo).

Run under a filter by vm/demo-guest; each line says what the kernel
answered: "allowed" (the call did its work) or "refused: ERRNO".  Raw
syscall(2) through ctypes, so that no libc wrapper caches or retries.
Needs the project's venv (syscall numbers come from ebpfseccomp.syscalls).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from os import O_CREAT, O_RDONLY, O_WRONLY
from socket import AF_NETLINK, AF_UNIX, SOCK_DGRAM

from ebpfseccomp.syscalls import nr

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

AT_FDCWD = -100
ARCH = {"x86_64": "x86_64", "aarch64": "aarch64"}[platform.machine()]


def call(name: str, *args: int | bytes) -> tuple[int, int]:
    ctypes.set_errno(0)
    ret = libc.syscall(nr(name, ARCH), *args)
    return ret, ctypes.get_errno()


def report(what: str, ret: int, err: int) -> None:
    if ret >= 0:
        print(f"  {what:<44} allowed (returned {ret})")
    else:
        print(f"  {what:<44} refused: {errno.errorcode.get(err, err)}")
    sys.stdout.flush()


def sockets() -> None:
    for fam, label in ((AF_UNIX, "AF_UNIX"), (AF_NETLINK, "AF_NETLINK")):
        ret, err = call("socket", fam, SOCK_DGRAM, 0)
        report(f"socket({label}, SOCK_DGRAM)", ret, err)
        if ret >= 0:
            call("close", ret)


def opens(protected: str, other: str) -> None:
    for path, flags, label in (
        (f"{other}/new-file", O_WRONLY | O_CREAT, "O_WRONLY|O_CREAT"),
        (f"{protected}/new-file", O_WRONLY | O_CREAT, "O_WRONLY|O_CREAT"),
        (f"{protected}/existing", O_RDONLY, "O_RDONLY"),
    ):
        ret, err = call("openat", AT_FDCWD, path.encode(), flags, 0o644)
        report(f"openat({path}, {label})", ret, err)
        if ret >= 0:
            call("close", ret)


def getpids(n: int) -> None:
    allowed = refused = 0
    errs: set[int] = set()
    for _ in range(n):
        ret, err = call("getpid")
        if ret >= 0:
            allowed += 1
        else:
            refused += 1
            errs.add(err)
    names = ",".join(errno.errorcode.get(e, str(e)) for e in sorted(errs)) or "-"
    print(f"  getpid() x {n}: {allowed} allowed, {refused} refused ({names})")


def main(argv: list[str]) -> int:
    # (no getpid() here: the rate-limit demo counts every one)
    with open("/proc/self/status") as f:
        nnp = f.read().split("NoNewPrivs:")[1].split()[0]
    print(f"  (uid {os.getuid()}, no_new_privs {nnp})")
    what = argv[0]
    if what == "args":
        sockets()
        opens(argv[1], argv[2])
    elif what == "getpid":
        getpids(int(argv[1]))
    else:
        print(f"demo-syscalls: unknown set {what!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
