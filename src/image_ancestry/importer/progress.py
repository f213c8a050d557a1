"""Progress on standard error while importing several sources.

On a terminal, one bar redrawn in place (``[#####.....] 3/10 docker://...``); otherwise one
plain line per source (``imported 3/10: docker://... (2 images)``, or ``failed 3/10: ...``),
which reads well in CI logs. Nothing is shown for a single source or with ``--quiet``.
"""

from __future__ import annotations

import shutil
from typing import TextIO

_WIDTH = 24


class Progress:
    def __init__(self, total: int, stream: TextIO, *, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled and total > 1
        self.tty = self.enabled and stream.isatty()
        self.done = 0

    def advance(self, source: str, images: int | None) -> None:
        """Count one source done; ``images`` is None when it failed."""
        self.done += 1
        if not self.enabled:
            return
        if self.tty:
            filled = _WIDTH * self.done // self.total
            bar = "#" * filled + "." * (_WIDTH - filled)
            columns = shutil.get_terminal_size((80, 24)).columns
            line = f"[{bar}] {self.done}/{self.total} {source}"[: max(columns - 1, 10)]
            self.stream.write(f"\r\x1b[K{line}")
            if self.done == self.total:
                self.stream.write("\n")
        else:
            if images is None:
                self.stream.write(f"failed {self.done}/{self.total}: {source}\n")
            else:
                plural = "s" * (images != 1)
                self.stream.write(
                    f"imported {self.done}/{self.total}: {source} ({images} image{plural})\n"
                )
        self.stream.flush()
