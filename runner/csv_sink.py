"""CSV sink: the per-epoch history as metrics.csv, written with pandas one whole chunk at a time."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


class CsvSink:
    """Appends each chunk with one write and a flush, so the file only ever ends on a
    complete row, even when the run is interrupted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("w", encoding="utf-8", newline="")
        self._header = True

    def write(self, chunk: pd.DataFrame) -> None:
        # float64 repr round-trips exactly, so the CSV holds the very numbers sent to MLflow.
        self._file.write(chunk.to_csv(index=False, header=self._header, lineterminator="\n"))
        self._file.flush()
        self._header = False

    def __enter__(self) -> CsvSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
