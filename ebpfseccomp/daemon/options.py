"""The daemon's settings, merged from ebpfseccompd.conf and the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import protocol
from ..catalog import Principals


@dataclass
class Options:
    config: Path
    socket: str
    socket_mode: int = 0o660
    socket_group: str | None = None
    max_frame: int = protocol.DEFAULT_MAX_FRAME
    #: None: as many as RLIMIT_NOFILE allows (server.FdLimits)
    max_clients: int | None = None
    client_timeout: float = 10.0
    idle_timeout: float = 300.0
    audit_log: str | None = None
    drop_privileges: bool = False
    user: str | None = None
    #: submit is off unless ebpfseccompd.conf enables it ([submit] enabled = true)
    submit: bool = False
    submit_users: Principals = field(default_factory=lambda: Principals(everyone=True))
