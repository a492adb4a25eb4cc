"""Compile a restricted-C seccomp filter into a BPF object file.

    from ebpfseccomp.build import build
    obj = build("bpf/examples/allowlist_switch.c", out="/tmp/f.o")

runs, in the source's directory,

    clang -O2 -g -target bpf -mcpu=v3 -I <headers> -D__TARGET_ARCH_x86 \\
          -fdebug-compilation-dir=. -fdebug-prefix-map=<headers>=/ebpfseccomp/include \\
          -c f.c -o /tmp/f.o

-g makes clang emit BTF (.BTF, with .BTF.ext line info) next to DWARF; the
checker and the emulator use the line info to name source lines.  -mcpu=v3
allows 32-bit jumps and ALU ops and atomic fetch-and-add, which Linux 6.12
runs.

Reproducible: the output depends only on the source's contents and file
name, the headers' contents, the defines and the arch, not on the directory
the source lives in, the output path or the time.  Clang runs in the
source's directory on the bare file name (so BTF line info names "./f.c" and
can still quote the source text), the compilation directory is recorded as
"." and the headers' location is rewritten.  Extra -I directories are
recorded as given.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError, UsageError
from .syscalls import ARCHES, canonical_arch

#: Where DWARF/BTF say the project headers are, whatever their real location.
HEADER_PREFIX = "/ebpfseccomp/include"

#: The libbpf-style define naming the target architecture, by our arch name.
TARGET_ARCH_DEFINES: dict[str, str] = {
    "x86_64": "__TARGET_ARCH_x86",
    "aarch64": "__TARGET_ARCH_arm64",
}

#: clang options every build uses (before -I/-D and the files).
CLANG_FLAGS: tuple[str, ...] = (
    "-O2",
    "-g",
    "-target",
    "bpf",
    "-mcpu=v3",
    "-Wall",
    "-Wno-unused-function",
    "-fno-ident",
    "-fdebug-compilation-dir=.",
)

_CLANG_PACKAGE_HINT = "install the Debian package `clang` (apt-get install clang), or set $CLANG"


def include_dir() -> Path:
    """The directory holding ebpfseccomp/filter.h.

    $EBPFSECCOMP_INCLUDE if set; else the repository's bpf/include next to the
    package (a checkout, or an editable install); else the copy an install
    placed at <prefix>/share/ebpfseccomp/include.
    """
    env = os.environ.get("EBPFSECCOMP_INCLUDE")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates.append(here.parent / "bpf" / "include")
    candidates.append(here / "include")
    import sys

    candidates.append(Path(sys.prefix) / "share" / "ebpfseccomp" / "include")
    for cand in candidates:
        if (cand / "ebpfseccomp" / "filter.h").is_file():
            return cand
    raise BuildError(
        "cannot find the ebpfseccomp C headers (ebpfseccomp/filter.h)",
        hint="set EBPFSECCOMP_INCLUDE to the bpf/include directory of the source tree",
    )


def default_arch() -> str:
    """The host's architecture if we have tables for it, else x86_64."""
    machine = platform.machine().lower()
    try:
        arch = canonical_arch(machine)
    except UsageError:
        return "x86_64"
    return arch if arch in ARCHES else "x86_64"


def find_clang() -> str:
    """Path of the clang to run: $CLANG, else `clang` on PATH."""
    wanted = os.environ.get("CLANG", "clang")
    found = shutil.which(wanted)
    if not found:
        raise BuildError(f"clang not found ({wanted!r} is not on PATH)", hint=_CLANG_PACKAGE_HINT)
    return found


@dataclass(frozen=True)
class BuildCommand:
    """What build() will run: argv and the directory to run it in."""

    argv: list[str]
    cwd: Path
    src: Path
    out: Path
    arch: str


def _parse_define(name: str, value: object) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\(.*\))?", name):
        raise UsageError(f"bad macro name {name!r} for -D", hint="use -D NAME or -D NAME=VALUE")
    if value is None or value is True:
        return f"-D{name}"
    return f"-D{name}={value}"


