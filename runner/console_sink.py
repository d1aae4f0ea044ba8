"""Console sinks: every N-th epoch printed like seed 002 does, and a progress bar."""

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


class ProgressSink:
    """A tqdm bar with the current loss, shown once a run has lasted two seconds.

    It moves one chunk at a time (the loop hands out nothing in between), so a long
    run with the default chunk of 1000 epochs moves in steps of 1000.
    """

    def __init__(self, epochs: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=epochs, unit="epoch", delay=2.0, dynamic_ncols=True, leave=False)

    def write(self, chunk: pd.DataFrame) -> None:
        self.bar.update(len(chunk))
        self.bar.set_postfix(loss=f"{chunk['loss'].iloc[-1]:.4g}", refresh=False)

    def close(self) -> None:
        self.bar.close()
