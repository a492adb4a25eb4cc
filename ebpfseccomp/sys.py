"""The one thin ctypes layer: libbpf (libbpf.so.1) and raw system calls.

Nothing else in the package talks to libbpf or makes a system call that
Python's standard library does not offer.  Every function here does one
thing, takes and returns plain Python values (ints, bytes, str) or opaque
handles, and turns a failure into OSError with the kernel's errno, so that
callers can map errnos to messages people understand.

libbpf is loaded lazily: importing this module works on machines without it
(the emulator and checker do not need it).  libbpf's own messages go to a
print callback that collects them (see `libbpf_messages`); nothing reaches
stderr unless a caller prints what was collected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os
import platform
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# --- libc and raw system calls -----------------------------------------------

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.restype = ctypes.c_int
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.vsnprintf.restype = ctypes.c_int
libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

#: System call numbers this module needs, per machine.
_NR: dict[str, dict[str, int]] = {
    "x86_64": {
        "bpf": 321, "seccomp": 317, "capget": 125, "capset": 126,
        "pidfd_open": 434, "unshare": 272, "getppid": 110, "pidfd_getfd": 438,
    },
    "aarch64": {
        "bpf": 280, "seccomp": 277, "capget": 90, "capset": 91,
        "pidfd_open": 434, "unshare": 97, "getppid": 173, "pidfd_getfd": 438,
    },
}  # fmt: skip

MACHINE = platform.machine()


def nr(name: str) -> int:
    """The number of system call NAME on this machine (only the ones used here)."""
    try:
        return _NR[MACHINE][name]
    except KeyError:
        raise OSError(_errno.ENOSYS, f"system call {name} unknown on {MACHINE}") from None


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def raw_syscall(number: int, *args: int) -> int:
    """Call system call NUMBER with integer arguments; -errno on failure.

    Used by tests and benchmarks that make syscalls of their choice under a
    filter; returns the kernel's answer without raising.
    """
    cargs = [ctypes.c_long(a) for a in args]
    ret = libc.syscall(ctypes.c_long(number), *cargs)
    if ret == -1:
        return -ctypes.get_errno()
    return int(ret)


# --- bpf(2) -------------------------------------------------------------------

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_FREEZE = 22
BPF_F_RDONLY_PROG = 1 << 7

BPF_F_RDONLY = 1 << 3
BPF_F_WRONLY = 1 << 4
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_PROG_TYPE_SOCKET_FILTER = 1

_ATTR_SIZE = 144  # covers every command used here; the rest stays zero


def bpf(cmd: int, attr: bytes | bytearray) -> tuple[int, bytearray]:
    """bpf(CMD, ATTR): returns (result, attr as the kernel left it)."""
    buf = ctypes.create_string_buffer(bytes(attr).ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    ret = libc.syscall(ctypes.c_long(nr("bpf")), ctypes.c_long(cmd), buf, ctypes.c_long(_ATTR_SIZE))
    _check(ret, f"bpf(cmd {cmd})")
    return int(ret), bytearray(buf.raw)


def prog_load_raw(
    prog_type: int,
    insns: bytes,
    *,
    license: str = "GPL",
    log_level: int = 0,
    log_size: int = 65536,
    name: str = "",
    expected_attach_type: int = 0,
) -> tuple[int, str]:
    """BPF_PROG_LOAD without libbpf: (fd, verifier log); OSError carries the log.

    For feature probes and tests that need an exact instruction sequence.
    """
    lic = ctypes.create_string_buffer(license.encode())
    code = ctypes.create_string_buffer(insns, len(insns))
    log = ctypes.create_string_buffer(log_size if log_level else 1)
    attr = struct.pack(
        "<IIQQIIQII16sII",
        prog_type,
        len(insns) // 8,
        ctypes.addressof(code),
        ctypes.addressof(lic),
        log_level,
        log_size if log_level else 0,
        ctypes.addressof(log) if log_level else 0,
        0,  # kern_version
        0,  # prog_flags
        name.encode()[:15],
        0,  # prog_ifindex
        expected_attach_type,
    )
    try:
        fd, _ = bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        text = log.value.decode(errors="replace")
        raise OSError(exc.errno, exc.strerror, text) from None
    return fd, log.value.decode(errors="replace")


def map_create_raw(map_type: int, key_size: int, value_size: int, max_entries: int,
                   flags: int = 0, name: str = "") -> int:
    """BPF_MAP_CREATE without BTF: the map fd."""
    attr = struct.pack("<IIIIIII16s", map_type, key_size, value_size, max_entries, flags,
                       0, 0, name.encode()[:15])
    fd, _ = bpf(BPF_MAP_CREATE, attr)
    return fd


def _elem_attr(fd: int, key: ctypes.Array | None, value: ctypes.Array | None, flags: int) -> bytes:
    return struct.pack(
        "<IIQQQ",
        fd,
        0,
        ctypes.addressof(key) if key is not None else 0,
        ctypes.addressof(value) if value is not None else 0,
        flags,
    )


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value under KEY, None when absent (ENOENT)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, _elem_attr(fd, k, v, 0))
    except OSError as exc:
        if exc.errno == _errno.ENOENT:
            return None
        raise
    return v.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    bpf(BPF_MAP_UPDATE_ELEM, _elem_attr(fd, k, v, flags))


def map_delete(fd: int, key: bytes) -> bool:
    """Delete KEY; False when it was absent."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        bpf(BPF_MAP_DELETE_ELEM, _elem_attr(fd, k, None, 0))
    except OSError as exc:
        if exc.errno == _errno.ENOENT:
            return False
        raise
    return True


