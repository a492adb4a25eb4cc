"""`ebpfseccomp convert`: a runtime's seccomp profile (OCI/Docker JSON) -> filter."""

from __future__ import annotations

import argparse
import json
import sys

from ..build import default_arch
from ..policy import cbpf
from ..policy.convert import classic_program, select_profile, source, write
from ..policy.model import NATIVE, PolicyError
from ..policy.semantics import compile as compile_plan
from ..policy.semantics import libseccomp_tree_risk

DESCRIPTION = """\
Convert a container runtime's seccomp profile (the OCI runtime-spec
linux.seccomp JSON that Docker, podman, CRI-O, containerd and Kubernetes use)
into an eBPF filter that decides exactly as libseccomp's classic filter for
the same profile (docs/policies.md lists every rule).

  -o filter.c        readable C: one function per architecture, syscall names,
                     the profile's comments (made from jinja2 templates)
  -o filter.o        the same, compiled with `ebpfseccomp build`
  no -o              the C on standard output
  --classic          libseccomp's classic (cBPF) program for the same profile
                     instead: -o FILE writes the raw sock_filter array (what
                     seccomp_export_bpf writes), without -o a listing

Rules are resolved for one container as Docker does it: --arch picks the
native ABI and its sub-architectures from archMap (or the ABIs listed in
architectures), --caps the capability set for includes/excludes.caps
(default: Docker's default set), --kernel-version the kernel for
includes.minKernel (default: the running one).  The filter decides every ABI
the kernel of that architecture runs and the profile names: x86_64 with i386
(socketcall/ipc included) and x32, aarch64 with arm; calls of any other ABI
get libseccomp's bad-architecture action (kill).

A bad profile is refused with the JSON path of the fault, e.g.
  profile.json: syscalls[12].args[0].op: unknown comparison 'SCMP_CMP_FOO'

examples:
  ebpfseccomp convert /usr/share/containers/seccomp.json -o seccomp.o
  ebpfseccomp convert profile.json --caps CAP_SYS_ADMIN,CAP_SYS_PTRACE -o f.c
  ebpfseccomp convert profile.json --classic -o profile.bpf
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="turn an OCI/Docker seccomp profile into a filter",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", metavar="PROFILE.json")
    p.add_argument("-o", "--output", metavar="OUT", help="filter.c, filter.o (or --classic FILE)")
    p.add_argument("--arch", choices=sorted(NATIVE), help="native ABI (default: this machine's)")
    p.add_argument("--caps", metavar="CAP,...",
                   help="the container's capabilities (default: Docker's default set; "
                   "'all' or 'none' also accepted)")
    p.add_argument("--kernel-version", metavar="X.Y", help="kernel for includes.minKernel")
    p.add_argument("--classic", action="store_true", help="emit libseccomp's cBPF instead")
    p.add_argument("--optimize", action="store_true",
                   help="with --classic: libseccomp's binary-tree syscall search")
    p.add_argument("--json", action="store_true", help="print a JSON summary (or error)")
    p.set_defaults(func=run)


def _summary(sel, plan, out: str | None, classic) -> dict:
    return {
        "profile": sel.profile.source,
        "arch": sel.native,
        "architectures": sel.arches,
        "dropped_architectures": sel.dropped_arches,
        "caps": list(sel.caps),
        "rules_used": [r.index for r in sel.rules],
        "rules_skipped": sel.skipped,
        "syscalls": {ap.name: len(ap.syscalls) for ap in plan.arches},
        "output": out,
        "classic_insns": len(classic.insns) if classic else None,
        "libseccomp_unknown_names": classic.unknown_names if classic else [],
    }


def run(args: argparse.Namespace) -> int:
    try:
        sel = select_profile(args.profile, arch=args.arch or default_arch(), caps=args.caps,
                             kernel=args.kernel_version)
        plan = compile_plan(sel)
    except PolicyError as exc:
        # with --json, cli.main prints the error as JSON on stdout too
        if exc.path and exc.path != args.profile and not exc.path.startswith("--"):
            raise PolicyError(exc.message, path=f"{args.profile}: {exc.path}",
                              hint=exc.hint) from None
        raise
    for a in sel.dropped_arches:
        print(f"ebpfseccomp convert: warning: {a} is not an ABI a {sel.native} kernel runs: "
              "left out, its calls get the bad-architecture action (KILL), in the eBPF and "
              "the classic filter alike", file=sys.stderr)
    for ap in plan.arches:
        for audit, nr in sorted(libseccomp_tree_risk(plan)):
            if audit == ap.audit:
                print(f"ebpfseccomp convert: warning: {ap.syscalls[nr].name} on {ap.name}: "
                      "several rules compare one argument with an order operator; "
                      "libseccomp 2.5's classic filter may then decide otherwise than the "
                      "profile (docs/policies.md); the eBPF filter follows the profile",
                      file=sys.stderr)
    classic = None
    out: str | None = args.output
    if args.classic:
        classic = classic_program(sel, optimize=args.optimize)
        for name in classic.unknown_names:
            print(f"ebpfseccomp convert: warning: libseccomp does not know {name}: "
                  "the classic filter gives it the default action", file=sys.stderr)
        if out:
            with open(out, "wb") as f:
                f.write(classic.bytes())
        elif not args.json:
            print(cbpf.disasm(classic.insns))
    elif out:
        out = str(write(plan, out))
    elif not args.json:
        sys.stdout.write(source(plan))
    if args.json:
        print(json.dumps(_summary(sel, plan, out, classic)))
    elif out:
        print(out)
    return 0
