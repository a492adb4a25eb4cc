"""Real programs the recorder tests record and then run under the recorded profile.

Shared by tests/test_record.py (host, user-notification backend) and
tests/vm/test_record_vm.py (patched kernel, eBPF backend).  Each program
prints something that depends on the calls succeeding, so that "the same
result" under the profile means the same stdout and exit status.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = str(REPO / ".venv" / "bin" / "python")
#: The interpreter the recorded Python programs run with: not a wrapper script.
TARGET_PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

PIPELINE = ["sh", "-c", "ls / | sort | wc -l; echo done"]

PYTHON_WORK = """
import hashlib, json, os, subprocess, tempfile, threading
out = []
def work(i):
    out.append(hashlib.sha256(str(i).encode()).hexdigest()[:8])
ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
with tempfile.TemporaryDirectory() as d:
    p = os.path.join(d, "f")
    with open(p, "w") as f:
        f.write("x" * 100)
    size = os.path.getsize(p)
child = subprocess.run(["true"]).returncode
print(json.dumps({"hashes": sorted(out), "size": size, "child": child}))
"""

#: A TCP server and its client on loopback: the server forks the client.
TCP_PAIR = """
import os, socket, sys
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(1)
port = srv.getsockname()[1]
pid = os.fork()
if pid == 0:
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"ping")
    print("client got", c.recv(16).decode(), flush=True)
    c.close()
    os._exit(0)
conn, _ = srv.accept()
data = conn.recv(16)
conn.sendall(b"pong" if data == b"ping" else b"what")
conn.close()
_, status = os.waitpid(pid, 0)
print("server got", data.decode(), "client status", status, flush=True)
"""

#: Makes an AF_UNIX socket: refused under a --with-args profile of TCP_PAIR.
UNIX_SOCKET = """
import socket
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
    print("unix socket: ok")
except OSError as exc:
    print("unix socket:", exc.errno)
"""

#: From a 64-bit process, getpid through int 0x80 (the i386 ABI).
INT80_GETPID = """
import ctypes, mmap, os
code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])  # mov eax, 20; int 0x80; ret
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
print("same pid:", f() == os.getpid())
"""

#: A syscall number no table has, and a bogus pointer: the kernel's answers.
ODD_CALLS = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
r1 = libc.syscall(100000); e1 = ctypes.get_errno()
r2 = libc.syscall(257, -100, ctypes.c_void_p(0xdead0000), 0); e2 = ctypes.get_errno()
print(r1, e1, r2, e2)
"""


def elf32_getpid_exit(path: Path, status: int = 7) -> Path:
    """A static i386 ELF: getpid(), then exit(STATUS), through int 0x80."""
    base = 0x08048000
    code = (bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80])  # mov eax, 20 (getpid); int 0x80
            + bytes([0xBB]) + struct.pack("<I", status)  # mov ebx, status
            + bytes([0xB8, 1, 0, 0, 0, 0xCD, 0x80]))  # mov eax, 1 (exit); int 0x80
    ehsize, phsize = 52, 32
    entry = base + ehsize + phsize
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, entry, ehsize, 0, 0, ehsize,
                                 phsize, 1, 40, 0, 0)
    size = ehsize + phsize + len(code)
    phdr = struct.pack("<IIIIIIII", 1, 0, base, base, size, size, 5, 0x1000)
    path.write_bytes(header + phdr + code)
    path.chmod(0o755)
    return path


def record(cmd: list[str], profile: Path, *extra: str, timeout: float = 300
           ) -> subprocess.CompletedProcess[str]:
    """`ebpfseccomp record --json -o PROFILE EXTRA -- CMD`."""
    return subprocess.run([PY, "-m", "ebpfseccomp", "record", "--json", "-o", str(profile),
                           *extra, "--", *cmd], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def summary(proc: subprocess.CompletedProcess[str]) -> dict:
    """The --json summary: the last line of stdout."""
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    return json.loads(lines[-1])


def program_output(proc: subprocess.CompletedProcess[str]) -> str:
    """What the recorded command printed (stdout without the summary line)."""
    return "\n".join(proc.stdout.strip().splitlines()[:-1])


def replay(cmd: list[str], profile: Path, backend: str, timeout: float = 300
           ) -> subprocess.CompletedProcess[str]:
    """`ebpfseccomp run --profile PROFILE --backend BACKEND -- CMD`."""
    return subprocess.run([PY, "-m", "ebpfseccomp", "run", "--profile", str(profile),
                           "--backend", backend, "--", *cmd], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)