def map_freeze(fd: int) -> None:
    """BPF_MAP_FREEZE: no more writes from user space, by any fd, ever."""
    bpf(BPF_MAP_FREEZE, struct.pack("<I", fd))


def map_next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after KEY (the first key when KEY is None); None at the end."""
    k = ctypes.create_string_buffer(key, key_size) if key is not None else None
    n = ctypes.create_string_buffer(key_size)
    try:
        bpf(BPF_MAP_GET_NEXT_KEY, _elem_attr(fd, k, n, 0))
    except OSError as exc:
        if exc.errno == _errno.ENOENT:
            return None
        raise
    return n.raw


def obj_pin(fd: int, path: str) -> None:
    """Pin a program or map fd at PATH in a bpf file system."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    bpf(BPF_OBJ_PIN, struct.pack("<QII", ctypes.addressof(p), fd, 0))


def obj_get(path: str, flags: int = 0) -> int:
    """Open a pinned object: a new fd.  FLAGS: BPF_F_RDONLY / BPF_F_WRONLY."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    fd, _ = bpf(BPF_OBJ_GET, struct.pack("<QII", ctypes.addressof(p), 0, flags))
    return fd


def prog_get_fd_by_id(prog_id: int) -> int:
    fd, _ = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<III", prog_id, 0, 0))
    return fd


def map_get_fd_by_id(map_id: int, flags: int = 0) -> int:
    fd, _ = bpf(BPF_MAP_GET_FD_BY_ID, struct.pack("<III", map_id, 0, flags))
    return fd


def _info(fd: int, size: int) -> bytes:
    info = ctypes.create_string_buffer(size)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, size, ctypes.addressof(info)))
    return info.raw


@dataclass(frozen=True)
class ProgInfo:
    type: int
    id: int
    name: str
    map_ids: tuple[int, ...]


def fd_kind(fd: int) -> str:
    """What FD is, as /proc names it: "bpf-prog", "bpf-map", "bpf-link", or a path."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        raise OSError(exc.errno, f"fd {fd}: {exc.strerror}") from None
    return target.removeprefix("anon_inode:")


