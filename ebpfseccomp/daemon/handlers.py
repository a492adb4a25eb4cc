"""The requests: list, get, submit, stats, and the catalog they serve.

`Service.handle(peer, payload)` turns one request frame into one reply and
the fds it carries, and never raises: a protocol error is an error reply, a
refusal names its rule, and anything else (a bug) is logged and answered
`internal`.  Every fd a request creates is registered in its `FdSet` the
moment it exists, and closed there if the request does not end in a reply
that carries it, so no error path can leak one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import protocol
from ..catalog import TIERS, CatalogError, Problem, load_catalog, load_settings
from ..contract import Tier
from ..errors import EbpfSeccompError
from .audit import Audit
from .backend import Backend
from .caps import cap_names, describe_grant, satisfies, submit_caps
from .entries import Loaded, prepare
from .options import Options
from .peer import Peer
from .ratelimit import RateLimitedLog

log = logging.getLogger("ebpfseccompd")

Result = tuple[dict[str, Any], list[int]]


class Refusal(Exception):
    def __init__(self, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class FdSet:
    """The fds one request created.  `keep()` hands them to the caller (they
    travel with the reply); otherwise `close()` closes every one."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def dup(self, fd: int) -> int:
        new = os.dup(fd)
        self.fds.append(new)
        return new

    def keep(self) -> list[int]:
        fds, self.fds = self.fds, []
        return fds

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _fd_shortage(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


class Service:
    """The catalog and the request handlers (no sockets here)."""

    def __init__(
        self,
        opts: Options,
        backend: Backend,
        audit: Audit,
        counters: Counter[str],
        workdir: Path,
        clients: Callable[[], int] = lambda: 0,
    ):
        self.opts = opts
        self.backend = backend
        self.audit = audit
        self.counters = counters
        self.workdir = workdir
        self.clients = clients
        self.loaded: dict[str, Loaded] = {}
        self.problems: list[Problem] = []
        self.ptrace_scope = backend.ptrace_scope()
        self.started = time.time()
        self._bug_log = RateLimitedLog(log, "internal error", interval=60.0, burst=5)

    # --- the catalog ----------------------------------------------------------

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
                new[name] = prepare(entry, self.backend, self.workdir, self.ptrace_scope)
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

    def reload(self) -> None:
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

    def close(self) -> None:
        for ld in self.loaded.values():
            ld.close()
        self.loaded = {}

    # --- one request ------------------------------------------------------------

    def handle(self, peer: Peer, payload: bytes) -> tuple[dict[str, Any], list[int]]:
        """The reply to PAYLOAD and the fds it carries (the caller owns them).

        Never raises an Exception: whatever goes wrong is an error reply.
        Fatal protocol errors cannot come from here (framing is the
        server's), so the connection always stays usable."""
        rid: Any = None
        fds = FdSet()
        try:
            req = protocol.decode(payload)
            rid = req.id
            self.counters[f"op_{req.op}"] += 1
            handler: Callable[[Peer, protocol.Request, FdSet], dict[str, Any]] = getattr(
                self, f"op_{req.op}"
            )
            result = handler(peer, req, fds)
            return protocol.ok_reply(rid, **result), fds.keep()
        except protocol.ProtocolError as exc:
            fds.close()
            self.counters[f"error_{exc.code}"] += 1
            return protocol.error_reply(exc.request_id, exc.code, exc.message), []
        except Refusal as exc:
            fds.close()
            self.counters[f"error_{exc.code}"] += 1
            return protocol.error_reply(rid, exc.code, exc.message, **exc.extra), []
        except Exception as exc:  # a bug must not take the other clients down
            fds.close()
            if _fd_shortage(exc):
                self.counters["error_overloaded"] += 1
                return protocol.error_reply(
                    rid, "overloaded", "the daemon is out of file descriptors; retry shortly"
                ), []
            self._bug_log.exception("internal error serving %s", peer.describe())
            self.counters["error_internal"] += 1
            return protocol.error_reply(
                rid, "internal", f"internal error ({type(exc).__name__}); see the daemon's log"
            ), []
        finally:
            fds.close()  # nothing is left here after keep(): this only acts on a BaseException

    # --- the operations -------------------------------------------------------------

    def may_submit(self, peer: Peer) -> bool:
        return self.opts.submit and self.opts.submit_users.allows(peer.uid, peer.all_gids)

    def op_list(self, peer: Peer, req: protocol.Request, fds: FdSet) -> dict[str, Any]:
        entries = [
            ld.metadata()
            for name, ld in sorted(self.loaded.items())
            if ld.entry.allows(peer.uid, peer.all_gids)
        ]
        self.audit.write(peer, "list", None, True, count=len(entries))
        return {"entries": entries, "submit": self.may_submit(peer)}

    def op_stats(self, peer: Peer, req: protocol.Request, fds: FdSet) -> dict[str, Any]:
        st: dict[str, Any] = {
            "uptime": round(time.time() - self.started, 3),
            "pid": os.getpid(),
            "clients": self.clients(),
            "entries": len(self.loaded),
            "skipped": len(self.problems),
            "counters": dict(sorted(self.counters.items())),
            "open_fds": count_fds(),
            "rss_kib": rss_kib(),
        }
        if peer.uid == 0 or peer.uid == os.getuid():
            st["problems"] = [str(p) for p in self.problems]
        self.audit.write(peer, "stats", None, True)
        return st

    def _refuse(self, peer: Peer, op: str, name: str | None, code: str, message: str) -> Refusal:
        self.audit.write(peer, op, name, False, code=code, reason=message)
        return Refusal(code, message)

    def op_get(self, peer: Peer, req: protocol.Request, fds: FdSet) -> dict[str, Any]:
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
            fds.dup(ld.program.fd)
            instance = "shared"
        else:
            try:
                prog = self.backend.load(ld.object, ld.entry.program, ld.maps, ld.caps)
            except EbpfSeccompError as exc:
                raise self._refuse(peer, "get", name, "load_failed", exc.render()) from None
            try:
                fds.dup(prog.fd)
            finally:
                prog.close()
            instance = "per-client"
            self.counters["per_client_loads"] += 1
        self.audit.write(
            peer, "get", name, True, tier=ld.entry.tier.name.lower(), instance=instance
        )
        return {**ld.metadata(), "instance": instance, "fds": ["program"]}

    def op_submit(self, peer: Peer, req: protocol.Request, fds: FdSet) -> dict[str, Any]:
        label = req.str_arg("name", required=False) or "submitted"
        if not self.may_submit(peer):
            why = (
                "submit is not enabled on this daemon (ebpfseccompd.conf: [submit] enabled = true)"
                if not self.opts.submit
                else "submit is not for you: ebpfseccompd.conf [submit] users/groups "
                f"do not include uid {peer.uid} gid {peer.gid}"
            )
            raise self._refuse(peer, "submit", label, "forbidden", why)
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
            try:
                # the sysctl as it is now: the client loading it itself would meet this one
                decision = self.backend.predict(checked, peer, self.backend.ptrace_scope())
            except EbpfSeccompError as exc:
                raise self._refuse(peer, "submit", label, "invalid_object", exc.render()) from None
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
                fds.dup(prog.fd)
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
        return reply


def count_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def rss_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1