def command(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    include_dirs: Iterable[str | os.PathLike[str]] = (),
    defines: Mapping[str, object] | None = None,
    arch: str | None = None,
) -> BuildCommand:
    """Work out the clang command for build(), checking the inputs."""
    src_path = Path(src)
    if not src_path.exists():
        raise BuildError("no such source file", path=str(src))
    if not src_path.is_file():
        raise BuildError("not a regular file", path=str(src))
    if not os.access(src_path, os.R_OK):
        raise BuildError("source file is not readable", path=str(src))
    arch = canonical_arch(arch) if arch else default_arch()
    out_path = Path(out) if out is not None else src_path.with_suffix(".o")
    if out is not None and os.fspath(out).endswith(("/", os.sep)) and not out_path.exists():
        # "-o build/": a directory, made for the purpose
        try:
            out_path.mkdir(parents=True)
        except OSError as exc:
            raise BuildError(f"cannot create the output directory: {exc.strerror}",
                             path=str(out_path), hint="choose another -o") from None
    if out_path.exists() and out_path.is_dir():
        out_path = out_path / src_path.with_suffix(".o").name
    out_dir = out_path.parent if str(out_path.parent) else Path(".")
    if not out_dir.is_dir():
        raise BuildError("output directory does not exist", path=str(out_dir))
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise BuildError(
            "output directory is not writable", path=str(out_dir), hint="choose another -o"
        )
    if out_path.exists() and not os.access(out_path, os.W_OK):
        raise BuildError("output file is not writable", path=str(out_path))
    if out_path.resolve() == src_path.resolve():
        raise UsageError("the output would overwrite the source", path=str(out_path))

    headers = include_dir()
    argv = [find_clang(), *CLANG_FLAGS, f"-fdebug-prefix-map={headers}={HEADER_PREFIX}"]
    for d in include_dirs:
        dpath = Path(d)
        if not dpath.is_dir():
            raise BuildError("include directory does not exist", path=str(d))
        argv.append(f"-I{dpath.resolve()}")
    argv.append(f"-I{headers}")
    # libbpf-style sources (<bpf/bpf_helpers.h> with <linux/types.h>) need the
    # host's <asm/types.h>, which Debian keeps under the multiarch directory;
    # searched last, so it never shadows the project's or the user's headers.
    multiarch = multiarch_include_dir()
    if multiarch is not None:
        argv.append(f"-idirafter{multiarch}")
    argv.append(f"-D{TARGET_ARCH_DEFINES[arch]}")
    for name, value in (defines or {}).items():
        argv.append(_parse_define(name, value))
    src_abs = src_path.resolve()
    argv += ["-c", src_abs.name, "-o", str(out_path.resolve())]
    return BuildCommand(argv=argv, cwd=src_abs.parent, src=src_path, out=out_path, arch=arch)


def _relabel(diagnostics: str, src_name: str, shown: str) -> str:
    """Make clang's `f.c:3:5:` say the path the user gave."""
    if shown == src_name:
        return diagnostics
    pattern = re.compile(rf"(^|(?<=from )){re.escape(src_name)}(?=:\d)", re.MULTILINE)
    return pattern.sub(shown.replace("\\", "\\\\"), diagnostics)


def multiarch_include_dir() -> Path | None:
    """/usr/include/<multiarch> of this machine (where <asm/types.h> lives on
    Debian), or None.  BPF objects are architecture-neutral; only the C type
    headers are taken from there."""
    machine = platform.machine()
    for name in (f"{machine}-linux-gnu", f"{machine}-linux-gnueabihf"):
        d = Path("/usr/include") / name
        if (d / "asm" / "types.h").exists():
            return d
    return None


def build(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    include_dirs: Iterable[str | os.PathLike[str]] = (),
    defines: Mapping[str, object] | None = None,
    arch: str | None = None,
    warnings: list[str] | None = None,
) -> Path:
    """Compile SRC to a BPF object; return the object's path.

    OUT defaults to SRC with the suffix .o; a directory means <dir>/<name>.o.
    DEFINES maps macro names to values (None or True: just -DNAME).  ARCH is
    "x86_64" or "aarch64" (default: the host's); it selects the SYS_<name>
    numbers and EBPFSECCOMP_AUDIT_ARCH.  Raises BuildError with clang's
    diagnostics when the source does not compile.  If WARNINGS is a list,
    clang's warnings for a successful build are appended to it.
    """
    cmd = command(src, out, include_dirs, defines, arch)
    # Compile to a temporary file and rename, so a failed build never leaves
    # a truncated object behind and readers never see a half-written one.
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{cmd.out.name}.", suffix=".tmp", dir=cmd.out.parent or Path(".")
        )
    except OSError as exc:
        raise BuildError(
            f"cannot write to the output directory: {exc.strerror}",
            path=str(cmd.out.parent),
            hint="choose another -o",
        ) from None
    os.close(fd)
    tmp = Path(tmp_name)
    argv = cmd.argv[:-1] + [str(tmp.resolve())]
    env = dict(os.environ)
    env.setdefault("LC_ALL", "C")
    env.pop("SOURCE_DATE_EPOCH", None)
    try:
        try:
            proc = subprocess.run(
                argv, cwd=cmd.cwd, capture_output=True, text=True, env=env, check=False
            )
        except OSError as exc:
            raise BuildError(
                f"cannot run {argv[0]}: {exc.strerror}", hint=_CLANG_PACKAGE_HINT
            ) from None
        if proc.returncode != 0:
            diag = _relabel(proc.stderr.strip(), Path(argv[-3]).name, str(cmd.src))
            errors = sum(1 for ln in diag.splitlines() if re.search(r": (fatal )?error:", ln))
            summary = f"compilation failed ({errors or 'clang'} error{'s' if errors != 1 else ''})"
            if not diag:
                diag = f"clang exited with status {proc.returncode} and printed nothing"
            raise BuildError(f"{summary}:\n{diag}", path=str(cmd.src))
        if warnings is not None and proc.stderr.strip():
            warnings.append(_relabel(proc.stderr.strip(), Path(argv[-3]).name, str(cmd.src)))
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, cmd.out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return cmd.out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