def prog_info(fd: int) -> ProgInfo:
    """Type, id, name and map ids of the program behind FD (EINVAL: not a program)."""
    if fd_kind(fd) != "bpf-prog":
        raise OSError(_errno.EINVAL, f"fd {fd} is not a BPF program")
    raw = _info(fd, 80)
    ptype, pid = struct.unpack_from("<II", raw, 0)
    nr_maps = struct.unpack_from("<I", raw, 52)[0]
    name = raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    ids: tuple[int, ...] = ()
    if nr_maps:
        arr = (ctypes.c_uint32 * nr_maps)()
        info = bytearray(80)
        struct.pack_into("<I", info, 52, nr_maps)
        struct.pack_into("<Q", info, 56, ctypes.addressof(arr))
        cinfo = ctypes.create_string_buffer(bytes(info), 80)
        try:
            bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, 80, ctypes.addressof(cinfo)))
            ids = tuple(arr)
        except OSError:
            ids = ()
    return ProgInfo(ptype, pid, name, ids)


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    """Type, id, sizes and name of the map behind FD (EINVAL: not a map)."""
    if fd_kind(fd) != "bpf-map":
        raise OSError(_errno.EINVAL, f"fd {fd} is not a BPF map")
    raw = _info(fd, 40)
    mtype, mid, ks, vs, me, fl = struct.unpack_from("<IIIIII", raw, 0)
    name = raw[24:40].split(b"\0", 1)[0].decode(errors="replace")
    return MapInfo(mtype, mid, ks, vs, me, fl, name)


# --- seccomp(2) and prctl(2) ---------------------------------------------------

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24


def seccomp(op: int, flags: int, arg: ctypes._CData | None) -> int:
    """seccomp(OP, FLAGS, &ARG); OSError on failure."""
    ptr = ctypes.byref(arg) if arg is not None else None
    ret = libc.syscall(ctypes.c_long(nr("seccomp")), ctypes.c_long(op), ctypes.c_long(flags), ptr)
    return _check(int(ret), "seccomp")


def seccomp_attach_fd(prog_fd: int, flags: int, op: int = 1) -> int:
    """seccomp(SECCOMP_SET_MODE_FILTER, FLAGS, &prog_fd): FLAGS must hold EXTENDED."""
    return seccomp(op, flags, ctypes.c_int(prog_fd))


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_attach_cbpf(program: bytes, flags: int = 0) -> int:
    """Install a classic BPF filter (PROGRAM: struct sock_filter[] as bytes)."""
    n = len(program) // 8
    arr = (_SockFilter * n).from_buffer_copy(program)
    fprog = _SockFprog(n, ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    return seccomp(1, flags, fprog)


# User notification (seccomp_unotify(2)).
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
#: _IOWR('!', 0, struct seccomp_notif) and _IOWR('!', 1, struct seccomp_notif_resp)
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
_NOTIF = struct.Struct("<QIIiIQ6Q")  # id, pid, flags, data {nr, arch, ip, args[6]}: 80 bytes
_NOTIF_RESP = struct.Struct("<QqiI")  # id, val, error, flags: 24 bytes


@dataclass(frozen=True)
class Notification:
    """One struct seccomp_notif: the call a task is waiting in."""
    id: int
    pid: int
    nr: int
    arch: int
    args: tuple[int, ...]


def notif_recv(listener: int) -> Notification:
    """SECCOMP_IOCTL_NOTIF_RECV; OSError (ENOENT: the task went away meanwhile)."""
    import fcntl

    buf = bytearray(_NOTIF.size)  # the kernel wants it zeroed
    fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    nid, pid, _flags, num, arch, _ip, *args = _NOTIF.unpack(buf)
    return Notification(nid, pid, num, arch, tuple(args))


def notif_continue(listener: int, notif_id: int) -> None:
    """Let the notified call run as if the filter had allowed it
    (SECCOMP_USER_NOTIF_FLAG_CONTINUE); OSError ENOENT if the task is gone."""
    import fcntl

    buf = bytearray(_NOTIF_RESP.pack(notif_id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE))
    fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, buf, True)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def get_no_new_privs() -> bool:
    return prctl(PR_GET_NO_NEW_PRIVS) == 1


# --- capabilities ---------------------------------------------------------------

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
CAP_SETUID = 7
CAP_SETGID = 6

