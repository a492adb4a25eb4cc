"""`ebpfseccomp run`: load (or open) a filter, attach it, exec a command under it."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from ..attach import USER_FLAGS, flags_names, flags_value
from ..errors import EbpfSeccompError, UsageError
from ..loader import Program, from_fd, group_assignments, load, open_pinned

DESCRIPTION = """\
Run CMD under an eBPF seccomp filter.  The filter comes from one of:

  -f OBJ.o          an object built by `ebpfseccomp build`, loaded now with
                    your privileges (kernel.unprivileged_bpf_disabled=2, Debian's
                    default, allows that only with CAP_BPF, e.g. as root)
  --pinned PATH     a program an administrator pinned in bpffs with
                    `ebpfseccomp load OBJ.o --pin PATH --mode 0644`: attaching
                    needs no privilege at all
  --daemon NAME     a program the loader daemon (ebpfseccompd) hands out
  --profile P.json  a container runtime's seccomp profile (OCI/Docker JSON),
                    converted now (`ebpfseccomp convert`); --backend chooses
                    the eBPF filter (patched kernel), libseccomp's classic
                    filter for the same profile (any kernel), or auto: eBPF
                    when this kernel runs it and you may load it, else classic.
                    run says on stderr which one it attached.

Then run sets no_new_privs (so that no privilege is needed to attach, and
CMD cannot gain privilege through setuid binaries), attaches the program with
seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_EXTENDED | flags), closes
every file descriptor but 0, 1 and 2, and execs CMD.  The filter stays on CMD
and everything it starts; it cannot be removed.

Before loading, run predicts what the kernel will say, from your
capabilities, kernel.yama.ptrace_scope and kernel.unprivileged_bpf_disabled,
and stops with a message naming the helper or map and the privilege that
would allow it.  `ebpfseccomp probe` shows what this kernel supports.

flags (--flag, repeatable):
  tsync               apply to every thread of the process
  log                 log every action except ALLOW to the audit log
  spec-allow          do not enable speculative-store-bypass mitigation
  new-listener        create a user-notification listener (closed before exec:
                      USER_NOTIF syscalls then fail with ENOSYS)
  tsync-esrch         with tsync, fail with ESRCH instead of a thread id
  wait-killable-recv  with new-listener, wait killably for the supervisor

--map NAME:KEY=VALUE preloads a map entry (repeatable); KEY and VALUE are
numbers (42, 0x2a, -1), syscall names (openat), hex:BYTES or str:TEXT.

examples:
  ebpfseccomp run -f allowlist.o -- ls /
  ebpfseccomp run -f counter.o --map limits:openat=100 -- make
  ebpfseccomp run --pinned /sys/fs/bpf/sandbox -- ./untrusted
  ebpfseccomp run --daemon sandbox --flag tsync -- python3 app.py
  ebpfseccomp run --profile /usr/share/containers/seccomp.json -- sh -c 'ls /'
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="attach a filter and exec a command under it",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-f", "--file", metavar="OBJ.o", help="load this object now")
    src.add_argument("--pinned", metavar="PATH", help="attach a program pinned in bpffs")
    src.add_argument("--daemon", metavar="NAME", help="ask the loader daemon for program NAME")
    src.add_argument("--profile", metavar="PROFILE.json",
                     help="convert this OCI/Docker seccomp profile and attach it")
    p.add_argument("--backend", choices=("auto", "ebpf", "classic"), default="auto",
                   help="with --profile: which filter to attach (default: auto)")
    p.add_argument("--caps", metavar="CAP,...",
                   help="with --profile: the capabilities includes/excludes see "
                   "(default: Docker's default set)")
    p.add_argument("--program", metavar="NAME", help="which program, if the object has several")
    p.add_argument("--flag", action="append", default=[], choices=sorted(USER_FLAGS),
                   metavar="FLAG", help="seccomp(2) flag: " + ", ".join(USER_FLAGS))
    p.add_argument("--map", metavar="NAME:KEY=VALUE", action="append", default=[],
                   help="set a map entry before running (repeatable)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the static check and privilege prediction; ask the kernel")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show the prediction, libbpf's messages and the verifier log")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                   help="the command to run under the filter")
    p.set_defaults(func=run)


def _command(args: argparse.Namespace) -> list[str]:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no command to run", hint="put it after --, e.g. "
                         "ebpfseccomp run -f filter.o -- ls /")
    return cmd


def _from_daemon(name: str) -> Program:
    try:
        from .. import client  # written by the daemon side; optional here
    except ImportError:
        raise EbpfSeccompError(
            "--daemon needs ebpfseccomp.client, which this installation lacks",
            hint="use -f OBJ.o or --pinned PATH") from None
    fd, meta = client.get(name)
    prog = from_fd(fd, name=str(meta.get("program", name)) if isinstance(meta, dict) else name)
    return prog


