"""Profile -> filter: the one code path `convert` and `run --profile` share.

    sel = select_profile("profile.json", arch="x86_64", caps=None, kernel=None)
    plan = semantics.compile(sel)
    write(plan, "filter.o")              # .c: the C; .o: built with ebpfseccomp.build
    classic_program(sel)                 # libseccomp's cBPF for the same selection
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..build import build
from . import model, render, semantics

if TYPE_CHECKING:
    from .libseccomp import Classic


def running_kernel() -> tuple[int, ...] | None:
    try:
        return model.parse_kernel(platform.release())
    except model.PolicyError:
        return None


def select_profile(path: str, arch: str | None = None, caps: str | None = None,
                   kernel: str | None = None) -> model.Selection:
    """Parse PATH and resolve it for one container (Docker's rules)."""
    from ..build import default_arch

    profile = model.load(path)
    version = model.parse_kernel(kernel) if kernel else running_kernel()
    return model.select(profile, arch=arch or default_arch(), caps=model.parse_caps(caps),
                        kernel=version)


def source(plan: semantics.Plan) -> str:
    return render.render(plan)


def write(plan: semantics.Plan, out: str | os.PathLike[str]) -> Path:
    """Write the C (OUT ending in .c) or build the object (anything else, e.g. .o)."""
    out = Path(out)
    text = source(plan)
    if out.suffix == ".c":
        out.write_text(text)
        return out
    with tempfile.TemporaryDirectory(prefix="ebpfseccomp-convert-") as tmp:
        src = Path(tmp) / (out.stem + ".c")
        src.write_text(text)
        arch = plan.arches[0].name if plan.arches else None
        return build(src, out=out, arch=arch)


def classic_program(sel: model.Selection, optimize: bool = False) -> Classic:
    from . import libseccomp  # ctypes and libseccomp.so only when asked for

    return libseccomp.build(sel, optimize=optimize)