CAP_NAMES: dict[int, str] = {
    0: "CAP_CHOWN", 1: "CAP_DAC_OVERRIDE", 2: "CAP_DAC_READ_SEARCH", 3: "CAP_FOWNER",
    4: "CAP_FSETID", 5: "CAP_KILL", 6: "CAP_SETGID", 7: "CAP_SETUID", 8: "CAP_SETPCAP",
    9: "CAP_LINUX_IMMUTABLE", 10: "CAP_NET_BIND_SERVICE", 11: "CAP_NET_BROADCAST",
    12: "CAP_NET_ADMIN", 13: "CAP_NET_RAW", 14: "CAP_IPC_LOCK", 15: "CAP_IPC_OWNER",
    16: "CAP_SYS_MODULE", 17: "CAP_SYS_RAWIO", 18: "CAP_SYS_CHROOT", 19: "CAP_SYS_PTRACE",
    20: "CAP_SYS_PACCT", 21: "CAP_SYS_ADMIN", 22: "CAP_SYS_BOOT", 23: "CAP_SYS_NICE",
    24: "CAP_SYS_RESOURCE", 25: "CAP_SYS_TIME", 26: "CAP_SYS_TTY_CONFIG", 27: "CAP_MKNOD",
    28: "CAP_LEASE", 29: "CAP_AUDIT_WRITE", 30: "CAP_AUDIT_CONTROL", 31: "CAP_SETFCAP",
    32: "CAP_MAC_OVERRIDE", 33: "CAP_MAC_ADMIN", 34: "CAP_SYSLOG", 35: "CAP_WAKE_ALARM",
    36: "CAP_BLOCK_SUSPEND", 37: "CAP_AUDIT_READ", 38: "CAP_PERFMON", 39: "CAP_BPF",
    40: "CAP_CHECKPOINT_RESTORE",
}  # fmt: skip


@dataclass(frozen=True)
class CapSets:
    effective: int
    permitted: int
    inheritable: int


def capget(pid: int = 0) -> CapSets:
    """The capability sets of PID (0: the calling thread), as 64-bit masks."""
    hdr = struct.pack("<Ii", _LINUX_CAPABILITY_VERSION_3, pid)
    h = ctypes.create_string_buffer(hdr, 8)
    d = ctypes.create_string_buffer(24)
    _check(int(libc.syscall(ctypes.c_long(nr("capget")), h, d)), "capget")
    e0, p0, i0, e1, p1, i1 = struct.unpack("<6I", d.raw)
    return CapSets(e0 | e1 << 32, p0 | p1 << 32, i0 | i1 << 32)


def capset(effective: int, permitted: int, inheritable: int = 0) -> None:
    """Set the calling thread's capability sets (can only lower without CAP_SETPCAP)."""
    h = ctypes.create_string_buffer(struct.pack("<Ii", _LINUX_CAPABILITY_VERSION_3, 0), 8)
    m = 0xFFFFFFFF
    d = ctypes.create_string_buffer(
        struct.pack("<6I", effective & m, permitted & m, inheritable & m,
                    effective >> 32, permitted >> 32, inheritable >> 32), 24)
    _check(int(libc.syscall(ctypes.c_long(nr("capset")), h, d)), "capset")


def capbset_drop(cap: int) -> None:
    prctl(PR_CAPBSET_DROP, cap)


# --- processes and namespaces ----------------------------------------------------

CLONE_NEWUSER = 0x10000000


PR_SET_CHILD_SUBREAPER = 36


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """pidfd_getfd(2): a duplicate (close-on-exec) of fd TARGETFD of the process PIDFD
    refers to; needs ptrace access to it (PTRACE_MODE_ATTACH_REALCREDS)."""
    return _check(int(libc.syscall(ctypes.c_long(nr("pidfd_getfd")), ctypes.c_long(pidfd),
                                   ctypes.c_long(targetfd), ctypes.c_long(0))), "pidfd_getfd")


def set_child_subreaper(on: bool) -> None:
    """PR_SET_CHILD_SUBREAPER: orphaned descendants are reparented to this process."""
    prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def pidfd_open(pid: int, flags: int = 0) -> int:
    return _check(int(libc.syscall(ctypes.c_long(nr("pidfd_open")), ctypes.c_long(pid),
                                   ctypes.c_long(flags))), "pidfd_open")


