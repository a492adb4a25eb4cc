"""ebpfseccompd: load approved seccomp programs and hand them to clients.

On hosts where unprivileged bpf(2) is disabled a user cannot load an eBPF
filter but may attach one.  This daemon holds the privilege to load, decides
who may have which program (the catalog, ebpfseccomp/catalog.py), and passes
program fds over a Unix socket with SCM_RIGHTS (ebpfseccomp/protocol.py).

One thread, one selectors loop, non-blocking sockets.  Each client has its
own frame parser and output queue, a limit on the frame it may send and on
the time it may take to finish one; a client that breaks the protocol gets
an error reply and is dropped, every other client goes on being served.
docs/daemon.md describes operation, docs/protocol.md the wire format.
"""

from __future__ import annotations

import argparse
import array
import base64
import binascii
import contextlib
import errno
import grp
import hashlib
import json
import logging
import os
import pwd
import selectors
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import protocol
from .catalog import (
    TIERS,
    CatalogError,
    DaemonSettings,
    Entry,
    Principals,
    Problem,
    load_catalog,
    load_settings,
    parse_mode,
)
from .client import DEFAULT_SOCKET, SOCKET_ENV, default_socket
from .contract import Tier
from .errors import EbpfSeccompError, UsageError

log = logging.getLogger("ebpfseccompd")


# Linux socket options Python's socket module may not name.
SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
SO_PEERGROUPS = 59
SO_PEERPIDFD = 77
SD_LISTEN_FDS_START = 3

# Capability numbers (linux/capability.h).
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
CAP_NAMES = {
    CAP_SETGID: "CAP_SETGID",
    CAP_SETUID: "CAP_SETUID",
    CAP_SETPCAP: "CAP_SETPCAP",
    CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
    CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
    CAP_PERFMON: "CAP_PERFMON",
    CAP_BPF: "CAP_BPF",
}

RECV_SIZE = 65536
#: Stop reading from a client whose unsent replies exceed this many bytes.
MAX_PENDING_OUT = 1 << 20


def cap_bit(cap: int) -> int:
    return 1 << cap


def cap_names(mask: int) -> list[str]:
    return [CAP_NAMES.get(i, f"cap#{i}") for i in range(64) if mask & (1 << i)]


# --- who is the client -------------------------------------------------------


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


# --- the work the daemon asks of the rest of the toolchain -----------------


class LoadedProgram(Protocol):
    fd: int

    def close(self) -> None: ...


@dataclass
class Checked:
    """What the daemon needs to know of an object before loading it."""

    tier: Tier  # the lowest tier at which the kernel accepts the program
    loadable: bool
    problems: list[str]
    report: Any = None
    maps: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (key, value size)
    wants: Tier | None = None  # the tier it needs to work fully (PTRACE: reads user memory)
    program: str | None = None  # the program's name in the object


@dataclass
class Decision:
    """privilege.predict's answer for a client, reduced to what the daemon uses."""

    ok: bool
    tier: Tier
    reasons: list[str]
    reads_any_task: bool = False


class Backend:
    """Build, check, predict and load through the toolchain's modules.

    Tests substitute a fake; the daemon never calls bpf(2) itself."""

    def ptrace_scope(self) -> int | None:
        from . import privilege

        return privilege.SystemPolicy.current().ptrace_scope

    def build(self, entry: Entry, workdir: Path) -> Path:
        from . import build

        assert entry.source is not None
        out = workdir / f"{entry.name}.build.o"
        return build.build(
            entry.source, out=out, include_dirs=entry.include_dirs, defines=entry.defines
        )

    def check(self, path: Path, program: str | None) -> Checked:
        from . import elf, inspect

        obj = elf.load_object(str(path))
        report = inspect.check(obj, program)
        maps = {
            name: (spec.key_size, spec.value_size)
            for name, spec in obj.maps.items()
            if not spec.is_global
        }
        return Checked(
            tier=Tier(report.load_tier),
            loadable=bool(report.loadable),
            problems=[p.render(str(path)) for p in report.problems],
            report=report,
            maps=maps,
            wants=Tier(report.tier),
            program=report.program,
        )

    def predict(self, checked: Checked, peer: Peer) -> Decision:
        """What the kernel would answer PEER loading this object itself.

        The daemon stands in for the CAP_BPF load gate
        (kernel.unprivileged_bpf_disabled), so the prediction is made as if
        unprivileged loading were enabled; every other rule (instruction
        limit, loops, subprograms, map types, helper tier by capabilities and
        ptrace_scope) is applied to the client's own credentials.
        """
        from . import privilege

        creds = privilege.Credentials.from_mask(peer.uid, peer.caps)
        current = privilege.SystemPolicy.current()
        policy = privilege.SystemPolicy(
            ptrace_scope=current.ptrace_scope, unprivileged_bpf_disabled=0
        )
        pred = privilege.predict(checked.report, creds, policy)
        return Decision(
            ok=bool(pred.ok),
            tier=Tier(pred.tier),
            reasons=list(pred.reasons),
            reads_any_task=bool(pred.reads_any_task),
        )

    def load(
        self,
        path: Path,
        program: str | None,
        maps: dict[str, dict[bytes, bytes]],
        caps: int,
    ) -> LoadedProgram:
        """Load with the effective capability set lowered to CAPS."""
        from . import loader

        with effective_caps(caps):
            return loader.load(str(path), program, maps=maps)


