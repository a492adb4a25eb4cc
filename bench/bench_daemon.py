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
import subprocess
import sys
import tempfile
import time
from collections import deque
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



def _client_process(sock: str, nconn: int, mode: str, count: int, duration: float,
                    period: float, phase0: float, start_at: float, name: str,
                    out: Any) -> None:  # fmt: skip
    """One client process: NCONN connections driven by one selectors loop.

    closed: each connection keeps one request outstanding, COUNT requests
    in all per connection.  open: each connection sends a request every
    PERIOD seconds from START_AT (+ a phase per connection) for DURATION
    seconds, whether or not earlier replies came back; latency is measured
    from the scheduled time, so a late client counts against the result."""
    import selectors as _sel

    frame = protocol.encode(protocol.request("get", 1, name=name))
    anc = socket.CMSG_SPACE(16 * 4)
    sel = _sel.DefaultSelector()
    conns = []
    for i in range(nconn):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        s.setblocking(False)
        st = {"sock": s, "parser": protocol.FrameParser(1 << 20), "sched": deque(), "fds": deque(),
              "left": count, "lat": [], "i": i}  # fmt: skip
        conns.append(st)
        sel.register(s, _sel.EVENT_READ, st)
    errors: list[str] = []
    late: list[float] = []
    while time.time() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.time())))
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    if mode == "closed":
        for st in conns:
            st["sched"].append(time.perf_counter())
            st["sock"].send(frame)
            st["left"] -= 1
        due: list[tuple[float, dict[str, Any]]] = []
    else:
        due = sorted(
            (t0 + phase0 + period * st["i"] / nconn, st) for st in conns
        )  # type: ignore[misc]
        end = t0 + duration
    outstanding = len(conns) if mode == "closed" else 0
    import heapq

    heap = [(t, st["i"], st) for t, st in due] if mode == "open" else []
    heapq.heapify(heap)
    while True:
        now = time.perf_counter()
        if mode == "open":
            while heap and heap[0][0] <= now:
                t, i, st = heapq.heappop(heap)
                late.append(now - t)
                st["sched"].append(t)
                st["sock"].send(frame)
                outstanding += 1
                if t + period < end:
                    heapq.heappush(heap, (t + period, i, st))
            if not heap and outstanding == 0:
                break
            timeout = max(0.0, heap[0][0] - time.perf_counter()) if heap else 1.0
        else:
            if outstanding == 0:
                break
            timeout = 1.0
        for key, _mask in sel.select(timeout):
            st = key.data
            data, ancdata, _f, _a = st["sock"].recvmsg(65536, anc)
            for _lvl, _typ, cdata in ancdata:
                for k in range(0, len(cdata) - len(cdata) % 4, 4):
                    st["fds"].append(int.from_bytes(cdata[k : k + 4], sys.byteorder))
            if not data:
                errors.append("daemon hung up")
                sel.unregister(st["sock"])
                outstanding -= len(st["sched"])
                continue
            st["parser"].feed(data)
            for payload in st["parser"].frames():
                t_done = time.perf_counter()
                st["lat"].append(t_done - st["sched"].popleft())
                outstanding -= 1
                reply = json.loads(payload)
                if st["fds"]:
                    os.close(st["fds"].popleft())
                else:
                    errors.append("reply without its fd")
                if not reply.get("ok"):
                    errors.append(str(reply)[:200])
                if mode == "closed" and st["left"] > 0:
                    st["sched"].append(time.perf_counter())
                    st["sock"].send(frame)
                    st["left"] -= 1
                    outstanding += 1
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    for st in conns:
        st["sock"].close()
    out.send({"lat": [st["lat"] for st in conns], "errors": errors[:5], "nerrors": len(errors),
              "elapsed": elapsed, "cpu": cpu, "late": late})  # fmt: skip
    out.close()


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


