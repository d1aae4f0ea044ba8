"""Console sink: every N-th epoch printed like seed 002's training loop, as chunks arrive."""

from __future__ import annotations

import sys

import pandas as pd


class ConsoleSink:
    def __init__(self, every: int) -> None:
        self.every = every

    def write(self, chunk: pd.DataFrame) -> None:
        shown = chunk[chunk["epoch"] % self.every == 0]
        names = [c for c in chunk.columns if c not in ("epoch", "loss")]
        for row in shown.itertuples(index=False):
            values = ", ".join(f"{n}={getattr(row, n)!r}" for n in names)
            print(f"Epoch {row.epoch}: loss={row.loss!r}, {values}")
        sys.stdout.flush()