# --- capabilities ------------------------------------------------------------

#: Capabilities of a client that carry over to a program the daemon loads
#: for it (CAP_BPF is the daemon's: it stands in for the load gate).
SUBMIT_CAPS = cap_bit(CAP_PERFMON) | cap_bit(CAP_SYS_PTRACE)


def tier_caps(tier: Tier, ptrace_scope: int | None) -> int:
    """The effective capabilities a catalog entry approved at TIER is loaded with.

    CAP_BPF always (the load itself).  CAP_SYS_PTRACE from the ptrace tier
    up, and at ptrace_scope 2 for every tier above none (Yama grants the
    extended helpers only to a loader with it, which also lets the program
    read any task's memory).  CAP_PERFMON for tracing.  Each tier includes
    the ones below it.
    """
    caps = cap_bit(CAP_BPF)
    if tier >= Tier.PTRACE:
        caps |= cap_bit(CAP_SYS_PTRACE)
    if tier >= Tier.EXTENDED and ptrace_scope == 2:
        caps |= cap_bit(CAP_SYS_PTRACE)
    if tier >= Tier.TRACING:
        caps |= cap_bit(CAP_PERFMON)
    return caps


def submit_caps(peer: Peer) -> int:
    """The effective capabilities a client's own object is loaded with:
    CAP_BPF, and those of CAP_PERFMON and CAP_SYS_PTRACE the client has
    (CAP_SYS_ADMIN counts as CAP_PERFMON, as the kernel's perfmon_capable)."""
    caps = cap_bit(CAP_BPF) | (peer.caps & SUBMIT_CAPS)
    if peer.has_cap(CAP_SYS_ADMIN):
        caps |= cap_bit(CAP_PERFMON)
    return caps


@contextlib.contextmanager
def effective_caps(want: int) -> Iterator[None]:
    """Lower the effective set to WANT (intersected with what is held) for
    the duration, then restore it.

    The kernel decides a program's tier from the loader's capabilities at
    load time, so a program loaded for a client must not inherit the
    daemon's other capabilities.  The daemon is single-threaded, so nothing
    else runs with the lowered set.  Without root nothing changes."""
    from . import sys as ksys

    cur = ksys.capget()
    new_eff = cur.effective & want
    if new_eff == cur.effective:
        yield
        return
    ksys.capset(new_eff, cur.permitted, cur.inheritable)
    try:
        yield
    finally:
        ksys.capset(cur.effective, cur.permitted, cur.inheritable)


def catalog_caps(entries: Sequence[Entry], ptrace_scope: int | None, submit: bool) -> int:
    """What --drop-privileges keeps: enough to load (and reload) every entry
    and, with submit enabled, to load with any client's CAP_PERFMON and
    CAP_SYS_PTRACE."""
    caps = cap_bit(CAP_BPF)
    for e in entries:
        caps |= tier_caps(e.tier, ptrace_scope)
    if submit:
        caps |= SUBMIT_CAPS
    return caps


def satisfies(decision: Decision, want: Tier) -> bool:
    """Does the tier the client would get include WANT?  PTRACE means reads
    of non-dumpable tasks (CAP_SYS_PTRACE), TRACING the tracing helpers."""
    if want == Tier.PTRACE:
        return decision.reads_any_task
    if want == Tier.TRACING:
        return decision.tier == Tier.TRACING
    return decision.tier >= want


def describe_grant(decision: Decision) -> str:
    what = decision.tier.name.lower()
    if decision.tier >= Tier.EXTENDED:
        what += ", reading " + (
            "any task's memory" if decision.reads_any_task else "only dumpable tasks' memory"
        )
    return what


PR_SET_KEEPCAPS = 8


