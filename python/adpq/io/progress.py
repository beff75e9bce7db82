"""The progress bar of long folder operations."""
from __future__ import annotations

import sys
import time


class Progress:
    """A progress bar over bytes on stderr (tqdm when installed, else a plain one)."""

    def __init__(self, total_bytes: int, enabled: bool, desc: str):
        self.bar = None
        self.enabled = enabled
        self.total = max(total_bytes, 1)
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, file=sys.stderr,
                            dynamic_ncols=True, leave=True)
        except ImportError:
            self.desc = desc

    def update(self, nbytes: int, name: str) -> None:
        if not self.enabled:
            return
        self.done += nbytes
        if self.bar is not None:
            self.bar.set_postfix_str(name[-40:], refresh=False)
            self.bar.update(nbytes)
            return
        now = time.perf_counter()
        if now - self._last < 0.2 and self.done < self.total:
            return
        self._last = now
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r{self.desc} [{bar:<30}] {100 * frac:5.1f}% {name[-40:]:<40}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")
