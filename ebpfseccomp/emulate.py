"""Old import path of the emulator, kept for code written against it: it
lives in ebpfseccomp.analysis.emulator (this name is that module)."""

import sys

from .analysis import emulator as _emulator

sys.modules[__name__] = _emulator