def drop_privileges(keep: int, user: str | None, workdir: Path | None = None) -> None:
    """Keep only KEEP in the permitted and effective sets (and the bounding
    set), optionally switching to USER first; refuse if KEEP is not held."""
    from . import sys as ksys

    prm = ksys.capget().permitted
    missing = keep & ~prm
    if missing:
        raise EbpfSeccompError(
            f"cannot drop privileges: the catalog needs {', '.join(cap_names(missing))}, "
            "which this process does not hold",
            hint="run ebpfseccompd as root or with AmbientCapabilities= set in its unit",
        )
    pw = None
    if user is not None:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise UsageError(f"--user: no user named {user!r}") from None
    # The bounding set first, while CAP_SETPCAP is still effective: no
    # program the daemon might execute (clang, for a C entry) can regain more.
    for cap in range(64):
        if keep & cap_bit(cap):
            continue
        try:
            ksys.capbset_drop(cap)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                break  # past the last capability this kernel knows
            if exc.errno != errno.EPERM:
                raise
    if pw is not None:
        # PR_SET_KEEPCAPS keeps the permitted set over setuid() from root;
        # the effective set is cleared and raised again by capset below.
        if workdir is not None:
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
        ksys.prctl(PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
        ksys.prctl(PR_SET_KEEPCAPS, 0)
    ksys.capset(keep, keep, 0)
    ksys.set_no_new_privs()
    now = ksys.capget()
    if now.permitted & ~keep or now.effective != keep:
        raise EbpfSeccompError("capabilities did not drop as asked; refusing to run")


# --- catalog state -----------------------------------------------------------


@dataclass
class Loaded:
    entry: Entry
    object: Path
    checked: Checked
    maps: dict[str, dict[bytes, bytes]]
    caps: int  # effective capabilities it is loaded with
    program: LoadedProgram | None  # None for per_client entries
    sha256: str
    loaded_at: float

    def metadata(self) -> dict[str, Any]:
        e = self.entry
        return {
            "name": e.name,
            "description": e.description,
            "tier": e.tier.name.lower(),
            "needs_tier": self.checked.tier.name.lower(),
            "reads_any_task": bool(self.caps & cap_bit(CAP_SYS_PTRACE)),
            "program": e.program or self.checked.program or e.name,
            "per_client": e.per_client,
            "maps": sorted(self.checked.maps),
            "sha256": self.sha256,
            "loaded_at": self.loaded_at,
        }

    def close(self) -> None:
        if self.program is not None:
            with contextlib.suppress(Exception):
                self.program.close()
            self.program = None


def _map_bytes(value: int | str | list[int], size: int, where: str) -> bytes:
    if isinstance(value, list):
        if len(value) != size:
            raise CatalogError(f"{where}: {len(value)} bytes given, the map holds {size}")
        return bytes(value)
    from .loader import encode

    try:
        return encode(value, size, what=where)
    except EbpfSeccompError as exc:
        raise CatalogError(exc.message) from None


def encode_maps(entry: Entry, checked: Checked) -> dict[str, dict[bytes, bytes]]:
    """The entry's `maps` as the loader's {map: {key bytes: value bytes}}."""
    out: dict[str, dict[bytes, bytes]] = {}
    for name, pairs in entry.maps.items():
        if name not in checked.maps:
            known = ", ".join(sorted(checked.maps)) or "none"
            raise CatalogError(f"maps.{name}: the object has no such map (maps: {known})")
        ksize, vsize = checked.maps[name]
        out[name] = {
            _map_bytes(k, ksize, f"maps.{name}: key {k!r}"): _map_bytes(
                v, vsize, f"maps.{name}: value {v!r}"
            )
            for k, v in pairs
        }
    return out


# --- connections -------------------------------------------------------------


@dataclass
class Conn:
    sock: socket.socket
    peer: Peer
    parser: protocol.FrameParser
    opened: float
    last_active: float
    frame_started: float | None = None
    out: deque[list[Any]] = field(default_factory=deque)  # [bytes, offset, fds]
    out_bytes: int = 0
    write_stalled: float | None = None
    closing: bool = False
    reading: bool = True

    def fileno(self) -> int:
        return self.sock.fileno()


class Audit:
    """One JSON line per decision, flushed as written."""

    def __init__(self, path: str | None):
        self.path = path
        self.file: Any = None
        self.reopen()

    def reopen(self) -> None:
        """Open (again, after logrotate) the log file; on failure keep the old one."""
        if not self.path:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            if self.file is None:
                raise EbpfSeccompError(
                    f"cannot open the audit log: {exc.strerror}", path=self.path
                ) from None
            log.error(
                "audit log %s: cannot reopen (%s); still writing the old file",
                self.path,
                exc.strerror,
            )
            return
        if self.file is not None:
            self.file.close()
        self.file = os.fdopen(fd, "a", buffering=1)

    def write(self, peer: Peer, op: str, name: str | None, granted: bool, **extra: Any) -> None:
        if self.file is None:
            return
        rec = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            + f".{int(time.time() * 1000) % 1000:03d}Z",
            "uid": peer.uid,
            "gid": peer.gid,
            "pid": peer.pid,
            "op": op,
            "name": name,
            "granted": granted,
            **extra,
        }
        try:
            self.file.write(json.dumps(rec, separators=(",", ":")) + "\n")
        except OSError as exc:
            log.error("audit log %s: %s", self.path, exc)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Refusal(Exception):
    def __init__(self, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


@dataclass
class Options:
    config: Path
    socket: str
    socket_mode: int = 0o660
    socket_group: str | None = None
    max_frame: int = protocol.DEFAULT_MAX_FRAME
    max_clients: int = 1024
    client_timeout: float = 10.0
    idle_timeout: float = 300.0
    audit_log: str | None = None
    drop_privileges: bool = False
    user: str | None = None
    submit: bool = True
    submit_users: Principals = field(default_factory=lambda: Principals(everyone=True))


class Daemon:
    def __init__(self, opts: Options, backend: Backend | None = None):
        self.opts = opts
        self.audit = Audit(opts.audit_log)  # first: may refuse, before anything is made
        self.backend = backend or Backend()
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.owns_socket_path = False
        self.conns: dict[int, Conn] = {}
        self.loaded: dict[str, Loaded] = {}
        self.problems: list[Problem] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="ebpfseccompd-"))
        self.ptrace_scope = self.backend.ptrace_scope()
        self.counters: Counter[str] = Counter()
        self.started = time.time()
        self.running = False
        self._reload_pending = False
        self._stop_pending = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._shut = False

    # --- catalog ------------------------------------------------------------

    def _prepare(self, entry: Entry) -> Loaded:
        if entry.source is not None:
            obj = self.backend.build(entry, self.workdir)
        else:
            assert entry.object is not None
            obj = entry.object
        # Load from a private copy so that the file checked is the file loaded.
        private = self.workdir / f"{entry.name}.{entry.fingerprint[:12]}.o"
        if obj != private:
            shutil.copyfile(obj, private)
        checked = self.backend.check(private, entry.program)
        if not checked.loadable:
            raise CatalogError(
                "the object would not pass the verifier: "
                + "; ".join(checked.problems or ["(no reason given)"])
            )
        if checked.tier > entry.tier:
            need = checked.tier.name.lower()
            raise CatalogError(
                f"the program needs tier {need} but the entry approves "
                f'{entry.tier.name.lower()}; set tier = "{need}" to approve it'
            )
        if checked.wants is not None and checked.wants > entry.tier:
            log.warning(
                "catalog: %s reads user memory; approved at tier %s, its reads of "
                'non-dumpable tasks fail with EPERM (tier = "ptrace" allows them)',
                entry.name,
                entry.tier.name.lower(),
            )
        maps = encode_maps(entry, checked)
        digest = hashlib.sha256(private.read_bytes()).hexdigest()
        caps = tier_caps(entry.tier, self.ptrace_scope)
        program = self.backend.load(private, entry.program, maps, caps)
        if entry.per_client:
            # Loaded once now only so that a program the kernel refuses is
            # reported at startup rather than at the first request.
            program.close()
            program = None
        return Loaded(entry, private, checked, maps, caps, program, digest, time.time())

    def load_catalog(self) -> None:
        """(Re)read the catalog; entries whose files did not change keep
        their loaded program, so clients see no gap."""
        cat = load_catalog(self.opts.config)
        problems = list(cat.problems)
        new: dict[str, Loaded] = {}
        for name, entry in cat.entries.items():
            old = self.loaded.get(name)
            if old is not None and old.entry.fingerprint == entry.fingerprint:
                old.entry = entry  # principals may resolve differently now
                new[name] = old
                continue
            try:
                new[name] = self._prepare(entry)
                log.info("catalog: %s loaded (tier %s)", name, entry.tier.name.lower())
            except EbpfSeccompError as exc:
                problems.append(Problem(entry.file, exc.message if exc.path else exc.render()))
            except OSError as exc:
                problems.append(Problem(entry.file, str(exc)))
        for name, old in self.loaded.items():
            if new.get(name) is not old:
                old.close()
                with contextlib.suppress(OSError):
                    old.object.unlink()
        self.loaded = new
        self.problems = problems
        for p in problems:
            log.warning("catalog: skipped %s", p)
        log.info("catalog: %d entries serving, %d skipped", len(new), len(problems))

    # --- sockets --------------------------------------------------------------

    def open_socket(self) -> None:
        listen_fds = os.environ.get("LISTEN_FDS")
        listen_pid = os.environ.get("LISTEN_PID")
        if listen_fds and listen_pid and int(listen_pid) == os.getpid() and int(listen_fds) >= 1:
            for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
                os.environ.pop(var, None)
            sock = socket.socket(fileno=SD_LISTEN_FDS_START)
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise UsageError(
                    "socket activation handed fd 3, which is not a Unix stream socket",
                    hint="use ListenStream= in ebpfseccompd.socket",
                )
            for extra in range(SD_LISTEN_FDS_START + 1, SD_LISTEN_FDS_START + int(listen_fds)):
                with contextlib.suppress(OSError):
                    os.close(extra)
            log.info("using the socket systemd passed (fd 3)")
        else:
            path = self.opts.socket
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
                else:
                    raise UsageError(f"{path} exists and is not a socket; not replacing it")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            if self.opts.socket_group:
                try:
                    gid = grp.getgrnam(self.opts.socket_group).gr_gid
                except KeyError:
                    raise UsageError(
                        f"--socket-group: no group {self.opts.socket_group!r}"
                    ) from None
                os.chown(path, -1, gid)
            os.chmod(path, self.opts.socket_mode)
            self.owns_socket_path = True
            log.info("bound %s (mode %o)", path, self.opts.socket_mode)
        sock.setblocking(False)
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, "listen")

    def _listen(self) -> None:
        """Start accepting: only once setup (dropping privileges) is over, so a
        client that can connect is served by the daemon as it will run."""
        if self.listener is None:
            return
        self.listener.listen(min(1024, max(128, self.opts.max_clients)))
        name = self.listener.getsockname() or "the socket systemd passed (fd 3)"
        log.info("listening on %s", name)

    def _install_signals(self) -> None:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._wake_r, self._wake_w = r, w
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        self.sel.register(r, selectors.EVENT_READ, "wake")

        def on_hup(_sig: int, _frm: Any) -> None:
            self._reload_pending = True

        def on_term(_sig: int, _frm: Any) -> None:
            self._stop_pending = True

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)

    # --- main loop ----------------------------------------------------------

    def serve(self, ready: Callable[[], None] | None = None) -> None:
        self._install_signals()
        self._listen()
        self.running = True
        if ready:
            ready()
        try:
            while self.running:
                for key, mask in self.sel.select(self._next_timeout()):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            while key.fileobj.recv(256):  # type: ignore[union-attr]
                                pass
                    else:
                        conn: Conn = key.data
                        if mask & selectors.EVENT_READ and conn.fileno() in self.conns:
                            self._on_read(conn)
                        if mask & selectors.EVENT_WRITE and conn.fileno() in self.conns:
                            self._flush(conn)
                if self._stop_pending:
                    log.info("stopping")
                    break
                if self._reload_pending:
                    self._reload_pending = False
                    self.reload()
                self._sweep()
        finally:
            self.shutdown()

    def reload(self) -> None:
        log.info("SIGHUP: reloading the catalog")
        self.counters["reloads"] += 1
        self.ptrace_scope = self.backend.ptrace_scope()
        try:
            settings = load_settings(self.opts.config)
            self.opts.client_timeout = settings.client_timeout
            self.opts.idle_timeout = settings.idle_timeout
            self.opts.submit = settings.submit
            self.opts.submit_users = settings.submit_users
        except CatalogError as exc:
            log.error("reload: %s (settings unchanged)", exc.render())
        try:
            self.load_catalog()
        except EbpfSeccompError as exc:
            log.error("reload failed, catalog unchanged: %s", exc.render())
        self.audit.reopen()

    def _next_timeout(self) -> float:
        return min(1.0, max(0.05, self.opts.client_timeout / 4))

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if (
                conn.frame_started is not None
                and now - conn.frame_started > self.opts.client_timeout
            ):
                self.counters["dropped_timeout"] += 1
                self._fail(
                    conn,
                    "timeout",
                    f"frame not finished within {self.opts.client_timeout:g} s; closing",
                )
            elif (
                conn.write_stalled is not None
                and now - conn.write_stalled > self.opts.client_timeout
            ):
                self.counters["dropped_not_reading"] += 1
                self._close(conn)
            elif not conn.out and now - conn.last_active > self.opts.idle_timeout:
                self.counters["dropped_idle"] += 1
                self._close(conn)

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(64):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and the like: leave the rest in the backlog.
                log.error("accept: %s", exc)
                self.counters["accept_errors"] += 1
                return
            self.counters["connections"] += 1
            sock.setblocking(False)
            if len(self.conns) >= self.opts.max_clients:
                self.counters["refused_busy"] += 1
                with contextlib.suppress(OSError):
                    sock.send(
                        protocol.encode(
                            protocol.error_reply(
                                None,
                                "busy",
                                f"too many clients (limit {self.opts.max_clients}); retry",
                            )
                        )
                    )
                sock.close()
                continue
            try:
                peer = identify(sock)
            except OSError as exc:
                log.warning("could not identify a client: %s", exc)
                sock.close()
                continue
            now = time.monotonic()
            conn = Conn(sock, peer, protocol.FrameParser(self.opts.max_frame), now, now)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _on_read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            if conn.parser.in_frame:
                self.counters["dropped_mid_frame"] += 1
            self._close(conn)
            return
        conn.last_active = time.monotonic()
        try:
            conn.parser.feed(data)
            for payload in conn.parser.frames():
                self._handle(conn, payload)
                if conn.closing or conn.fileno() not in self.conns:
                    return
        except protocol.ProtocolError as exc:
            self.counters[f"error_{exc.code}"] += 1
            self._fail(conn, exc.code, exc.message)
            return
        if conn.parser.in_frame:
            if conn.frame_started is None:
                conn.frame_started = conn.last_active
        else:
            conn.frame_started = None

    def _fail(self, conn: Conn, code: str, message: str) -> None:
        """Send a final error and close once it is out (or the timeout hits)."""
        self._queue(conn, protocol.error_reply(None, code, message), [])
        conn.closing = True
        conn.frame_started = None
        self._set_events(conn)
        self._flush(conn)

    def _queue(self, conn: Conn, message: dict[str, Any], fds: list[int]) -> None:
        data = protocol.encode(message)
        conn.out.append([data, 0, fds])
        conn.out_bytes += len(data)

    def _set_events(self, conn: Conn) -> None:
        if conn.fileno() not in self.conns:
            return
        want_read = not conn.closing and conn.out_bytes < MAX_PENDING_OUT
        events = (selectors.EVENT_READ if want_read else 0) | (
            selectors.EVENT_WRITE if conn.out else 0
        )
        if events == 0:
            events = selectors.EVENT_WRITE if conn.closing else selectors.EVENT_READ
        self.sel.modify(conn.sock, events, conn)

    def _flush(self, conn: Conn) -> None:
        while conn.out:
            item = conn.out[0]
            data, off, fds = item
            try:
                if fds:
                    n = conn.sock.sendmsg(
                        [data[off:]],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
                    )
                    for fd in fds:
                        os.close(fd)
                    item[2] = []
                else:
                    n = conn.sock.send(memoryview(data)[off:])
            except (BlockingIOError, InterruptedError):
                if conn.write_stalled is None:
                    conn.write_stalled = time.monotonic()
                break
            except OSError:
                self._close(conn)
                return
            conn.write_stalled = None
            off += n
            conn.out_bytes -= n
            if off >= len(data):
                conn.out.popleft()
            else:
                item[1] = off
        if not conn.out:
            conn.write_stalled = None
            if conn.closing:
                self._close(conn)
                return
        self._set_events(conn)

    def _close(self, conn: Conn) -> None:
        if self.conns.pop(conn.fileno(), None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        for _data, _off, fds in conn.out:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        conn.out.clear()
        conn.sock.close()

    # --- requests -------------------------------------------------------------

    def _handle(self, conn: Conn, payload: bytes) -> None:
        rid: Any = None
        try:
            req = protocol.decode(payload)
            rid = req.id
            self.counters[f"op_{req.op}"] += 1
            handler = getattr(self, f"op_{req.op}")
            reply, fds = handler(conn.peer, req)
            self._queue(conn, protocol.ok_reply(rid, **reply), fds)
        except protocol.ProtocolError as exc:
            if exc.fatal:
                raise
            self.counters[f"error_{exc.code}"] += 1
            self._queue(conn, protocol.error_reply(exc.request_id, exc.code, exc.message), [])
        except Refusal as exc:
            self.counters[f"error_{exc.code}"] += 1
            self._queue(conn, protocol.error_reply(rid, exc.code, exc.message, **exc.extra), [])
        except Exception as exc:  # a bug must not take the other clients down
            log.exception("internal error serving %s", conn.peer.describe())
            self.counters["error_internal"] += 1
            self._queue(conn, protocol.error_reply(rid, "internal", f"internal error: {exc}"), [])
        self._flush(conn)

    def op_list(self, peer: Peer, req: protocol.Request) -> tuple[dict[str, Any], list[int]]:
        entries = [
            ld.metadata()
            for name, ld in sorted(self.loaded.items())
            if ld.entry.allows(peer.uid, peer.all_gids)
        ]
        self.audit.write(peer, "list", None, True, count=len(entries))
        return {"entries": entries, "submit": self._may_submit(peer)}, []

    def _may_submit(self, peer: Peer) -> bool:
        return self.opts.submit and self.opts.submit_users.allows(peer.uid, peer.all_gids)

    def op_stats(self, peer: Peer, req: protocol.Request) -> tuple[dict[str, Any], list[int]]:
        st: dict[str, Any] = {
            "uptime": round(time.time() - self.started, 3),
            "pid": os.getpid(),
            "clients": len(self.conns),
            "entries": len(self.loaded),
            "skipped": len(self.problems),
            "counters": dict(sorted(self.counters.items())),
            "open_fds": _count_fds(),
            "rss_kib": _rss_kib(),
        }
        if peer.uid == 0 or peer.uid == os.getuid():
            st["problems"] = [str(p) for p in self.problems]
        self.audit.write(peer, "stats", None, True)
        return st, []

    def _refuse(self, peer: Peer, op: str, name: str | None, code: str, message: str) -> Refusal:
        self.audit.write(peer, op, name, False, code=code, reason=message)
        return Refusal(code, message)

    def op_get(self, peer: Peer, req: protocol.Request) -> tuple[dict[str, Any], list[int]]:
        name = req.str_arg("name")
        assert name is not None
        ld = self.loaded.get(name)
        if ld is None:
            skipped = [p for p in self.problems if p.file.stem == name]
            if skipped:
                raise self._refuse(
                    peer,
                    "get",
                    name,
                    "unavailable",
                    f"entry {name!r} did not load; the daemon's log says why",
                )
            raise self._refuse(peer, "get", name, "not_found", f"no catalog entry {name!r}")
        if not ld.entry.allows(peer.uid, peer.all_gids):
            raise self._refuse(
                peer,
                "get",
                name,
                "forbidden",
                f"entry {name!r} is for {ld.entry.allowed.describe()} "
                f"({ld.entry.file.name}); you are uid {peer.uid} gid {peer.gid}",
            )
        if ld.program is not None:
            fd = os.dup(ld.program.fd)
            instance = "shared"
        else:
            try:
                prog = self.backend.load(ld.object, ld.entry.program, ld.maps, ld.caps)
            except EbpfSeccompError as exc:
                raise self._refuse(peer, "get", name, "load_failed", exc.render()) from None
            try:
                fd = os.dup(prog.fd)
            finally:
                prog.close()
            instance = "per-client"
            self.counters["per_client_loads"] += 1
        self.audit.write(
            peer, "get", name, True, tier=ld.entry.tier.name.lower(), instance=instance
        )
        return {**ld.metadata(), "instance": instance, "fds": ["program"]}, [fd]

    def op_submit(self, peer: Peer, req: protocol.Request) -> tuple[dict[str, Any], list[int]]:
        label = req.str_arg("name", required=False) or "submitted"
        if not self._may_submit(peer):
            raise self._refuse(
                peer,
                "submit",
                label,
                "forbidden",
                "submit is disabled for you by ebpfseccompd.conf [submit]",
            )
        data = req.args.get("object")
        if not isinstance(data, str):
            raise protocol.ProtocolError(
                "bad_request", "submit needs 'object': base64 of an ELF object", request_id=req.id
            )
        try:
            blob = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise protocol.ProtocolError(
                "bad_request", "'object' is not valid base64", request_id=req.id
            ) from None
        program = req.str_arg("program", required=False)
        want_name = req.str_arg("tier", required=False)
        if want_name is not None and want_name not in TIERS:
            raise protocol.ProtocolError(
                "bad_request", f"'tier' must be one of {', '.join(TIERS)}", request_id=req.id
            )
        fd_, tmp = tempfile.mkstemp(suffix=".o", dir=self.workdir)
        path = Path(tmp)
        try:
            with os.fdopen(fd_, "wb") as f:
                f.write(blob)
            try:
                checked = self.backend.check(path, program)
            except EbpfSeccompError as exc:
                raise self._refuse(peer, "submit", label, "invalid_object", exc.render()) from None
            if not checked.loadable:
                raise self._refuse(
                    peer,
                    "submit",
                    label,
                    "invalid_object",
                    "the verifier would refuse it: " + "; ".join(checked.problems),
                )
            decision = self.backend.predict(checked, peer)
            if not decision.ok:
                raise self._refuse(
                    peer,
                    "submit",
                    label,
                    "refused",
                    f"uid {peer.uid} could not load this object itself: "
                    + " ".join(decision.reasons),
                )
            want = TIERS[want_name] if want_name else None
            if want is not None and not satisfies(decision, want):
                raise self._refuse(
                    peer,
                    "submit",
                    label,
                    "refused",
                    f"tier {want.name.lower()} asked for, but uid {peer.uid} loading it "
                    f"itself would get {describe_grant(decision)}",
                )
            caps = submit_caps(peer)
            try:
                prog = self.backend.load(path, program, {}, caps)
            except EbpfSeccompError as exc:
                raise self._refuse(peer, "submit", label, "load_failed", exc.render()) from None
            try:
                fd = os.dup(prog.fd)
            finally:
                prog.close()
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        self.counters["submit_loads"] += 1
        tier = decision.tier.name.lower()
        self.audit.write(peer, "submit", label, True, tier=tier, caps=cap_names(caps))
        reply: dict[str, Any] = {
            "name": label,
            "tier": tier,
            "needs_tier": checked.tier.name.lower(),
            "reads_any_task": decision.reads_any_task,
            "fds": ["program"],
        }
        if checked.wants == Tier.PTRACE and not decision.reads_any_task:
            reply["note"] = (
                "the program reads user memory; without CAP_SYS_PTRACE its reads of "
                "non-dumpable tasks fail with EPERM"
            )
        return reply, [fd]

    # --- teardown -------------------------------------------------------------

    def shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        self.running = False
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.listener)
            self.listener.close()
            self.listener = None
            if self.owns_socket_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.opts.socket)
        for ld in self.loaded.values():
            ld.close()
        self.loaded = {}
        if self._wake_r is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(-1)
            self._wake_r.close()
            assert self._wake_w is not None
            self._wake_w.close()
            self._wake_r = self._wake_w = None
        self.audit.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.sel.close()


