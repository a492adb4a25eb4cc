"""Static analysis and emulation of seccomp BPF programs, one module per pass.

The checker (``check(obj, program=None, unprivileged=False) -> Report``):

* ``checker``: the driver and what the passes share (``Checker``);
* ``encoding``: instruction encoding (the kernel's opcode table);
* ``cfg``: control flow and loops;
* ``state``: stack and register state, the one data-flow pass;
* ``access``: context and map access, pointer rules, the argument-width warning;
* ``helpers``: helpers and tiers;
* ``limits``: instruction count, call depth, combined stack size;
* ``report``: ``Report``, ``Problem``, ``HelperUse``.

Beside it:

* ``disasm``: the listing in seccomp's terms (``disasm``, ``disasm_data``);
* ``emulator`` + ``translate`` + ``emumaps``: the emulator
  (``Emulator(obj).run(SyscallInput(...)) -> Result``; docs/emulator.md);
* ``cacheability``: the kernel's constant-action analysis (which syscalls
  the action cache answers without running the filter).

Import from the modules (``from ebpfseccomp.analysis.checker import check``)
or from here.
"""

from .checker import check
from .disasm import disasm, disasm_data
from .emulator import Emulator, Environment, Result, SyscallInput
from .report import HelperUse, Problem, Report

__all__ = [
    "Emulator",
    "Environment",
    "HelperUse",
    "Problem",
    "Report",
    "Result",
    "SyscallInput",
    "check",
    "disasm",
    "disasm_data",
]
