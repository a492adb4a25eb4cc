"""`ebpfseccomp daemon list|stats|get NAME|submit OBJ`: ask ebpfseccompd.

Argument parsing and printing only; ebpfseccomp/client.py does the talking.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .. import client


def register(sub: Any) -> None:
    p = sub.add_parser(
        "daemon",
        help="ask the loader daemon (ebpfseccompd) what it offers",
        description="Talk to ebpfseccompd: list the filters you may get, show its "
        "counters, fetch one (prints its metadata), or submit an object of your own.",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        help=f"daemon socket (default ${client.SOCKET_ENV} or {client.DEFAULT_SOCKET})",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--retry", type=float, default=0.0, metavar="S", help="retry connecting for S seconds"
    )
    ops = p.add_subparsers(dest="daemon_op", metavar="OP")
    ops.required = True
    ops.add_parser("list", help="the catalog entries you may get")
    ops.add_parser("stats", help="the daemon's counters")
    g = ops.add_parser("get", help="fetch entry NAME and print its metadata")
    g.add_argument("name")
    s = ops.add_parser("submit", help="have the daemon load OBJ within your own tier")
    s.add_argument("object", metavar="OBJ")
    s.add_argument("--program", help="program name in OBJ")
    s.add_argument(
        "--tier", choices=("none", "extended", "ptrace", "tracing"), help="ask for at least TIER"
    )
    p.set_defaults(func=run)


def _print(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _show_entry(meta: dict[str, Any]) -> None:
    print(f"{meta.get('name')}: {meta.get('description') or '(no description)'}")
    for key in ("tier", "needs_tier", "program", "per_client", "instance", "maps", "sha256"):
        if key in meta and meta[key] not in (None, []):
            val = meta[key]
            if isinstance(val, list):
                val = ", ".join(str(v) for v in val)
            print(f"  {key.replace('_', ' ')}: {val}")


def run(args: argparse.Namespace) -> int:
    with client.Client(args.socket, retry=args.retry) as c:
        if args.daemon_op == "list":
            entries = c.list()
            if args.json:
                _print(entries)
            elif not entries:
                print("no catalog entries for you")
            else:
                width = max(len(e["name"]) for e in entries)
                for e in entries:
                    flags = e["tier"] + (", per client" if e.get("per_client") else "")
                    print(f"{e['name']:<{width}}  [{flags}]  {e.get('description', '')}")
        elif args.daemon_op == "stats":
            st = c.stats()
            if args.json:
                _print(st)
            else:
                for key, val in st.items():
                    if key == "counters":
                        for ck, cv in val.items():
                            print(f"  {ck}: {cv}")
                    elif key == "problems":
                        for prob in val:
                            print(f"skipped: {prob}")
                    else:
                        print(f"{key}: {val}")
        elif args.daemon_op in ("get", "submit"):
            if args.daemon_op == "get":
                fd, meta = c.get(args.name)
            else:
                fd, meta = c.submit(args.object, program=args.program, tier=args.tier)
            os.close(fd)
            if args.json:
                _print(meta)
            else:
                _show_entry(meta)
                print("  (program fd received; use `ebpfseccomp run --daemon NAME -- CMD`)")
    return 0