def _count_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def _rss_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


# --- command line ------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ebpfseccompd",
        description="Load approved eBPF seccomp filters and hand them to clients "
        "over a Unix socket (docs/daemon.md).",
    )
    p.add_argument(
        "--config",
        required=True,
        metavar="DIR",
        help="catalog directory: one TOML file per entry, plus ebpfseccompd.conf",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        help=f"socket path (default {DEFAULT_SOCKET}, or ${SOCKET_ENV}); "
        "ignored under systemd socket activation",
    )
    p.add_argument("--socket-mode", metavar="MODE", help="octal mode of the socket (0660)")
    p.add_argument("--socket-group", metavar="GROUP", help="group owning the socket")
    p.add_argument(
        "--max-frame",
        type=int,
        metavar="BYTES",
        help=f"largest request frame (default {protocol.DEFAULT_MAX_FRAME})",
    )
    p.add_argument("--max-clients", type=int, metavar="N", help="concurrent clients (1024)")
    p.add_argument(
        "--client-timeout",
        type=float,
        metavar="S",
        help="seconds a client may take to finish a frame or read a reply (10)",
    )
    p.add_argument(
        "--idle-timeout", type=float, metavar="S", help="seconds an idle connection is kept (300)"
    )
    p.add_argument("--audit-log", metavar="FILE", help="append one JSON line per decision")
    p.add_argument(
        "--drop-privileges",
        action="store_true",
        help="after loading, keep only the capabilities the catalog needs",
    )
    p.add_argument(
        "--user",
        metavar="USER",
        help="with --drop-privileges: also switch to USER (keeping those capabilities)",
    )
    p.add_argument(
        "--foreground",
        action="store_true",
        help="accepted for compatibility: the daemon never forks "
        "(run it under systemd or a supervisor)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log each connection")
    return p


