"""`ebpfseccomp record`: run a command, record its syscalls, write a profile."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UsageError

DESCRIPTION = """\
Run CMD, record every system call it and everything it starts make (threads,
forks, execs; per ABI, so a 64-bit program that runs a 32-bit one is
recorded under both), and write an OCI seccomp profile that allows exactly
those syscalls:

  ebpfseccomp record -o profile.json -- CMD ARGS
  ebpfseccomp run --profile profile.json -- CMD ARGS      # run it confined

The profile is what Docker (--security-opt seccomp=profile.json), podman and
`ebpfseccomp convert` read.  Calls it does not list fail with ENOSYS
(--default-errno EPERM to change), as on a kernel without them, so programs
take their fallbacks.

Argument values: for the syscalls whose arguments policies usually
constrain, record keeps each distinct value it saw (socket family and type,
ioctl request, prctl option, personality, clone flags, mmap/mprotect prot,
open/openat flags, fcntl cmd; docs/record.md has the table).  --args
SYSCALL:INDEX adds one (repeatable).  --with-args writes them as argument
rules: the profile then allows socket(AF_INET, SOCK_STREAM) but not
AF_PACKET, if that is all the program did.  Stricter, and more likely to
refuse a later run that takes a different path.

Backends (--backend; the one used is named on stderr and in --json):
  ebpf     an eBPF seccomp filter that logs each call to a ring buffer and
           allows it (patched kernel; CAP_BPF and CAP_PERFMON); fast
  tracepoint
           a program on the raw_syscalls:sys_enter tracepoint (any kernel with
           BTF, x86_64; root); fast, but runs for every task of the machine
  notify   seccomp user notification: every call waits for the recorder,
           which lets it continue (no privilege, any kernel >= 5.6, needs
           ptrace access to the child: Yama ptrace_scope 0 or 1); slow
  auto     the first of ebpf, tracepoint, notify that can run here (default)

The command runs with no_new_privs (setuid binaries do not gain privilege,
as under `run`).  Recording ends when the last process of the tree exits;
descendants still running --grace seconds after CMD exited, or anything
still running at --timeout, are killed.  The exit status is CMD's.

examples:
  ebpfseccomp record -o sh.json -- sh -c 'ls / | wc -l'
  ebpfseccomp record --with-args -o srv.json -- python3 server.py
  ebpfseccomp record --args setsockopt:1 --json -o p.json -- curl -s URL
  ebpfseccomp record -o p.json --filter-out filter.o -- make
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="record a command's syscalls into a seccomp profile",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", metavar="PROFILE.json",
                   help="write the OCI seccomp profile here (default: stdout, "
                   "unless --json)")
    p.add_argument("--with-args", action="store_true",
                   help="write argument rules for the recorded values")
    p.add_argument("--args", metavar="SYSCALL:INDEX", action="append", default=[],
                   help="also record argument INDEX (0-5) of SYSCALL (repeatable)")
    p.add_argument("--backend", choices=("auto", "ebpf", "tracepoint", "notify"),
                   default="auto",
                   help="how to record (default: auto)")
    p.add_argument("--ring-size", type=int, metavar="BYTES",
                   help="ring buffer of the ebpf and tracepoint backends (power of two; "
                   "default 16 MiB)")
    p.add_argument("--default-errno", choices=("ENOSYS", "EPERM"), default="ENOSYS",
                   help="what unlisted calls fail with (default: ENOSYS)")
    p.add_argument("--filter-out", metavar="FILTER.{c,o}",
                   help="also convert the profile to an eBPF filter (C or object)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="kill the process tree after this long (default: none)")
    p.add_argument("--grace", type=float, default=2.0, metavar="SECONDS",
                   help="how long descendants may outlive CMD (default: 2)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary (backend, syscalls, argument values) as the "
                   "last line of stdout, after CMD's own output")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                   help="the command to record")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..build import default_arch
    from ..record import parse_arg_option, record
    from ..record.profile import dumps, to_profile, write

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else list(args.cmd)
    extra = tuple(parse_arg_option(a) for a in args.args)
    for value, what in ((args.timeout, "--timeout"), (args.grace, "--grace")):
        if value is not None and not value > 0:
            raise UsageError(f"{what} {value}: must be a positive number of seconds")
    rec = record(cmd, backend=args.backend, extra_args=extra, timeout=args.timeout,
                 grace=args.grace, ring_bytes=args.ring_size)
    profile = to_profile(rec, native=default_arch(), with_args=args.with_args,
                         default_errno=args.default_errno)
    where = "stdout"
    if args.output:
        write(profile, args.output)
        where = args.output
    elif not args.json:
        sys.stdout.write(dumps(profile))
    err = sys.stderr
    names = sum(len(v) for v in rec.named().values())
    print(f"ebpfseccomp record: backend {rec.backend}: {rec.events} calls, {names} syscalls "
          f"on {', '.join(rec.abis()) or 'no ABI'}, {len(rec.tasks)} processes; "
          f"profile: {where}", file=err)
    for abi, nr, count in rec.unnamed():
        print(f"ebpfseccomp record: warning: {abi} syscall number {nr} ({count} calls) has no "
              "name: an OCI profile cannot allow it (it gets the default action)", file=err)
    for note in rec.notes[1:]:
        print(f"ebpfseccomp record: {note}", file=err)
    filter_out = None
    if args.filter_out:
        filter_out = _convert(profile, args.filter_out)
        print(f"ebpfseccomp record: filter: {filter_out}", file=err)
    if args.json:
        summary = rec.summary()
        summary["profile"] = args.output
        summary["filter"] = filter_out
        print(json.dumps(summary))  # one line, after whatever CMD printed
    status = rec.exit_status
    if status is None:
        return 1
    return 128 - status if status < 0 else status


def _convert(profile: dict[str, object], out: str) -> str:
    """The profile through `convert`'s path: C (.c) or a built object."""
    import tempfile

    from ..policy.convert import select_profile
    from ..policy.convert import write as write_filter
    from ..policy.semantics import compile as compile_plan
    from ..record.profile import write

    with tempfile.TemporaryDirectory(prefix="ebpfseccomp-record-") as tmp:
        path = write(profile, f"{tmp}/profile.json")
        plan = compile_plan(select_profile(str(path)))
        return str(write_filter(plan, out))
