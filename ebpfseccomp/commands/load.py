"""`ebpfseccomp load`: load a filter and pin it in bpffs for others to attach."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..loader import group_assignments, load

DESCRIPTION = """\
Load a filter object as an administrator and pin the program in a bpf file
system, so that users who may not load BPF programs themselves (Debian sets
kernel.unprivileged_bpf_disabled=2) can still run under it:

  sudo ebpfseccomp load filter.o --pin /sys/fs/bpf/filter --mode 0644
  ebpfseccomp run --pinned /sys/fs/bpf/filter -- CMD ARGS      (any user)

The program is loaded with the administrator's privilege: its helper tier
(what it may call, whose memory it may read) is decided now, by the loader's
capabilities and kernel.yama.ptrace_scope, not by whoever attaches it later.
Its maps are pinned beside it in PATH_maps/NAME with the same read
permissions; only the owner can update them.  State in maps is shared by
every process that runs under the pinned program.

--mode sets the pin's file mode: 0600 (the default) keeps it to the owner,
0644 lets every user attach it (attaching needs only read access).  The
directories on the way must be searchable for those users too
(e.g. chmod o+x /sys/fs/bpf).

--map NAME:KEY=VALUE preloads a map entry (repeatable).  KEY and VALUE are
numbers (42, 0x2a, -1), syscall names (openat: its number), hex:BYTES or
str:TEXT (NUL-padded).  Global variables live in .data/.bss/.rodata: there
KEY is the byte offset, e.g. --map .rodata:0=5.

Names in bpffs may not contain '.'.  To remove a pin: rm PATH; rm -r PATH_maps
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="load a filter and pin it for other users",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("object", metavar="OBJ.o", help="object built by `ebpfseccomp build`")
    p.add_argument("--pin", metavar="PATH", required=True,
                   help="where to pin the program, inside bpffs (e.g. /sys/fs/bpf/NAME)")
    p.add_argument("--mode", metavar="MODE", default=None,
                   help="octal file mode of the pin (default 0600; 0644: anyone may attach)")
    p.add_argument("--program", metavar="NAME", help="which program, if the object has several")
    p.add_argument("--map", metavar="NAME:KEY=VALUE", action="append", default=[],
                   help="preload a map entry (repeatable)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the static check and privilege prediction; ask the kernel")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show the prediction, libbpf's messages and the verifier log")
    p.set_defaults(func=run)


def parse_mode(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        mode = int(text, 8)
    except ValueError:
        raise UsageError(f"--mode {text!r}: expected an octal mode such as 0644") from None
    if not 0 <= mode <= 0o777:
        raise UsageError(f"--mode {text!r}: expected permission bits, 0000..0777")
    return mode


def run(args: argparse.Namespace) -> int:
    mode = parse_mode(args.mode)
    maps = group_assignments(args.map)
    with load(args.object, args.program, maps=maps, pin=args.pin, pin_mode=mode,
              check=not args.no_check) as prog:
        if args.verbose:
            if prog.prediction is not None:
                print(f"prediction: {prog.prediction.message}")
            for m in prog.messages:
                print(m)
            if prog.log:
                print(prog.log.rstrip())
        print(prog.summary())
        where = f" and {args.pin}_maps/" if prog.maps else ""
        print(f"pinned at {args.pin}{where}"
              + (f" (mode {mode:04o})" if mode is not None else " (mode 0600: owner only)"))
        print(f"run under it: ebpfseccomp run --pinned {args.pin} -- CMD ARGS")
    return 0
