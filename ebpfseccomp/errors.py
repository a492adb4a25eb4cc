"""Errors the toolchain reports to people.

Every failure a user can cause (a bad file, a bad flag, a missing privilege, a
kernel without the patch) is raised as an EbpfSeccompError whose message names
the problem and, where there is one, the fix.  The CLI prints it as one
paragraph and exits with `exit_code`; it never shows a traceback for these.
"""

from __future__ import annotations


class EbpfSeccompError(Exception):
    """A problem the user can act on.  Exit status 1."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None):
        self.message = message
        self.path = path
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class UsageError(EbpfSeccompError):
    """Bad command-line usage.  Exit status 2."""

    exit_code = 2


class ObjectError(EbpfSeccompError):
    """A file that is not a usable BPF seccomp object."""


class BuildError(EbpfSeccompError):
    """clang could not compile a filter; the message carries its diagnostics."""


class EmulationError(EbpfSeccompError):
    """The emulator met something it cannot run faithfully."""


class KernelError(EbpfSeccompError):
    """The running kernel refused, or lacks, something the contract needs."""


class PrivilegeError(KernelError):
    """The caller lacks a capability or sysctl setting that a step needs."""
