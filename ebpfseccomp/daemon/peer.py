"""Who the client is: what the kernel says about the process at the other end.

SO_PEERCRED (pid, uid, gid at connect()), SO_PEERGROUPS, and the effective
capabilities read race-free through a pidfd (docs/protocol.md, "Client
identity").  Nothing here trusts anything the client sends.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
from dataclasses import dataclass

from .caps import cap_bit

# Linux socket options Python's socket module may not name.
SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
SO_PEERGROUPS = 59
SO_PEERPIDFD = 77


@dataclass
class Peer:
    """What the kernel says about the process at the other end.

    uid, gid, pid: SO_PEERCRED, fixed when the client called connect().
    groups: SO_PEERGROUPS (supplementary groups at connect()).
    caps: the connecting process's effective capabilities, read through a
    pidfd (see `read_peer_caps`), or 0 when they cannot be read reliably.
    """

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    caps: int = 0
    caps_source: str = "none"
    same_userns: bool = False

    @property
    def all_gids(self) -> tuple[int, ...]:
        return (self.gid, *self.groups)

    def has_cap(self, cap: int) -> bool:
        return bool(self.caps & cap_bit(cap))

    def describe(self) -> str:
        return f"uid {self.uid} gid {self.gid} pid {self.pid}"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    for n in (64, 65536):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * n)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue
            return ()
        count = len(raw) // 4
        return tuple(x & 0xFFFFFFFF for x in struct.unpack(f"{count}i", raw[: 4 * count]))
    return ()


def peer_pidfd(sock: socket.socket) -> int | None:
    """SO_PEERPIDFD (Linux 6.5+): a pidfd for the process that connected."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        return None


def _pidfd_pid(pidfd: int) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return -1


def _status_fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, _, val = line.partition(":")
        out[key] = val.strip()
    return out


def read_peer_caps(pidfd: int, uid: int, gid: int) -> tuple[int, bool]:
    """(effective capabilities, same user namespace) of the process behind PIDFD.

    Race-free against pid reuse: the pid is taken from the pidfd's fdinfo,
    /proc/PID/status and /proc/PID/ns/user are read, and only then is the
    pidfd asked whether its process still exists (pidfd_send_signal with
    signal 0).  A pid cannot be reused while its process exists (a zombie
    keeps it too), so if the check passes the files read belonged to the
    process behind the pidfd.  Capabilities count only if the process's
    real, effective, saved and filesystem uids and gids are still the ones
    SO_PEERCRED recorded at connect() and it lives in the daemon's user
    namespace (capabilities in a child namespace grant nothing to a program
    the daemon loads in its own); otherwise the answer is 0.
    """
    pid = _pidfd_pid(pidfd)
    if pid <= 0:
        return 0, False
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = _status_fields(f.read())
        try:
            userns = os.readlink(f"/proc/{pid}/ns/user")
            same_ns = userns == os.readlink("/proc/self/ns/user")
        except OSError:
            same_ns = False
        signal.pidfd_send_signal(pidfd, 0)
    except (OSError, ValueError):
        return 0, False
    uids = {int(x) for x in fields.get("Uid", "").split()}
    gids = {int(x) for x in fields.get("Gid", "").split()}
    if uids != {uid} or gids != {gid} or not same_ns:
        return 0, same_ns
    try:
        return int(fields.get("CapEff", "0"), 16), True
    except ValueError:
        return 0, True


def identify(sock: socket.socket) -> Peer:
    pid, uid, gid = peer_credentials(sock)
    peer = Peer(pid=pid, uid=uid, gid=gid, groups=peer_groups(sock))
    pidfd = peer_pidfd(sock)
    source = "SO_PEERPIDFD"
    if pidfd is None and pid > 0:
        # Kernels before 6.5: a pidfd opened now may name a process that
        # reused the pid if the client already exited; the uid check below
        # and the kernel's own checks when the client attaches limit this.
        try:
            pidfd = os.pidfd_open(pid)
            source = "pidfd_open"
        except OSError:
            pidfd = None
    if pidfd is not None:
        try:
            peer.caps, peer.same_userns = read_peer_caps(pidfd, uid, gid)
            peer.caps_source = source
        except OSError:
            peer.caps = 0
        finally:
            os.close(pidfd)
    return peer
