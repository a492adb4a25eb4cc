#!/usr/bin/env python3
"""Count every syscall of a command per syscall, and deny one, with bcc.

    count_and_deny.py [--deny getppid] [--errno EPERM] [--every 1] -- CMD ARGS...

The filter is C in a Python string, compiled at run time by bcc (Debian's
python3-bpfcc) against the running kernel's headers, loaded as a seccomp
program (type 33) and attached to the child before it execs CMD.  While CMD
runs, this process reads the child's counters from the filter's map, as a
bcc table, and prints the busiest syscalls every --every seconds; at the
end, all of them.

Run it as root on the patched kernel, e.g. in the VM:

    vm/run -- .venv/bin/python bpf/examples/bcc/count_and_deny.py -- \\
        python3 -c 'import os; os.getppid()'
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time

from ebpfseccomp import bcc, syscalls

ARCH = syscalls.canonical_arch(os.uname().machine)

#: The filter.  <ebpfseccomp/bcc.h> (put in front by ebpfseccomp.bcc) gives
#: struct seccomp_data, SECCOMP_*, errno names and SYS_<name>; DENY_NR and
#: DENY_ERRNO come from the command line (-D), so the same text serves any
#: syscall.  `counts` and `denied` are bcc tables in Python.
SOURCE = r"""
BPF_HASH(counts, u32, u64, 1024);   /* syscall number -> calls */
BPF_ARRAY(denied, u64, 1);          /* calls refused by the deny rule */

int count_and_deny(struct seccomp_data *ctx)
{
	u32 nr = ctx->nr, zero = 0;
	u64 init = 0, *n;

	if (ctx->arch != EBPFSECCOMP_AUDIT_ARCH)
		return SECCOMP_KILL_PROCESS;

	n = counts.lookup_or_try_init(&nr, &init);
	if (n)
		__sync_fetch_and_add(n, 1);

	if (ctx->nr == DENY_NR) {
		n = denied.lookup(&zero);
		if (n)
			__sync_fetch_and_add(n, 1);
		return SECCOMP_ERRNO(DENY_ERRNO);
	}
	return SECCOMP_ALLOW;
}
"""


def load(deny: str = "getppid", err: int = errno.EPERM) -> bcc.Filter:
    """Compile and load the filter, denying DENY with ERR."""
    nr = syscalls.nr(deny, ARCH)
    return bcc.load(SOURCE, cflags_extra=[f"-DDENY_NR={nr}", f"-DDENY_ERRNO={err}"])


def counts(flt: bcc.Filter) -> dict[str, int]:
    """{syscall name: calls} from the filter's `counts` table."""
    return {syscalls.name(k.value, ARCH) or str(k.value): v.value
            for k, v in flt["counts"].items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deny", default="getppid", help="syscall to refuse (name or number)")
    ap.add_argument("--errno", default="EPERM", help="errno it fails with (name or number)")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between reports")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give a command after --")
    err = int(args.errno) if args.errno.isdigit() else getattr(errno, args.errno)

    with load(args.deny, err) as flt:
        print(f"bcc compiled the filter in {flt.compile_seconds:.2f} s, "
              f"loaded it in {flt.load_seconds * 1000:.1f} ms", file=sys.stderr)
        pid = os.fork()
        if pid == 0:
            try:
                flt.attach()
                os.execvp(cmd[0], cmd)
            except BaseException as exc:
                print(f"count_and_deny: {exc}", file=sys.stderr)
            os._exit(127)
        status = None
        while status is None:
            time.sleep(args.every)
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
            top = sorted(counts(flt).items(), key=lambda kv: -kv[1])[:5]
            print("running: " + ", ".join(f"{n} {c}" for n, c in top), file=sys.stderr)
        final = counts(flt)
        for name, calls in sorted(final.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"{calls:8d}  {name}")
        print(f"{flt['denied'][0].value} call(s) of {args.deny} refused with "
              f"{errno.errorcode.get(err, err)}", file=sys.stderr)
        return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
