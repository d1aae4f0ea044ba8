"""Where the history goes: one interface for every sink, and the CSV and console sinks.

A run opens its sinks before the first epoch, writes each chunk of history to every
one of them, and closes them with how it ended (runner/run.py). The MLflow sink, for a
run or a sweep's parent run, is runner/mlflow_sink.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from runner.loop import Abandon
from runner.tracking import Ending

log = logging.getLogger("runner")


class Sink(Protocol):
    def open(self) -> None: ...
    def write(self, chunk: pd.DataFrame) -> None: ...
    def close(self, ending: Ending) -> None: ...


class SinkError(Abandon):
    """A sink that must not miss a row (the CSV) could not write; the message is one line.
    The loop ends that run (FAILED), and the runs trained with it go on."""


def csv_rows(chunk: pd.DataFrame) -> str:
    """The rows as pandas' to_csv writes them: each number's repr (float64's round-trips
    exactly, so the CSV holds the very numbers sent to MLflow), an empty cell for NaN. Written
    with Python's repr, which is C: twice as fast as to_csv, the largest host cost of an epoch."""
    if chunk.empty:
        return ""
    if not all(dtype in (np.int64, np.float64) for dtype in chunk.dtypes):  # (float32: its own)
        return chunk.to_csv(index=False, header=False, lineterminator="\n")
    columns = [chunk[c].tolist() for c in chunk.columns]
    rows = zip(*columns, strict=True)
    text = "\n".join(",".join(map(repr, row)) for row in rows) + "\n"
    return text.replace("nan", "") if "nan" in text else text  # no other number spells it


class CsvSink:
    """metrics.csv: the header at open, then each chunk with one write.

    The file only ever ends on a whole row: a write that fails (a full disk) is cut back
    to the last whole chunk before the error is raised.
    """

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        self.fd = -1

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._append(",".join(self.columns) + "\n")

    def write(self, chunk: pd.DataFrame) -> None:
        self._append(csv_rows(chunk))

    def _append(self, text: str) -> None:
        data = memoryview(text.encode())
        end = os.lseek(self.fd, 0, os.SEEK_CUR)
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError as err:
            os.ftruncate(self.fd, end)
            raise SinkError(f"cannot write {self.path} ({err.strerror})") from None

    def close(self, ending: Ending) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ConsoleSink:
    """Every N-th epoch's row, printed as seed 002 prints it (and into the job's log)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def open(self) -> None:
        pass

    def write(self, chunk: pd.DataFrame) -> None:
        shown = chunk[chunk["epoch"] % self.every == 0]
        names = [c for c in chunk.columns if c not in ("epoch", "loss")]
        for row in shown.itertuples(index=False):
            values = ", ".join(f"{n}={getattr(row, n)!r}" for n in names)
            log.info(f"Epoch {row.epoch}: loss={row.loss!r}, {values}")

    def close(self, ending: Ending) -> None:
        pass


class ProgressSink:
    """A tqdm bar with the current loss, shown once a run has lasted two seconds.

    It moves one chunk at a time (the loop hands out nothing in between), so a long run
    with the default chunk of 1000 epochs moves in steps of 1000.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def open(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.epochs, unit="epoch", delay=2.0, dynamic_ncols=True,
                        leave=False)  # fmt: skip

    def write(self, chunk: pd.DataFrame) -> None:
        self.bar.update(len(chunk))
        self.bar.set_postfix(loss=f"{chunk['loss'].iloc[-1]:.4g}", refresh=False)
        if self.bar.n >= self.epochs:  # trained: gone, not a full bar while plots are drawn
            self.bar.close()

    def close(self, ending: Ending) -> None:
        self.bar.close()
