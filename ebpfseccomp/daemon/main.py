"""The `ebpfseccompd` command line: options, start-up order, exit status."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import protocol
from ..catalog import DaemonSettings, load_settings, parse_mode
from ..client import DEFAULT_SOCKET, SOCKET_ENV, default_socket
from ..errors import EbpfSeccompError, UsageError
from .backend import Backend
from .caps import cap_names, catalog_caps, drop_privileges
from .options import Options
from .server import Daemon

log = logging.getLogger("ebpfseccompd")


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
    p.add_argument(
        "--max-clients",
        type=int,
        metavar="N",
        help="concurrent clients (default: as many as RLIMIT_NOFILE allows, at most 16384)",
    )
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
    if (
        (opts.max_clients is not None and opts.max_clients < 1)
        or opts.client_timeout <= 0
        or opts.idle_timeout <= 0
    ):
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