def unshare(flags: int) -> None:
    """unshare(2) (os.unshare exists only from Python 3.12)."""
    _check(int(libc.syscall(ctypes.c_long(nr("unshare")), ctypes.c_long(flags))), "unshare")


SOL_SOCKET = 1
SO_PEERPIDFD = 77


def peer_pidfd(sock_fd: int) -> int:
    """SO_PEERPIDFD of a connected Unix socket (Linux 6.5+): a pidfd of the peer."""
    val = ctypes.c_int(-1)
    size = ctypes.c_uint32(ctypes.sizeof(val))
    ret = libc.getsockopt(sock_fd, SOL_SOCKET, SO_PEERPIDFD, ctypes.byref(val), ctypes.byref(size))
    _check(int(ret), "getsockopt(SO_PEERPIDFD)")
    return int(val.value)


# --- libbpf -----------------------------------------------------------------------

LIBBPF_NAME = "libbpf.so.1"

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()

_RINGBUF_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

#: libbpf print levels
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2

_messages = threading.local()


def _collect(level: int, fmt: bytes | None, ap: int | None) -> int:
    buf = ctypes.create_string_buffer(4096)
    if fmt is not None:
        libc.vsnprintf(buf, len(buf), fmt, ap)
    sink: list[tuple[int, str]] | None = getattr(_messages, "sink", None)
    if sink is not None:
        sink.append((level, buf.value.decode(errors="replace")))
    return 0


_print_cb = _PRINT_FN(_collect)  # kept alive for the life of the process


