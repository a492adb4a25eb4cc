"""Old import path of the emulator's maps, kept for code written against it:
they live in ebpfseccomp.analysis.emumaps (this name is that module)."""

import sys

from .analysis import emumaps as _emumaps

sys.modules[__name__] = _emumaps