def options_from(args: argparse.Namespace) -> Options:
    settings: DaemonSettings = load_settings(args.config)
    opts = Options(
        config=Path(args.config), socket=args.socket or settings.socket or default_socket()
    )
    opts.socket_mode = parse_mode(args.socket_mode) if args.socket_mode else settings.socket_mode
    opts.socket_group = args.socket_group or settings.socket_group
    max_frame = args.max_frame or settings.max_frame or protocol.DEFAULT_MAX_FRAME
    if max_frame < protocol.MIN_MAX_FRAME:
        raise UsageError(f"--max-frame must be at least {protocol.MIN_MAX_FRAME}")
    opts.max_frame = max_frame
    opts.max_clients = args.max_clients or settings.max_clients
    opts.client_timeout = args.client_timeout or settings.client_timeout
    opts.idle_timeout = args.idle_timeout or settings.idle_timeout
    opts.audit_log = args.audit_log or settings.audit_log
    opts.drop_privileges = args.drop_privileges or settings.drop_privileges
    opts.user = args.user or settings.user
    opts.submit = settings.submit
    opts.submit_users = settings.submit_users
    if opts.max_clients < 1 or opts.client_timeout <= 0 or opts.idle_timeout <= 0:
        raise UsageError("--max-clients and the timeouts must be positive")
    return opts


def main(argv: Sequence[str] | None = None, backend: Backend | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="ebpfseccompd: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    daemon: Daemon | None = None
    try:
        opts = options_from(args)
        daemon = Daemon(opts, backend)
        daemon.load_catalog()
        # The socket first: its path may be where only root can create it.
        daemon.open_socket()
        if opts.drop_privileges:
            keep = catalog_caps(
                [ld.entry for ld in daemon.loaded.values()],
                daemon.ptrace_scope,
                opts.submit,
            )
            drop_privileges(keep, opts.user, daemon.workdir)
            log.info("privileges dropped; keeping %s", ", ".join(cap_names(keep)))
        daemon.serve(ready=_notify_ready)
    except EbpfSeccompError as exc:
        print(f"ebpfseccompd: error: {exc.render()}", file=sys.stderr)
        if daemon is not None:
            daemon.shutdown()
        return exc.exit_code
    return 0


def _notify_ready() -> None:
    """sd_notify READY=1 when started as Type=notify."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", addr)


if __name__ == "__main__":
    sys.exit(main())