def _c_void_p(v: int | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(v)


def libbpf() -> ctypes.CDLL:
    """libbpf.so.1 with the prototypes this module uses (OSError if absent)."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        try:
            lib = ctypes.CDLL(LIBBPF_NAME, use_errno=True)
        except OSError as exc:
            raise OSError(_errno.ENOENT, f"cannot load {LIBBPF_NAME} ({exc}); "
                          "install Debian's libbpf1 package") from None
        vp, cp, ci, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t
        u32 = ctypes.c_uint32
        protos: dict[str, tuple[object, list[object]]] = {
            "libbpf_set_print": (vp, [_PRINT_FN]),
            "bpf_object__open_file": (vp, [cp, vp]),
            "bpf_object__load": (ci, [vp]),
            "bpf_object__close": (None, [vp]),
            "bpf_object__next_program": (vp, [vp, vp]),
            "bpf_object__next_map": (vp, [vp, vp]),
            "bpf_object__find_program_by_name": (vp, [vp, cp]),
            "bpf_object__find_map_by_name": (vp, [vp, cp]),
            "bpf_program__name": (cp, [vp]),
            "bpf_program__section_name": (cp, [vp]),
            "bpf_program__set_type": (ci, [vp, ci]),
            "bpf_program__type": (ci, [vp]),
            "bpf_program__set_expected_attach_type": (ci, [vp, ci]),
            "bpf_program__set_autoload": (ci, [vp, ctypes.c_bool]),
            "bpf_program__set_log_buf": (ci, [vp, vp, sz]),
            "bpf_program__set_log_level": (ci, [vp, u32]),
            "bpf_program__fd": (ci, [vp]),
            "bpf_program__insn_cnt": (sz, [vp]),
            "bpf_program__insns": (vp, [vp]),
            "libbpf_register_prog_handler": (ci, [cp, ci, ci, vp]),
            "bpf_map__name": (cp, [vp]),
            "bpf_map__fd": (ci, [vp]),
            "bpf_map__type": (ci, [vp]),
            "bpf_map__key_size": (u32, [vp]),
            "bpf_map__value_size": (u32, [vp]),
            "bpf_map__max_entries": (u32, [vp]),
            "bpf_map__map_flags": (u32, [vp]),
            "bpf_map__set_initial_value": (ci, [vp, vp, sz]),
            "bpf_map__set_autocreate": (ci, [vp, ctypes.c_bool]),
            "bpf_map__initial_value": (vp, [vp, ctypes.POINTER(sz)]),
            "libbpf_strerror": (ci, [ci, cp, sz]),
            "ring_buffer__new": (vp, [ci, _RINGBUF_FN, vp, vp]),
            "ring_buffer__poll": (ci, [vp, ci]),
            "ring_buffer__consume": (ci, [vp]),
            "ring_buffer__free": (None, [vp]),
            "ring_buffer__epoll_fd": (ci, [vp]),
            "bpf_program__attach": (vp, [vp]),
            "bpf_link__destroy": (ci, [vp]),
        }
        for name, (res, args) in protos.items():
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        lib.libbpf_set_print(_print_cb)
        _lib = lib
        return lib


@contextmanager
def libbpf_messages() -> Iterator[list[tuple[int, str]]]:
    """Collect libbpf's messages (level, text) printed in this thread meanwhile."""
    old = getattr(_messages, "sink", None)
    sink: list[tuple[int, str]] = []
    _messages.sink = sink
    try:
        yield sink
    finally:
        _messages.sink = old


def _neg(ret: int, what: str) -> int:
    """libbpf 1.x returns -errno (and sets errno); raise OSError for it."""
    if ret < 0:
        err = -ret if ret > -4096 else ctypes.get_errno() or _errno.EINVAL
        if err >= 4000:  # LIBBPF_ERRNO__* (e.g. 4007: verifier error)
            buf = ctypes.create_string_buffer(256)
            libbpf().libbpf_strerror(err, buf, len(buf))
            raise OSError(_errno.EINVAL, f"{what}: {buf.value.decode(errors='replace')}")
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def object_open(path: str) -> int:
    """bpf_object__open_file(PATH): an opaque handle (int); OSError on failure."""
    lib = libbpf()
    ctypes.set_errno(0)
    obj = lib.bpf_object__open_file(os.fsencode(path), None)
    if not obj:
        err = ctypes.get_errno() or _errno.EINVAL
        if err >= 4000:
            err = _errno.EINVAL
        raise OSError(err, f"cannot open BPF object: {os.strerror(err)}", path)
    return int(obj)


def object_load(obj: int) -> None:
    _neg(libbpf().bpf_object__load(_c_void_p(obj)), "bpf_object__load")


def program_attach(prog: int) -> int:
    """bpf_program__attach: attach as the section name says (e.g. tp_btf/NAME);
    an opaque link handle for link_destroy."""
    ctypes.set_errno(0)
    link = libbpf().bpf_program__attach(_c_void_p(prog))
    if not link:
        err = ctypes.get_errno() or _errno.EINVAL
        raise OSError(err, f"bpf_program__attach: {os.strerror(err)}")
    return int(link)


def link_destroy(link: int) -> None:
    libbpf().bpf_link__destroy(_c_void_p(link))


def object_close(obj: int) -> None:
    libbpf().bpf_object__close(_c_void_p(obj))


def object_programs(obj: int) -> list[int]:
    lib = libbpf()
    progs: list[int] = []
    p = lib.bpf_object__next_program(_c_void_p(obj), None)
    while p:
        progs.append(int(p))
        p = lib.bpf_object__next_program(_c_void_p(obj), _c_void_p(p))
    return progs


def object_maps(obj: int) -> list[int]:
    lib = libbpf()
    maps: list[int] = []
    m = lib.bpf_object__next_map(_c_void_p(obj), None)
    while m:
        maps.append(int(m))
        m = lib.bpf_object__next_map(_c_void_p(obj), _c_void_p(m))
    return maps


def object_find_map(obj: int, name: str) -> int | None:
    """The map NAME (also a global section name such as ".data"), None if absent."""
    m = libbpf().bpf_object__find_map_by_name(_c_void_p(obj), name.encode())
    return int(m) if m else None


def program_name(prog: int) -> str:
    return (libbpf().bpf_program__name(_c_void_p(prog)) or b"").decode()


def program_section(prog: int) -> str:
    return (libbpf().bpf_program__section_name(_c_void_p(prog)) or b"").decode()


def program_set_type(prog: int, prog_type: int) -> None:
    _neg(libbpf().bpf_program__set_type(_c_void_p(prog), prog_type), "bpf_program__set_type")


def program_type(prog: int) -> int:
    return int(libbpf().bpf_program__type(_c_void_p(prog)))


def program_set_autoload(prog: int, autoload: bool) -> None:
    _neg(libbpf().bpf_program__set_autoload(_c_void_p(prog), autoload), "set_autoload")


def program_set_log(prog: int, buf: ctypes.Array | None, level: int) -> None:
    """Give PROG a verifier log buffer (kept alive by the caller) and level."""
    lib = libbpf()
    if buf is not None:
        _neg(lib.bpf_program__set_log_buf(_c_void_p(prog), ctypes.addressof(buf), len(buf)),
             "set_log_buf")
    _neg(lib.bpf_program__set_log_level(_c_void_p(prog), level), "set_log_level")


def program_fd(prog: int) -> int:
    return int(libbpf().bpf_program__fd(_c_void_p(prog)))


def program_insn_count(prog: int) -> int:
    return int(libbpf().bpf_program__insn_cnt(_c_void_p(prog)))


class BpfInsn(ctypes.Structure):
    """struct bpf_insn (little endian: dst_reg in the low nibble)."""

    _fields_ = [
        ("code", ctypes.c_uint8),
        ("dst", ctypes.c_uint8, 4),
        ("src", ctypes.c_uint8, 4),
        ("off", ctypes.c_int16),
        ("imm", ctypes.c_int32),
    ]


def program_insns(prog: int) -> ctypes.Array[BpfInsn]:
    """PROG's instructions as libbpf holds them, writable in place.

    Only meaningful inside a prepare-load hook (see prog_handler): libbpf
    passes exactly this buffer to BPF_PROG_LOAD right after the hook.
    """
    lib = libbpf()
    n = int(lib.bpf_program__insn_cnt(_c_void_p(prog)))
    addr = lib.bpf_program__insns(_c_void_p(prog))
    if not addr or n <= 0:
        return (BpfInsn * 0)()
    return (BpfInsn * n).from_address(addr)


# libbpf_register_prog_handler(): a SEC() handler libbpf 1.1 lacks for "seccomp".
class _ProgHandlerOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("cookie", ctypes.c_long),
        ("prog_setup_fn", ctypes.c_void_p),
        ("prog_prepare_load_fn", ctypes.c_void_p),
        ("prog_attach_fn", ctypes.c_void_p),
    ]


