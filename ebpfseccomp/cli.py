"""The `ebpfseccomp` command: a thin shell over the library.

Each subcommand lives in ebpfseccomp/commands/<name>.py and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable
taking the parsed arguments and returning an exit status.  This module only
wires them together and turns EbpfSeccompError into one clear paragraph and
a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence

from . import __version__
from .errors import EbpfSeccompError

#: Subcommand modules, in the order `--help` lists them.
COMMANDS = ("record", "convert", "build", "check", "disasm", "emulate", "syscalls", "probe", "load",
            "run", "daemon")

DESCRIPTION = """\
eBPF seccomp filters.  Record what a program does, or start from the seccomp
profile your container runtime already uses:

  ebpfseccomp record -o seccomp.json -- CMD       run CMD, write the profile it needs
  ebpfseccomp convert seccomp.json -o filter.o    OCI/Docker profile -> eBPF filter
  ebpfseccomp run --profile seccomp.json -- CMD   attach it (or libseccomp's classic
                                                  filter where eBPF is not supported)

or write a filter in restricted C, then

  ebpfseccomp build filter.c -o filter.o     compile it (clang -target bpf)
  ebpfseccomp check filter.o                 will the kernel's verifier take it?
  ebpfseccomp disasm filter.o                read what clang made of it
  ebpfseccomp emulate filter.o --syscall openat --arg 2=0x40
                                             what would it answer, without a kernel
  ebpfseccomp probe                          does this kernel run eBPF filters?
  ebpfseccomp run -f filter.o -- CMD ARGS    load, attach and exec CMD under it

Run `ebpfseccomp COMMAND --help` for each command's options.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ONLY (a command's name), only that command
    is registered, so that one command does not import every other's modules."""
    parser = _Parser(
        prog="ebpfseccomp",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in (only,) if only in COMMANDS else COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.commands.{name}":
                raise
            continue  # not built yet in this checkout
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=words[0] if words else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except EbpfSeccompError as exc:
        if getattr(args, "json", False):
            # scripts asked for JSON: the error is JSON too, on stdout
            print(json.dumps({"error": exc.message, "kind": type(exc).__name__,
                              "path": getattr(exc, "path", None),
                              "hint": getattr(exc, "hint", None),
                              "exit_status": exc.exit_code}))
        print(f"ebpfseccomp {args.command}: error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """The reader of our output closed it (`... | head -1`): stop quietly, as a
    command killed by SIGPIPE would, and keep Python from complaining again
    when it flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
