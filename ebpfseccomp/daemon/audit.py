"""The audit log: one JSON line per decision (docs/daemon.md, "Audit log")."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from ..errors import EbpfSeccompError
from .peer import Peer

log = logging.getLogger("ebpfseccompd")


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
            # ensure_ascii: any string (even one a client made up) encodes
            self.file.write(json.dumps(rec, separators=(",", ":"), default=str) + "\n")
        except (OSError, ValueError) as exc:
            log.error("audit log %s: %s", self.path, exc)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
