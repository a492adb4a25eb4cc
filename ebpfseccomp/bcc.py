"""Seccomp filters the bcc way: C in a Python string, compiled at run time.

    from ebpfseccomp import bcc

    SOURCE = r'''
    BPF_HASH(counts, u32, u64, 1024);

    int count_and_deny(struct seccomp_data *ctx)
    {
        u32 nr = ctx->nr;
        u64 one = 1, *n = counts.lookup_or_try_init(&nr, &one);
        if (n)
            __sync_fetch_and_add(n, 1);
        return ctx->nr == SYS_getppid ? SECCOMP_ERRNO(EPERM) : SECCOMP_ALLOW;
    }
    '''

    with bcc.load(SOURCE) as flt:
        pid = os.fork()
        if pid == 0:
            flt.attach()            # this process, and what it execs, is filtered
            os.execvp(...)
        counts = flt["counts"]     # a bcc table, read while the child runs
        ...

What this module adds to bcc (Debian's python3-bpfcc):

* the project's seccomp definitions (<ebpfseccomp/bcc.h>: struct
  seccomp_data, SECCOMP_* actions, errno values, SYS_<name>) before the
  source, with the target define of the running machine;
* `BPF.load_func(name, 33)`: bcc has no name for BPF_PROG_TYPE_SECCOMP, the
  raw number goes through;
* attaching with the project's `attach.attach` (seccomp(2) with
  SECCOMP_FILTER_FLAG_EXTENDED), not one of bcc's attach_* calls;
* bcc's diagnostics (which libbcc writes to fd 2) caught into the
  BuildError or KernelError raised, and the import of bcc from Debian's
  dist-packages when it is not on sys.path (the project venv does not see
  system site packages).

The maps are bcc's own tables (`flt["counts"]`, `flt.bpf`): bcc users keep
the API they know.  Nothing here runs the project's checker or emulator: a
bcc filter is verified by the kernel only (docs/bcc.md says when to choose
which).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import importlib.machinery
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from types import ModuleType, TracebackType
from typing import Any

from . import contract
from .attach import LACKS_PATCH, attach, extended_flag_supported
from .build import include_dir
from .errors import BuildError, EbpfSeccompError, KernelError, PrivilegeError

#: where Debian's python3-bpfcc puts the `bcc` package
DIST_PACKAGES = ("/usr/lib/python3/dist-packages",)

#: what a bcc source gets in front of it (the project's seccomp definitions)
PRELUDE = "#include <ebpfseccomp/bcc.h>\n"

INSTALL_HINT = ("install Debian's python3-bpfcc (apt-get install python3-bpfcc; "
                "vm/install-deps does it)")

#: -D for the machine bcc compiles for (it compiles for the running kernel only)
_TARGET = {"x86_64": "__TARGET_ARCH_x86", "aarch64": "__TARGET_ARCH_arm64",
           "arm64": "__TARGET_ARCH_arm64"}


class BccUnavailable(EbpfSeccompError):
    """bcc (python3-bpfcc) cannot be imported."""


def import_bcc(search: Iterable[str] = DIST_PACKAGES) -> ModuleType:
    """The `bcc` package: the one on sys.path, else Debian's from SEARCH.

    Only the package itself is taken from SEARCH (sys.path is not changed),
    so the venv's other imports stay the venv's.  bcc imports only the
    standard library and libbcc.so through ctypes.
    """
    loaded = sys.modules.get("bcc")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("bcc")
    if spec is None:
        spec = importlib.machinery.PathFinder.find_spec("bcc", list(search))
    if spec is None or spec.loader is None:
        raise BccUnavailable(f"the Python module 'bcc' is not installed ({INSTALL_HINT})")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop("bcc", None)
        # libbcc.so missing or unloadable: bcc raises OSError from ctypes
        raise BccUnavailable(f"cannot import bcc from {spec.origin}: {exc} ({INSTALL_HINT})") \
            from None
    return module


def available() -> tuple[bool, str]:
    """(True, bcc's version) or (False, why not): for tests and `probe`-style output."""
    try:
        mod = import_bcc()
    except BccUnavailable as exc:
        return False, exc.message
    return True, str(getattr(mod, "__version__", "unknown version"))


def target_define(machine: str | None = None) -> str:
    machine = machine or os.uname().machine
    try:
        return _TARGET[machine]
    except KeyError:
        raise BuildError(f"bcc filters: no seccomp target for machine {machine!r}",
                         hint="x86_64 and aarch64 are supported") from None


def cflags(extra: Iterable[str] = (), include_dirs: Iterable[str | os.PathLike[str]] = ()
           ) -> list[str]:
    """The compiler flags bcc gets: the project's headers, the target, then EXTRA."""
    flags = [f"-I{include_dir()}", f"-D{target_define()}=1"]
    flags += [f"-I{os.fspath(d)}" for d in include_dirs]
    return flags + list(extra)


@contextlib.contextmanager
def _stderr_captured(out: list[str]) -> Iterator[None]:
    """Send fd 2 to a file for the block (libbcc and clang write there), then
    append what was written to OUT.  Python's own sys.stderr is flushed first."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def _clean(text: str, limit: int = 60) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more lines)"]
    return "\n".join(lines)


class Filter:
    """A seccomp filter compiled and loaded by bcc.

    bpf is bcc's BPF object (tables, disassembly, everything bcc offers);
    name and fd the loaded program; compile_seconds and load_seconds what
    each step took.  `flt[NAME]` is bcc's table NAME.
    """

    def __init__(self, text: str, function: str | None = None, *,
                 cflags_extra: Iterable[str] = (),
                 include_dirs: Iterable[str | os.PathLike[str]] = (),
                 debug: int = 0, capture: bool = True):
        bcc = import_bcc()
        self.source = PRELUDE + text
        self._closed = False
        log: list[str] = []
        start = time.perf_counter()
        try:
            with _stderr_captured(log) if capture else contextlib.nullcontext():
                self.bpf: Any = bcc.BPF(text=self.source.encode(),
                                        cflags=cflags(cflags_extra, include_dirs), debug=debug)
        except BuildError:
            raise
        except Exception as exc:
            raise BuildError(f"bcc could not compile the filter: {exc}\n{_clean(''.join(log))}",
                             hint=self._compile_hint(''.join(log))) from None
        self.compile_seconds = time.perf_counter() - start
        self.name = function or self._only_function()
        if function is not None and function not in self._functions():
            names = ", ".join(self._functions()) or "none"
            self.close()
            raise BuildError(f"the source has no function {function!r} (functions: {names})")
        start = time.perf_counter()
        log.clear()
        try:
            with _stderr_captured(log) if capture else contextlib.nullcontext():
                fn = self.bpf.load_func(self.name.encode(), contract.BPF_PROG_TYPE_SECCOMP)
        except Exception as exc:
            err = ctypes.get_errno()
            self.close()
            raise self._load_error(err, str(exc), "".join(log)) from None
        self.load_seconds = time.perf_counter() - start
        self.fd: int = fn.fd

    # ----------------------------------------------------------------- load

    def _functions(self) -> list[str]:
        lib = import_bcc().libbcc.lib
        lib.bpf_function_name.restype = ctypes.c_char_p
        return [lib.bpf_function_name(self.bpf.module, i).decode()
                for i in range(lib.bpf_num_functions(self.bpf.module))]

    def _only_function(self) -> str:
        names = self._functions()
        if len(names) != 1:
            self.close()
            raise BuildError(
                f"the source defines {len(names)} functions ({', '.join(names) or 'none'}): "
                "name the one to load", hint="bcc.load(SOURCE, function=NAME)")
        return names[0]

    @staticmethod
    def _compile_hint(log: str) -> str | None:
        if "kernel headers" in log.lower() or "kheaders" in log or "modules" in log:
            return ("bcc needs the running kernel's headers: /lib/modules/$(uname -r)/build, "
                    "CONFIG_IKHEADERS (/sys/kernel/kheaders.tar.xz) or BCC_KERNEL_SOURCE")
        return None

    def _load_error(self, err: int, message: str, log: str) -> KernelError:
        text = f"the kernel refused program '{self.name}' (loaded by bcc): {message}"
        if log.strip():
            text += "\n" + _clean(log)
        if err in (_errno.EPERM, _errno.EACCES):
            exc: KernelError = PrivilegeError(
                text, hint="loading needs CAP_BPF (kernel.unprivileged_bpf_disabled), "
                           "and helpers or maps the seccomp_extended tier")
        elif err == _errno.EINVAL and not extended_flag_supported():
            exc = KernelError(text, hint=LACKS_PATCH)
        else:
            exc = KernelError(text)
        exc.errno = err  # type: ignore[attr-defined]
        return exc

    # ---------------------------------------------------------------- use

    def attach(self, flags: Iterable[str | int] | int = (), *,
               set_no_new_privs: bool = True) -> int:
        """Install the filter on the calling thread (see attach.attach)."""
        if self._closed:
            raise KernelError(f"filter '{self.name}' is closed")
        return attach(self.fd, flags, set_no_new_privs=set_no_new_privs)

    def fileno(self) -> int:
        return self.fd

    def __getitem__(self, table: str) -> Any:
        """bcc's table TABLE (KeyError if the source has none of that name)."""
        return self.bpf[table.encode()]

    def table_names(self) -> list[str]:
        lib = import_bcc().libbcc.lib
        lib.bpf_table_name.restype = ctypes.c_char_p
        lib.bpf_num_tables.restype = ctypes.c_ulonglong
        return [lib.bpf_table_name(self.bpf.module, i).decode()
                for i in range(lib.bpf_num_tables(self.bpf.module))]

    def close(self) -> None:
        """Close the program's and tables' fds (an attached filter stays attached:
        the kernel holds its own reference)."""
        if not self._closed:
            self._closed = True
            bpf = getattr(self, "bpf", None)
            if bpf is not None:
                bpf.cleanup()

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def load(text: str, function: str | None = None, **kwargs: Any) -> Filter:
    """Compile TEXT with bcc and load FUNCTION (the only one if None) as a
    seccomp program; see Filter."""
    return Filter(text, function, **kwargs)
