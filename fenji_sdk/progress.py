"""A one-line text progress bar for ``Client.wait``: redrawn in place with ``\r`` (a terminal and
Jupyter's stream output both honour it), so no progress library is needed."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["ProgressLine"]


class ProgressLine:
    def __init__(self, label: str, *, stream: TextIO | None = None, width: int = 24) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self._last = ""

    def update(self, done: int, total: int, status: str) -> None:
        filled = round(self.width * done / total) if total else 0
        line = f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {status}"
        if line != self._last:  # a notebook keeps every write: only changes are written
            self.stream.write(line)
            self.stream.flush()
            self._last = line

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