_PREPARE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long)
_prepare = threading.local()
_handlers: dict[str, int] = {}


def _prepare_cb(prog: int | None, opts: int | None, cookie: int) -> int:
    hook = getattr(_prepare, "hook", None)
    if hook is None or not prog:
        return 0
    try:
        hook(int(prog))
    except BaseException as exc:  # noqa: BLE001 - must not unwind through C
        _prepare.error = exc
        return -_errno.EINVAL
    return 0


_prepare_cb_c = _PREPARE_FN(_prepare_cb)  # kept alive for the life of the process


def prog_handler(sec: str, prog_type: int) -> None:
    """Make libbpf give programs in SEC(sec) PROG_TYPE and our prepare-load hook.

    Once per process and section (libbpf's handler table is global); before
    bpf_object__open, which is when libbpf matches sections to handlers.
    """
    lib = libbpf()  # takes _lib_lock itself: before we hold it
    with _lib_lock:  # the check and the registration together: once per section
        if sec in _handlers:
            return
        opts = _ProgHandlerOpts(ctypes.sizeof(_ProgHandlerOpts), 0, None,
                                ctypes.cast(_prepare_cb_c, ctypes.c_void_p).value, None)
        ret = lib.libbpf_register_prog_handler(sec.encode(), prog_type, 0, ctypes.byref(opts))
        if ret >= 0:
            _handlers[sec] = ret
    _neg(ret, f"libbpf_register_prog_handler({sec})")  # may call libbpf(): not under the lock


