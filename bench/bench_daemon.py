#!/usr/bin/env python3
"""Benchmark ebpfseccompd: `get` throughput and latency, and resident memory.

    vm/run -- .venv/bin/python bench/bench_daemon.py          # in the VM, as root
    .venv/bin/python bench/bench_daemon.py --fake             # anywhere: no bpf(2)

Starts the daemon on a temporary socket with a catalog of ENTRIES copies of
bpf/examples/deny_all_errno.c (default 100, every one loaded), measures its
VmRSS, then for 1, 16 and 200 concurrent clients (threads, one connection
each, all started together) sends `get` requests, receives the program fd,
closes it, and reports requests per second and p50/p99 latency.  Client and
daemon share the machine's CPUs, so the figures are for the pair.

--fake replaces the loader with memfds (no kernel support needed): it
measures the daemon's own protocol, identity and fd-passing path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ebpfseccomp import protocol  # noqa: E402

FAKE_LAUNCHER = """
import os, sys
sys.path.insert(0, {repo!r})
from ebpfseccomp import daemon
from ebpfseccomp.contract import Tier

class Prog:
    def __init__(self):
        self.fd = os.memfd_create("fakeprog", os.MFD_CLOEXEC)
    def close(self):
        os.close(self.fd)

class Fake(daemon.Backend):
    def ptrace_scope(self):
        return 1
    def build(self, entry, workdir):
        return entry.source
    def check(self, path, program):
        return daemon.Checked(tier=Tier.NONE, loadable=True, problems=[], program="fake")
    def load(self, path, program, maps, caps):
        return Prog()

sys.exit(daemon.main(sys.argv[1:], backend=Fake()))
"""


def start_daemon(workdir: Path, entries: int, fake: bool) -> tuple[subprocess.Popen[bytes], str]:
    cat = workdir / "catalog"
    cat.mkdir()
    if fake:
        obj = workdir / "fake.o"
        obj.write_bytes(b"fake")
    else:
        from ebpfseccomp.build import build

        obj = build(REPO / "bpf" / "examples" / "deny_all_errno.c", out=workdir / "deny.o")
    for i in range(entries):
        (cat / f"f{i:03d}.toml").write_text(f'object = "{obj}"\ntier = "none"\nusers = ["*"]\n')
    sock = str(workdir / "d.sock")
    args = ["--config", str(cat), "--socket", sock, "--max-clients", "1024"]
    if fake:
        launcher = workdir / "fake_daemon.py"
        launcher.write_text(FAKE_LAUNCHER.format(repo=str(REPO)))
        cmd = [sys.executable, str(launcher), *args]
    else:
        cmd = [sys.executable, "-m", "ebpfseccomp.daemon", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=open(workdir / "daemon.log", "wb"))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("daemon exited:\n" + (workdir / "daemon.log").read_text()[-3000:])
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock)
            break
        except OSError:
            time.sleep(0.05)
    return proc, sock


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def run_level(sock: str, clients: int, total: int, name: str) -> dict[str, Any]:
    per = max(1, total // clients)
    frame = protocol.encode(protocol.request("get", 1, name=name))
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)
    anc = socket.CMSG_SPACE(4 * 4)

    def worker(k: int) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(120)
        try:
            s.connect(sock)
            parser = protocol.FrameParser(1 << 20)
            barrier.wait()
            out = lat[k]
            for _ in range(per):
                t0 = time.perf_counter()
                s.sendall(frame)
                got = None
                fds: list[int] = []
                while got is None:
                    data, ancdata, _flags, _ = s.recvmsg(65536, anc)
                    for _lvl, _typ, cdata in ancdata:
                        fds += [int.from_bytes(cdata[i : i + 4], sys.byteorder)
                                for i in range(0, len(cdata) - len(cdata) % 4, 4)]  # fmt: skip
                    if not data:
                        raise ConnectionError("daemon hung up")
                    parser.feed(data)
                    got = parser.next_frame()
                out.append(time.perf_counter() - t0)
                reply = json.loads(got)
                for fd in fds:
                    os.close(fd)
                if not reply.get("ok") or len(fds) != 1:
                    errors.append(str(reply)[:200])
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
            try:
                barrier.abort()
            except threading.BrokenBarrierError:
                pass
        finally:
            s.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    all_lat = sorted(x for xs in lat for x in xs)
    n = len(all_lat)
    return {
        "clients": clients,
        "requests": n,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(elapsed, 3),
        "rps": round(n / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(statistics.median(all_lat) * 1000, 3) if n else None,
        "p99_ms": round(all_lat[min(n - 1, int(n * 0.99))] * 1000, 3) if n else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fake", action="store_true", help="memfds instead of loaded programs")
    ap.add_argument("--entries", type=int, default=100, help="catalog entries to load (100)")
    ap.add_argument("--requests", type=int, default=4000, help="requests per level (4000)")
    ap.add_argument("--clients", default="1,16,200", help="concurrency levels (1,16,200)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if not args.fake and os.geteuid() != 0:
        sys.exit("bench_daemon: run as root (the daemon loads programs), or use --fake")
    work = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    proc = None
    try:
        t0 = time.monotonic()
        proc, sock = start_daemon(work, args.entries, args.fake)
        startup = time.monotonic() - t0
        from ebpfseccomp.client import Client

        with Client(sock) as c:
            st = c.stats()
        if st["entries"] != args.entries:
            sys.exit(f"only {st['entries']} of {args.entries} entries loaded: {st.get('problems')}")
        rss_loaded = rss_kib(proc.pid)
        time.sleep(0.3)  # let the daemon see the stats client hang up
        fds_before = len(os.listdir(f"/proc/{proc.pid}/fd"))
        levels = [run_level(sock, int(c), args.requests, "f000") for c in args.clients.split(",")]
        time.sleep(0.3)
        fds_after = len(os.listdir(f"/proc/{proc.pid}/fd"))
        result = {
            "mode": "fake loader" if args.fake else "kernel",
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "entries": args.entries,
            "startup_s": round(startup, 2),
            "rss_kib_entries_loaded": rss_loaded,
            "rss_kib_after_bench": rss_kib(proc.pid),
            "fds_before": fds_before,
            "fds_after": fds_after,
            "levels": levels,
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"ebpfseccompd benchmark ({result['mode']}, kernel {result['kernel']}, "
          f"{result['cpus']} CPUs)")  # fmt: skip
    print(f"  {args.entries} entries loaded in {result['startup_s']} s; "
          f"daemon VmRSS {rss_loaded} KiB ({result['rss_kib_after_bench']} KiB after the runs); "
          f"fds {fds_before} before, {fds_after} after")  # fmt: skip
    print(f"  {'clients':>7} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} errors")
    for lv in result["levels"]:
        print(f"  {lv['clients']:>7} {lv['requests']:>9} {lv['rps']:>9} {lv['p50_ms']:>8} "
              f"{lv['p99_ms']:>8} {lv['errors']}")  # fmt: skip
        if lv["first_error"]:
            print(f"    first error: {lv['first_error']}")
    bad = any(lv["errors"] for lv in result["levels"]) or fds_after != fds_before
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
