"""ebpfseccompd: load approved seccomp programs and hand them to clients.

On hosts where unprivileged bpf(2) is disabled a user cannot load an eBPF
filter but may attach one.  This daemon holds the privilege to load, decides
who may have which program (the catalog, ebpfseccomp/catalog.py), and passes
program fds over a Unix socket with SCM_RIGHTS (ebpfseccomp/protocol.py).
docs/daemon.md describes operation, docs/protocol.md the wire format.

The parts, one module each:

- `peer`: who the client is (SO_PEERCRED, SO_PEERGROUPS, capabilities
  through a pidfd);
- `caps`: capability arithmetic (what each program is loaded with, what is
  kept when privileges are dropped);
- `backend`: build, check, predict (the loader's own `loader.preflight`),
  load;
- `entries`: the catalog as loaded;
- `audit`: the audit log;
- `handlers`: the requests (list, get, submit, stats); never raise;
- `server`: the event loop, connections and their limits, fd limits;
- `main`: the command line (`ebpfseccompd`, `python -m ebpfseccomp.daemon`).
"""

from __future__ import annotations

from ..privilege import Prediction
from .audit import Audit
from .backend import Backend, Checked, LoadedProgram
from .caps import (
    CAP_BPF,
    CAP_NAMES,
    CAP_PERFMON,
    CAP_SETGID,
    CAP_SETPCAP,
    CAP_SETUID,
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    SUBMIT_CAPS,
    cap_bit,
    cap_names,
    catalog_caps,
    describe_grant,
    drop_privileges,
    effective_caps,
    satisfies,
    submit_caps,
    tier_caps,
)
from .entries import Loaded, encode_maps
from .handlers import FdSet, Refusal, Service
from .main import build_parser, main, options_from
from .options import Options
from .peer import Peer, identify, peer_credentials, peer_groups, read_peer_caps
from .server import Conn, Daemon, FdLimits, fd_limits

#: The prediction the backend returns (privilege.predict's, unchanged).
Decision = Prediction

__all__ = [
    "CAP_BPF", "CAP_NAMES", "CAP_PERFMON", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID",
    "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "SUBMIT_CAPS", "Audit", "Backend", "Checked", "Conn",
    "Daemon", "Decision", "FdLimits", "FdSet", "Loaded", "LoadedProgram", "Options", "Peer",
    "Prediction", "Refusal", "Service", "build_parser", "cap_bit", "cap_names", "catalog_caps",
    "describe_grant", "drop_privileges", "effective_caps", "encode_maps", "fd_limits",
    "identify", "main", "options_from", "peer_credentials", "peer_groups", "read_peer_caps",
    "satisfies", "submit_caps", "tier_caps",
]  # fmt: skip