@contextmanager
def prepare_hook(hook: Callable[[int], None]) -> Iterator[None]:
    """Call hook(prog) right before libbpf loads each program (this thread).

    An exception in the hook fails that load; it is re-raised afterwards.
    """
    old = getattr(_prepare, "hook", None)
    _prepare.hook, _prepare.error = hook, None
    try:
        yield
    finally:
        err = _prepare.error
        _prepare.hook, _prepare.error = old, None
        if err is not None:
            raise err  # the hook's failure is the cause of any load error


@dataclass(frozen=True)
class LibbpfMap:
    handle: int
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def map_describe(m: int) -> LibbpfMap:
    lib = libbpf()
    h = _c_void_p(m)
    return LibbpfMap(
        m,
        (lib.bpf_map__name(h) or b"").decode(),
        int(lib.bpf_map__type(h)),
        int(lib.bpf_map__key_size(h)),
        int(lib.bpf_map__value_size(h)),
        int(lib.bpf_map__max_entries(h)),
        int(lib.bpf_map__map_flags(h)),
    )


def map_set_autocreate(m: int, create: bool) -> None:
    _neg(libbpf().bpf_map__set_autocreate(_c_void_p(m), create), "bpf_map__set_autocreate")


def map_fd(m: int) -> int:
    return int(libbpf().bpf_map__fd(_c_void_p(m)))


def map_initial_value(m: int) -> bytes | None:
    """The contents libbpf will give a global-data map at load, None for others."""
    size = ctypes.c_size_t(0)
    ptr = libbpf().bpf_map__initial_value(_c_void_p(m), ctypes.byref(size))
    if not ptr:
        return None
    return ctypes.string_at(ptr, size.value)


def map_set_initial_value(m: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    _neg(libbpf().bpf_map__set_initial_value(_c_void_p(m), ctypes.addressof(buf), len(data)),
         "bpf_map__set_initial_value")


def possible_cpus() -> int:
    """Number of possible CPUs (the size of per-CPU map values)."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    except OSError:
        return os.cpu_count() or 1
    total = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        total += (int(hi) if hi else int(lo)) - int(lo) + 1
    return total


class RingBuffer:
    """libbpf's ring_buffer reading one BPF_MAP_TYPE_RINGBUF map.

    ON_RECORD gets each record's bytes; poll()/consume() return how many
    records were handed over.  An exception in ON_RECORD stops the pass and
    is raised from poll()/consume().
    """

    def __init__(self, map_fd: int, on_record: Callable[[bytes], None]) -> None:
        self._on_record = on_record
        self._error: BaseException | None = None
        self._cb = _RINGBUF_FN(self._sample)
        lib = libbpf()
        handle = lib.ring_buffer__new(map_fd, self._cb, None, None)
        if not handle:
            err = ctypes.get_errno() or _errno.EINVAL
            raise OSError(err, f"ring_buffer__new: {os.strerror(err)}")
        self._handle: int | None = int(handle)

    def _sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        try:
            self._on_record(ctypes.string_at(data, size) if data else b"")
        except BaseException as exc:  # noqa: BLE001 - raised again by poll/consume
            self._error = exc
            return -1
        return 0

    def _done(self, ret: int, what: str) -> int:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc
        if ret == -_errno.EINTR:
            return 0
        return _neg(ret, what)

    def poll(self, timeout_ms: int) -> int:
        if self._handle is None:
            raise OSError(_errno.EBADF, "ring buffer closed")
        return self._done(libbpf().ring_buffer__poll(_c_void_p(self._handle), timeout_ms),
                          "ring_buffer__poll")

    def consume(self) -> int:
        if self._handle is None:
            raise OSError(_errno.EBADF, "ring buffer closed")
        return self._done(libbpf().ring_buffer__consume(_c_void_p(self._handle)),
                          "ring_buffer__consume")

    def fileno(self) -> int:
        """libbpf's epoll fd: readable when a record is waiting."""
        if self._handle is None:
            raise OSError(_errno.EBADF, "ring buffer closed")
        return int(libbpf().ring_buffer__epoll_fd(_c_void_p(self._handle)))

    def close(self) -> None:
        if self._handle is not None:
            libbpf().ring_buffer__free(_c_void_p(self._handle))
            self._handle = None