def run_level(sock: str, daemon_pid: int, clients: int, name: str, *, procs: int,
              mode: str = "closed", total: int = 0, duration: float = 0.0,
              period: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """CLIENTS connections spread over PROCS client processes (no threads:
    the clients must not be the bottleneck, and their CPU is reported)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    procs = max(1, min(procs, clients))
    share = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    per_conn = max(1, total // clients) if mode == "closed" else 0
    start_at = time.time() + 0.5 + 0.02 * clients
    pipes, workers = [], []
    for i, n in enumerate(share):
        r, w = ctx.Pipe(duplex=False)
        phase0 = period * i / procs / max(1, n) if mode == "open" else 0.0
        p = ctx.Process(target=_client_process, args=(sock, n, mode, per_conn, duration, period,
                                                      phase0, start_at, name, w))  # fmt: skip
        p.start()
        w.close()
        pipes.append(r)
        workers.append(p)
    while time.time() < start_at:
        time.sleep(0.005)
    cpu_d0 = _cpu_of(daemon_pid)
    results = [r.recv() for r in pipes]
    cpu_d = _cpu_of(daemon_pid) - cpu_d0
    for p in workers:
        p.join()
    per_client = [lat for res in results for lat in res["lat"]]
    all_lat = sorted(x for lat in per_client for x in lat)
    n = len(all_lat)
    elapsed = max(res["elapsed"] for res in results)
    late = sorted(x for res in results for x in res["late"])
    p99 = _pct(all_lat, 0.99)
    worst_client = max((max(lat) for lat in per_client if lat), default=float("nan"))
    return {
        "mode": mode,
        "clients": clients,
        "client_processes": procs,
        "period_ms": round(period * 1000, 1) if mode == "open" else None,
        "requests": n,
        "errors": sum(res["nerrors"] for res in results),
        "first_error": next((e for res in results for e in res["errors"]), None),
        "seconds": round(elapsed, 3),
        "rps": round(n / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(_pct(all_lat, 0.5) * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
        "max_ms": round(all_lat[-1] * 1000, 3) if n else None,
        "worst_client_max_ms": round(worst_client * 1000, 3),
        "min_client_requests": min((len(lat) for lat in per_client), default=0),
        "daemon_cpu_us_per_req": round(cpu_d / n * 1e6, 1) if n else None,
        "client_cpu_us_per_req": round(sum(r["cpu"] for r in results) / n * 1e6, 1) if n else None,
        "client_late_p99_ms": round(_pct(late, 0.99) * 1000, 3) if late else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fake", action="store_true", help="memfds instead of loaded programs")
    ap.add_argument("--entries", type=int, default=100, help="catalog entries to load (100)")
    ap.add_argument("--requests", type=int, default=4000, help="requests per level (4000)")
    ap.add_argument("--clients", default="1,16,200",
                    help="closed-loop concurrency levels (1,16,200)")
    ap.add_argument("--procs", type=int, default=2,
                    help="client processes, each one selectors loop over its connections (2)")
    ap.add_argument("--open-clients", type=int, default=200,
                    help="open loop: connections, each sending a get every --period (200)")
    ap.add_argument("--period", type=float, default=0.05, help="open loop: seconds (0.05)")
    ap.add_argument("--duration", type=float, default=10.0, help="open loop: seconds (10)")
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
        levels = [run_level(sock, proc.pid, int(c), "f000", procs=args.procs, total=args.requests)
                  for c in args.clients.split(",")]  # fmt: skip
        if args.open_clients:
            levels.append(run_level(sock, proc.pid, args.open_clients, "f000", procs=args.procs,
                                    mode="open", duration=args.duration, period=args.period))
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
    print(f"  {'loop':>6} {'clients':>7} {'requests':>9} {'req/s':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'daemon us':>9} {'client us':>9} errors")  # fmt: skip
    for lv in result["levels"]:
        print(f"  {lv['mode']:>6} {lv['clients']:>7} {lv['requests']:>9} {lv['rps']:>9} "
              f"{lv['p50_ms']:>8} {lv['p99_ms']:>8} {lv['max_ms']:>8} "
              f"{lv['daemon_cpu_us_per_req']:>9} {lv['client_cpu_us_per_req']:>9} "
              f"{lv['errors']}")  # fmt: skip
        if lv["mode"] == "open":
            print(f"    open loop: a get every {lv['period_ms']} ms per client; "
                  f"worst client's max {lv['worst_client_max_ms']} ms (5 x p99 = "
                  f"{round(5 * lv['p99_ms'], 3)} ms); client lateness p99 "
                  f"{lv['client_late_p99_ms']} ms")  # fmt: skip
        if lv["first_error"]:
            print(f"    first error: {lv['first_error']}")
    bad = any(lv["errors"] for lv in result["levels"]) or fds_after != fds_before
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
