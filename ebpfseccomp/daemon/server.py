"""The event loop: the listening socket, connections, and what one client
may hold.

One thread, one selectors loop, non-blocking sockets.  Each client has its
own frame parser and reply queue.  What a client can make the daemon hold
is bounded, and a client at its bound is simply not served further (and
not read) until it takes its replies, so no client can starve the others:

- bytes: one frame being received (`--max-frame`) plus one recv, and at
  most MAX_PENDING_OUT bytes of replies;
- requests: at most MAX_QUEUED_REPLIES replies not yet sent; requests
  beyond that stay unread in the socket (backpressure);
- fds: at most MAX_CLIENT_FDS program fds queued for it or sent to it and
  not yet read (SIOCOUTQ tells when it has read everything);
- turns: at most FRAMES_PER_TURN requests of one client are handled before
  the other clients' turn.

File descriptors are sized from RLIMIT_NOFILE (`FdLimits`): the soft limit
is raised to the hard one, a reserve is kept for loads, logs and refusing
a connection, a budget for the fds in replies, and the rest is the client
limit.  A client beyond it gets `busy` and is closed; if accept() fails
anyway (EMFILE), the daemon stops accepting for a while (backing off up to
a second), refuses one waiting client with the spare fd it keeps for that,
and logs at a bounded rate.  A client that takes no reply for
`--client-timeout` is dropped.  Any exception in one client's code closes
that client only.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import gc
import grp
import logging
import os
import resource
import selectors
import shutil
import signal
import socket
import stat
import tempfile
import termios
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import protocol
from ..errors import EbpfSeccompError, UsageError
from .audit import Audit
from .backend import Backend
from .handlers import Service, count_fds
from .options import Options
from .peer import Peer, identify
from .ratelimit import RateLimitedLog

log = logging.getLogger("ebpfseccompd")

SD_LISTEN_FDS_START = 3
RECV_SIZE = 65536
#: Stop serving (and reading) a client whose unsent replies exceed this many bytes.
MAX_PENDING_OUT = 1 << 20
#: Replies not yet sent to one client: its outstanding requests.
MAX_QUEUED_REPLIES = 64
#: Program fds one client holds in the daemon's queue or unread in its socket.
MAX_CLIENT_FDS = 16
#: Requests of one client handled before the other clients get their turn.
FRAMES_PER_TURN = 8
#: fds kept free for loads (map fds, object files, a compiler's pipes), the
#: audit log, identifying a client, and accepting one more to refuse it.
RESERVE_FDS = 64
#: Default ceiling for the number of clients when the fd limit allows more.
DEFAULT_MAX_CLIENTS = 16384
#: How often timeouts are checked.
SWEEP_INTERVAL = 0.25
#: How often a client waiting to read its fds (or for the fd budget) is re-checked.
POLL_INTERVAL = 0.01
#: How often, while the fd budget is spent, every client holding fds is re-checked.
RECLAIM_INTERVAL = 0.05
SIOCOUTQ = termios.TIOCOUTQ


# --- limits from RLIMIT_NOFILE ---------------------------------------------------


@dataclass
class FdLimits:
    nofile: int  # the soft RLIMIT_NOFILE the daemon runs with
    max_clients: int
    reply_fds: int  # fds in replies (queued or unread) over all clients
    reserve: int = RESERVE_FDS


def fd_limits(requested: int | None) -> FdLimits:
    """Raise the soft RLIMIT_NOFILE to the hard one and divide it up.

    REQUESTED is --max-clients (None: as many as fit, up to
    DEFAULT_MAX_CLIENTS); a request above what fits is lowered, with a
    warning that says how to raise the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)
    nofile = soft if soft != resource.RLIM_INFINITY else 1 << 20
    in_use = max(count_fds(), 0)
    avail = nofile - in_use - RESERVE_FDS
    if avail < 8:
        raise EbpfSeccompError(
            f"RLIMIT_NOFILE is {nofile} with {in_use} fds in use: too few to serve clients",
            hint=f"raise it to at least {in_use + RESERVE_FDS + 64} "
            "(LimitNOFILE= in the unit, or ulimit -n)",
        )
    reply_fds = max(4, min(4096, avail // 4))
    fit = avail - reply_fds
    if requested is None:
        max_clients = min(fit, DEFAULT_MAX_CLIENTS)
    elif requested > fit:
        log.warning(
            "--max-clients %d lowered to %d: RLIMIT_NOFILE is %d (%d in use, %d kept for "
            "loads and refusals, %d for fds in replies); raise LimitNOFILE= for more",
            requested,
            fit,
            nofile,
            in_use,
            RESERVE_FDS,
            reply_fds,
        )
        max_clients = fit
    else:
        max_clients = requested
    return FdLimits(nofile, max_clients, reply_fds)


# --- connections -----------------------------------------------------------------


@dataclass
class OutItem:
    data: bytes
    off: int
    fds: list[int]


@dataclass
class Conn:
    sock: socket.socket
    fd: int
    peer: Peer
    parser: protocol.FrameParser
    opened: float
    last_active: float
    frame_started: float | None = None  # a partial frame is in, since then
    out: deque[OutItem] = field(default_factory=deque)
    out_bytes: int = 0
    out_fds: int = 0  # fds in `out`
    unread_fds: int = 0  # fds sent since the client was last seen to have read everything
    write_stalled: float | None = None  # a send would block, since then
    blocked_since: float | None = None  # at its own limits with requests waiting, since then
    closing: bool = False
    events: int = 0  # what the selector watches for it now

    def fileno(self) -> int:
        return self.fd

    @property
    def held_fds(self) -> int:
        return self.out_fds + self.unread_fds


_LISTEN = "listen"
_WAKE = "wake"


class Daemon:
    def __init__(self, opts: Options, backend: Backend | None = None):
        self.opts = opts
        self.audit = Audit(opts.audit_log)  # first: may refuse, before anything is made
        self.backend = backend or Backend()
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.owns_socket_path = False
        self.conns: dict[int, Conn] = {}
        self.pending: dict[int, Conn] = {}  # complete requests buffered, not yet handled
        self.unread: dict[int, Conn] = {}  # clients sent fds they may not have read yet
        self.workdir = Path(tempfile.mkdtemp(prefix="ebpfseccompd-"))
        self.counters: Counter[str] = Counter()
        self.service = Service(
            opts, self.backend, self.audit, self.counters, self.workdir, lambda: len(self.conns)
        )
        self.limits = FdLimits(nofile=0, max_clients=opts.max_clients or 1, reply_fds=64)
        self.held_fds = 0  # over all clients: queued or unread fds in replies
        self.running = False
        self._reload_pending = False
        self._stop_pending = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._spare_fd: int | None = None
        self._accept_paused_until: float | None = None
        self._accept_backoff = 0.05
        self._next_sweep = 0.0
        self._last_reclaim_all = 0.0
        self._shut = False
        self._accept_log = RateLimitedLog(log, "accept", interval=10.0, burst=1)
        self._client_log = RateLimitedLog(log, "client errors", interval=10.0, burst=3)

    # --- catalog (kept here for callers of the old module) ------------------------

    @property
    def loaded(self) -> dict[str, Any]:
        return self.service.loaded

    @property
    def problems(self) -> list[Any]:
        return self.service.problems

    @property
    def ptrace_scope(self) -> int | None:
        return self.service.ptrace_scope

    def load_catalog(self) -> None:
        self.service.load_catalog()

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
        self.sel.register(sock, selectors.EVENT_READ, _LISTEN)

    def _listen(self) -> None:
        """Start accepting: only once setup (dropping privileges) is over, so a
        client that can connect is served by the daemon as it will run."""
        if self.listener is None:
            return
        self.listener.listen(min(4096, max(128, self.limits.max_clients)))
        name = self.listener.getsockname() or "the socket systemd passed (fd 3)"
        log.info(
            "listening on %s (up to %d clients; RLIMIT_NOFILE %d)",
            name,
            self.limits.max_clients,
            self.limits.nofile,
        )

    def _install_signals(self) -> None:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._wake_r, self._wake_w = r, w
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        self.sel.register(r, selectors.EVENT_READ, _WAKE)

        def on_hup(_sig: int, _frm: Any) -> None:
            self._reload_pending = True

        def on_term(_sig: int, _frm: Any) -> None:
            self._stop_pending = True

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)

    # --- main loop ----------------------------------------------------------

    def serve(self, ready: Callable[[], None] | None = None) -> None:
        try:
            self.limits = fd_limits(self.opts.max_clients)
            self._spare_fd = _open_spare()
            self._install_signals()
            self._listen()
            self.running = True
            # what start-up made lives as long as the daemon: keep it out of
            # the collector's way, so collections stay short under load
            gc.collect()
            gc.freeze()
            if ready:
                ready()
            while self.running:
                for key, mask in self.sel.select(self._timeout()):
                    if key.data == _LISTEN:
                        try:
                            self._accept()
                        except Exception as exc:  # not one client's fault: back off
                            self._accept_log.exception("accepting a client failed")
                            self._pause_accept(OSError(str(exc)))
                    elif key.data == _WAKE:
                        with contextlib.suppress(OSError):
                            while key.fileobj.recv(256):  # type: ignore[union-attr]
                                pass
                    else:
                        self._guarded(key.data, self._on_event, mask)
                self._run_pending()
                if self._stop_pending:
                    log.info("stopping")
                    break
                if self._reload_pending:
                    self._reload_pending = False
                    self.reload()
                now = time.monotonic()
                if self._accept_paused_until is not None and now >= self._accept_paused_until:
                    self._resume_accept()
                if now >= self._next_sweep:
                    self._next_sweep = now + SWEEP_INTERVAL
                    self._sweep(now)
        finally:
            self.shutdown()

    def reload(self) -> None:
        log.info("SIGHUP: reloading the catalog")
        try:
            self.service.reload()
        except Exception:  # a reload must not stop the service
            log.exception("reload failed; still serving the catalog as it was")

    def _timeout(self) -> float:
        if any(self._may_handle(c, probe=False) for c in self.pending.values()):
            return 0.0
        t = min(1.0, max(0.05, self.opts.client_timeout / 4))
        if self.pending:
            t = POLL_INTERVAL
        if self._accept_paused_until is not None:
            t = min(t, max(0.0, self._accept_paused_until - time.monotonic()))
        return t

    def _guarded(self, conn: Conn, fn: Callable[..., None], *args: Any) -> None:
        """Run one client's code; whatever it raises closes that client only."""
        try:
            fn(conn, *args)
        except Exception:  # a bug in one client's path must not stop the service
            self.counters["dropped_internal"] += 1
            self._client_log.exception("internal error with %s; closing it", conn.peer.describe())
            with contextlib.suppress(Exception):
                self._close(conn)

    def _on_event(self, conn: Conn, mask: int) -> None:
        if mask & selectors.EVENT_READ and conn.fd in self.conns:
            self._on_read(conn)
        if mask & selectors.EVENT_WRITE and conn.fd in self.conns:
            self._flush(conn)

    def _run_pending(self) -> None:
        for conn in list(self.pending.values()):
            if conn.fd in self.conns:
                self._guarded(conn, self._work)
            else:
                self.pending.pop(conn.fd, None)

    def _sweep(self, now: float) -> None:
        for conn in list(self.conns.values()):
            self._guarded(conn, self._sweep_one, now)

    def _sweep_one(self, conn: Conn, now: float) -> None:
        timeout = self.opts.client_timeout
        if conn.frame_started is not None and now - conn.frame_started > timeout:
            self.counters["dropped_timeout"] += 1
            self._fail(conn, "timeout", f"frame not finished within {timeout:g} s; closing")
        elif (conn.write_stalled is not None and now - conn.write_stalled > timeout) or (
            conn.blocked_since is not None and now - conn.blocked_since > timeout
        ):
            self.counters["dropped_not_reading"] += 1
            self._close(conn)
        elif (
            not conn.out
            and conn.fd not in self.pending
            and now - conn.last_active > self.opts.idle_timeout
        ):
            self.counters["dropped_idle"] += 1
            self._close(conn)

    # --- accepting ---------------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(64):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                self.counters["accept_errors"] += 1
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._shed_one()
                self._pause_accept(exc)
                return
            self._accept_backoff = 0.05
            self.counters["connections"] += 1
            if len(self.conns) >= self.limits.max_clients:
                limit = self.limits.max_clients
                self._refuse_busy(sock, f"too many clients (limit {limit}); retry")
                continue
            try:
                sock.setblocking(False)
                peer = identify(sock)
            except Exception as exc:  # noqa: BLE001 - OSError, or what /proc held
                self.counters["identify_errors"] += 1
                self._client_log.warning("could not identify a client: %s", exc)
                self._refuse_busy(sock, "the daemon could not identify you; retry")
                continue
            now = time.monotonic()
            conn = Conn(sock, sock.fileno(), peer, protocol.FrameParser(self.opts.max_frame),
                        now, now)  # fmt: skip
            self.conns[conn.fd] = conn
            self._guarded(conn, self._set_events)

    def _refuse_busy(self, sock: socket.socket, message: str) -> None:
        self.counters["refused_busy"] += 1
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(protocol.error_frame(None, "busy", message))
        sock.close()

    def _shed_one(self) -> None:
        """Out of fds: give up the spare one to accept a waiting client and
        tell it `busy`, rather than leave it hanging in the backlog."""
        if self._spare_fd is None or self.listener is None:
            return
        os.close(self._spare_fd)
        self._spare_fd = None
        try:
            sock, _ = self.listener.accept()
        except OSError:
            pass
        else:
            self._refuse_busy(sock, "the daemon is out of file descriptors; retry")
        self._spare_fd = _open_spare()

    def _pause_accept(self, exc: OSError) -> None:
        """Stop watching the listener for a while: it stays readable while
        accept() fails, and watching it would spin."""
        if self.listener is not None and self._accept_paused_until is None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.listener)
        delay = self._accept_backoff
        self._accept_backoff = min(1.0, delay * 2)
        self._accept_paused_until = time.monotonic() + delay
        self._accept_log.error(
            "accept: %s; not accepting for %.2f s (%d clients connected)",
            exc.strerror or exc,
            delay,
            len(self.conns),
        )

    def _resume_accept(self) -> None:
        self._accept_paused_until = None
        if self.listener is not None:
            self.sel.register(self.listener, selectors.EVENT_READ, _LISTEN)
        if self._spare_fd is None:
            self._spare_fd = _open_spare()

    # --- one client -----------------------------------------------------------------

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
        if conn.unread_fds:  # a client that asks again has usually read the last reply
            self._reclaim(conn)
        try:
            conn.parser.feed(data)
        except protocol.ProtocolError as exc:
            self.counters[f"error_{exc.code}"] += 1
            self._fail(conn, exc.code, exc.message)
            return
        self._work(conn)

    def _may_handle(self, conn: Conn, probe: bool = True) -> bool:
        """May one more request of CONN be handled now?  Not while its replies
        are not being taken (PROBE: ask the kernel whether it has read the
        fds sent so far), nor while the fd budget of all clients is spent."""
        if conn.closing:
            return False
        own = len(conn.out) < MAX_QUEUED_REPLIES and conn.out_bytes < MAX_PENDING_OUT
        if own and conn.held_fds >= MAX_CLIENT_FDS:
            if probe:
                self._reclaim(conn)
            own = conn.held_fds < MAX_CLIENT_FDS
        if not own:
            if conn.blocked_since is None:
                conn.blocked_since = time.monotonic()
            return False
        conn.blocked_since = None
        if self.held_fds >= self.limits.reply_fds and probe:
            self._reclaim_all()
        return self.held_fds < self.limits.reply_fds

    def _reclaim(self, conn: Conn) -> None:
        """Stop counting the fds CONN was sent once it has read everything."""
        if conn.unread_fds and _unread_bytes(conn.sock) == 0:
            self.held_fds -= conn.unread_fds
            conn.unread_fds = 0
            self.unread.pop(conn.fd, None)

    def _reclaim_all(self) -> None:
        """The fd budget is spent: find the clients that have read their fds
        since (at most every RECLAIM_INTERVAL; one ioctl per client holding
        fds, and there are at most as many as the budget)."""
        now = time.monotonic()
        if now - self._last_reclaim_all < RECLAIM_INTERVAL:
            return
        self._last_reclaim_all = now
        for conn in list(self.unread.values()):
            self._reclaim(conn)

    def _work(self, conn: Conn) -> None:
        """Handle CONN's buffered requests, up to its turn and its limits."""
        handled = 0
        while handled < FRAMES_PER_TURN and conn.parser.has_frame and self._may_handle(conn):
            try:
                payload = conn.parser.next_frame()
            except protocol.ProtocolError as exc:
                self.counters[f"error_{exc.code}"] += 1
                self._fail(conn, exc.code, exc.message)
                return
            if payload is None:
                break
            handled += 1
            self._handle(conn, payload)
            if conn.closing or conn.fd not in self.conns:
                return
        if handled:
            conn.frame_started = None
        if conn.parser.has_frame:
            self.pending[conn.fd] = conn
        else:
            try:  # a bad header behind the frames just handled fails now, not at the timeout
                conn.parser.next_frame()
            except protocol.ProtocolError as exc:
                self.counters[f"error_{exc.code}"] += 1
                self._fail(conn, exc.code, exc.message)
                return
            self.pending.pop(conn.fd, None)
            if conn.parser.in_frame and conn.frame_started is None:
                conn.frame_started = time.monotonic()
        self._flush(conn)

    def _handle(self, conn: Conn, payload: bytes) -> None:
        message, fds = self.service.handle(conn.peer, payload)
        self._queue(conn, message, fds)

    def _fail(self, conn: Conn, code: str, message: str) -> None:
        """Send a final error and close once it is out (or the timeout hits)."""
        self.pending.pop(conn.fd, None)
        self._queue(conn, protocol.error_reply(None, code, message), [])
        conn.closing = True
        conn.frame_started = None
        self._flush(conn)

    def _queue(self, conn: Conn, message: dict[str, Any], fds: list[int]) -> None:
        try:
            data = protocol.encode(message)
        except Exception:  # noqa: BLE001 - a reply that cannot be encoded is a bug
            _close_fds(fds)
            fds = []
            self.counters["error_internal"] += 1
            self._client_log.exception("cannot encode a reply to %s", conn.peer.describe())
            data = protocol.error_frame(message.get("id"), "internal", "internal error")
        conn.out.append(OutItem(data, 0, fds))
        conn.out_bytes += len(data)
        conn.out_fds += len(fds)
        self.held_fds += len(fds)

    def _set_events(self, conn: Conn) -> None:
        if conn.fd not in self.conns:
            return
        want = 0
        if not conn.closing and conn.fd not in self.pending:
            want |= selectors.EVENT_READ  # the parser holds no complete request
        if conn.out:
            want |= selectors.EVENT_WRITE
        if want == conn.events:
            return
        if conn.events == 0:
            self.sel.register(conn.sock, want, conn)
        elif want == 0:
            self.sel.unregister(conn.sock)
        else:
            self.sel.modify(conn.sock, want, conn)
        conn.events = want

    def _flush(self, conn: Conn) -> None:
        while conn.out:
            item = conn.out[0]
            try:
                if item.fds:
                    n = conn.sock.sendmsg(
                        [memoryview(item.data)[item.off :]],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", item.fds))],
                    )
                    k = len(item.fds)
                    _close_fds(item.fds)
                    item.fds = []
                    conn.out_fds -= k
                    conn.unread_fds += k  # still held: in the socket until the client reads
                    self.unread[conn.fd] = conn
                else:
                    n = conn.sock.send(memoryview(item.data)[item.off :])
            except (BlockingIOError, InterruptedError):
                if conn.write_stalled is None:
                    conn.write_stalled = time.monotonic()
                break
            except OSError:
                self._close(conn)
                return
            conn.write_stalled = None
            item.off += n
            conn.out_bytes -= n
            if item.off >= len(item.data):
                conn.out.popleft()
        if not conn.out:
            conn.write_stalled = None
            if conn.closing:
                self._close(conn)
                return
        self._set_events(conn)

    def _close(self, conn: Conn) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        self.pending.pop(conn.fd, None)
        self.unread.pop(conn.fd, None)
        if conn.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(conn.sock)
            conn.events = 0
        for item in conn.out:
            _close_fds(item.fds)
        self.held_fds -= conn.held_fds
        conn.out_fds = conn.unread_fds = 0
        conn.out.clear()
        conn.sock.close()

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
        self.service.close()
        if self._wake_r is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(-1)
            self._wake_r.close()
            assert self._wake_w is not None
            self._wake_w.close()
            self._wake_r = self._wake_w = None
        if self._spare_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._spare_fd)
            self._spare_fd = None
        self.audit.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.sel.close()


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _unread_bytes(sock: socket.socket) -> int:
    """SIOCOUTQ: what the peer has not read yet (0: every fd sent was received)."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), SIOCOUTQ, buf, True)
    except OSError:
        return 1
    return buf[0]
