"""The classic filter libseccomp builds for a selected profile (ctypes, libseccomp.so.2).

This is what a runtime does with the same profile (runc, crun, podman through
libseccomp-golang): `seccomp_init(defaultAction)`, one `seccomp_arch_add`
per architecture, then for every rule and every name
`seccomp_syscall_resolve_name` and `seccomp_rule_add_array` (non-strict, so
libseccomp spreads the rule over the architectures itself), skipping rules
whose action is the default action and names libseccomp does not know, as
runtimes skip them.  `seccomp_export_bpf` gives the program.

Only the system's libseccomp.so.2 is needed (Debian: libseccomp2); the venv
needs nothing from the system Python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import tempfile
from dataclasses import dataclass, field

from ..errors import EbpfSeccompError
from .model import ARCHES, OPS, Selection

__NR_SCMP_ERROR = -1
SCMP_FLTATR_CTL_NNP = 3
SCMP_FLTATR_CTL_OPTIMIZE = 8


class LibseccompError(EbpfSeccompError):
    """libseccomp is missing or refused the profile."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


_lib = None


def library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            raise LibseccompError(
                "libseccomp (libseccomp.so.2) is not installed: the classic filter needs it",
                hint="apt-get install libseccomp2") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_remove.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
        lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p  # malloc'd char *
        lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_version.restype = ctypes.c_void_p
        _lib = lib
    return _lib


def version() -> str:
    v = ctypes.cast(library().seccomp_version(), ctypes.POINTER(ctypes.c_uint * 3)).contents
    return f"{v[0]}.{v[1]}.{v[2]}"


def resolve(name: str, scmp_arch: str) -> int | None:
    """libseccomp's number for NAME on an architecture; None if it has none there."""
    n = library().seccomp_syscall_resolve_name_arch(ARCHES[scmp_arch][0], name.encode())
    return None if n < 0 else n


def name_of(nr: int, scmp_arch: str) -> str | None:
    """libseccomp's name for number NR on an architecture (x32 numbers with
    X32_SYSCALL_BIT); None if its table has no syscall there."""
    from ..sys import libc

    ptr = library().seccomp_syscall_resolve_num_arch(ARCHES[scmp_arch][0], nr)
    if not ptr:
        return None
    try:
        return ctypes.string_at(ptr).decode()
    finally:
        libc.free(ctypes.c_void_p(ptr))


@dataclass
class Classic:
    insns: list[tuple[int, int, int, int]]  # (code, jt, jf, k)
    unknown_names: list[str] = field(default_factory=list)  # libseccomp lacks them: skipped

    def bytes(self) -> bytes:
        return b"".join(struct.pack("=HBBI", *i) for i in self.insns)


def build(sel: Selection, optimize: bool = False) -> Classic:
    """libseccomp's classic program for SEL (binary-tree syscall search if OPTIMIZE)."""
    lib = library()
    default = sel.profile.default_action
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise LibseccompError("seccomp_init failed")
    unknown: list[str] = []
    try:
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0)
        if optimize:
            rc = lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
            if rc:
                raise LibseccompError(f"libseccomp {version()} cannot build a binary tree "
                                      f"({os.strerror(-rc)})")
        native = lib.seccomp_arch_native()
        for scmp in sel.arches:
            token = ARCHES[scmp][0]
            rc = lib.seccomp_arch_add(ctx, token)
            if rc and rc != -17:  # -EEXIST: the native arch is there already
                raise LibseccompError(f"seccomp_arch_add({scmp}): {os.strerror(-rc)}")
        if ARCHES[sel.native][0] != native and native not in (
                ARCHES[a][0] for a in sel.arches):
            lib.seccomp_arch_remove(ctx, native)
        for rule in sel.rules:
            if rule.action == default:
                continue
            cmps = (_ArgCmp * max(1, len(rule.args)))()
            for i, a in enumerate(rule.args):
                cmps[i].arg = a.index
                cmps[i].op = OPS[a.op]
                cmps[i].datum_a = a.value
                cmps[i].datum_b = a.value_two
            for name in dict.fromkeys(rule.names):
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == __NR_SCMP_ERROR:
                    unknown.append(name)
                    continue
                rc = lib.seccomp_rule_add_array(ctx, rule.action, nr, len(rule.args), cmps)
                if rc:
                    raise LibseccompError(
                        f"libseccomp refused the rule for {name}: {os.strerror(-rc)}",
                        path=rule.path)
        with tempfile.TemporaryFile() as f:
            rc = lib.seccomp_export_bpf(ctx, f.fileno())
            if rc:
                raise LibseccompError(f"seccomp_export_bpf: {os.strerror(-rc)}")
            f.seek(0)
            data = f.read()
    finally:
        lib.seccomp_release(ctx)
    insns = [struct.unpack_from("=HBBI", data, off) for off in range(0, len(data), 8)]
    return Classic(insns=insns, unknown_names=sorted(set(unknown)))