def _verbose(prog: Program) -> None:
    err = sys.stderr
    if prog.prediction is not None:
        print(f"ebpfseccomp run: prediction: {prog.prediction.message}", file=err)
    for m in prog.messages:
        print(m, file=err)
    if prog.log:
        print("verifier log:\n" + prog.log.rstrip(), file=err)
    print(f"ebpfseccomp run: {prog.summary()}", file=err)


def close_fds_except_std() -> None:
    """Close every fd above 2 (what CMD must not inherit: program, maps, libbpf's)."""
    try:
        fds = [int(f) for f in os.listdir("/proc/self/fd")]
    except OSError:
        os.closerange(3, 65536)
        return
    for fd in fds:
        if fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass


def _choose_backend(wanted: str) -> tuple[str, str]:
    """(backend, why) for --backend WANTED."""
    if wanted != "auto":
        return wanted, "--backend " + wanted
    from ..attach import probe

    support = probe()
    if not support.supported:
        return "classic", f"kernel {support.release} does not run eBPF seccomp filters"
    if not support.can_load:
        return "classic", ("kernel.unprivileged_bpf_disabled="
                           f"{support.unprivileged_bpf_disabled} and no CAP_BPF")
    return "ebpf", f"kernel {support.release} runs eBPF seccomp filters"


def _attach_profile(args: argparse.Namespace, flags: int) -> None:
    """Convert --profile and attach the chosen backend's filter to this process."""
    import tempfile

    from ..attach import flags_value as _fv
    from ..policy.convert import classic_program, select_profile, write
    from ..policy.model import FLAGS
    from ..policy.semantics import compile as compile_plan
    from ..sys import seccomp_attach_cbpf, set_no_new_privs

    if args.map:
        raise UsageError("--map does not apply to --profile (a converted profile has no maps)")
    sel = select_profile(args.profile, caps=args.caps)
    plan = compile_plan(sel)
    flags |= _fv([FLAGS[f] for f in sel.profile.flags if f in FLAGS])
    backend, why = _choose_backend(args.backend)
    if backend == "ebpf":
        with tempfile.TemporaryDirectory(prefix="ebpfseccomp-run-") as tmp:
            obj = write(plan, f"{tmp}/profile.o")
            prog = load(str(obj), None, check=not args.no_check)
        try:
            if args.verbose:
                _verbose(prog)
            prog.attach(flags)
        finally:
            prog.close()
        what = "eBPF filter"
    else:
        classic = classic_program(sel)
        set_no_new_privs()
        try:
            seccomp_attach_cbpf(classic.bytes(), flags)
        except OSError as exc:
            raise EbpfSeccompError(f"cannot attach libseccomp's classic filter: "
                                   f"{os.strerror(exc.errno or 0)}") from None
        what = f"classic filter (libseccomp, {len(classic.insns)} instructions)"
    print(f"ebpfseccomp run: {args.profile}: attached the {what} ({why})", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    cmd = _command(args)
    flags = flags_value(args.flag)
    if args.profile:
        _attach_profile(args, flags)
        return _exec(cmd)
    if args.backend != "auto" or args.caps:
        raise UsageError("--backend and --caps go with --profile")
    maps = group_assignments(args.map)
    if args.file:
        prog = load(args.file, args.program, maps=maps, check=not args.no_check)
    elif args.pinned:
        prog = open_pinned(args.pinned)
    else:
        prog = _from_daemon(args.daemon)
    try:
        if not args.file and maps:
            for name, content in maps.items():
                if name not in prog.maps:
                    raise UsageError(f"--map {name}: no such map with this program",
                                     hint=f"maps: {', '.join(prog.maps) or 'none'}")
                for k, v in content.items():
                    prog.maps[name].update(k, v)
        if args.verbose:
            _verbose(prog)
            print(f"ebpfseccomp run: attaching with flags {flags_names(flags)}, exec {cmd[0]}",
                  file=sys.stderr)
        prog.attach(flags)
    finally:
        prog.close()
    return _exec(cmd)


def _exec(cmd: list[str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    close_fds_except_std()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        hint = ""
        if exc.errno in (errno.EPERM, errno.EACCES, errno.ENOSYS):
            hint = " (the filter is attached now: it may refuse execve itself)"
        print(f"ebpfseccomp run: error: cannot run {cmd[0]}: {exc.strerror}{hint}",
              file=sys.stderr)
        return code
    return 0  # not reached
