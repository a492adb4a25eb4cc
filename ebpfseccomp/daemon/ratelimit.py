"""Log lines that a client can provoke, at a bounded rate.

A hostile client must not be able to fill the journal: a repeated message
is written at most BURST times per INTERVAL, and the next one written after
a quiet spell says how many were left out."""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, what: str, *, interval: float = 10.0,
                 burst: int = 3) -> None:  # fmt: skip
        self.logger = logger
        self.what = what
        self.interval = interval
        self.burst = burst
        self._window_start = float("-inf")
        self._in_window = 0
        self.suppressed = 0

    def _allow(self) -> bool:
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            if self.suppressed:
                self.logger.warning(
                    "%s: %d more not logged in the last %.0f s",
                    self.what,
                    self.suppressed,
                    now - self._window_start,
                )
                self.suppressed = 0
            self._window_start = now
            self._in_window = 0
        if self._in_window < self.burst:
            self._in_window += 1
            return True
        self.suppressed += 1
        return False

    def log(self, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        if self._allow():
            self.logger.log(level, msg, *args, exc_info=exc_info)

    def warning(self, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        self.log(logging.ERROR, msg, *args)

    def exception(self, msg: str, *args: Any) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=True)
