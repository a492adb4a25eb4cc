"""``paused_gc()``: no cyclic garbage collection inside the block.

Decoding, linking and checking a big program make millions of small tuples
that never form cycles; with the collector running, Python 3.11 scans the
growing heap again and again (a 1,000,000-instruction object decoded in 0.8 s
instead of 0.1 s).  Reference counting still frees everything as usual.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
