"""The sinks: metrics.csv in whole chunks with exact numbers, the console and the bar."""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from runner.sinks import CsvSink, ProgressSink, SinkError, csv_rows
from runner.tracking import Ending

COLUMNS = ["epoch", "loss", "a"]


def test_the_csv_rows_are_the_bytes_pandas_writes() -> None:
    rng = np.random.default_rng(0)
    wide = rng.standard_normal(500) * 10.0 ** rng.integers(-300, 300, 500)
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e16, 1e-5, 123456789.0, 5e-324, 0.1 + 0.2]
    frame = pd.DataFrame({
        "epoch": np.arange(510),
        "loss": np.concatenate([wide, special]),
        "a": rng.standard_normal(510).astype(np.float32).astype(np.float64),
        "lr": rng.uniform(size=510).astype(np.float32),  # a float32 column, as written
    })  # fmt: skip
    fast = frame.drop(columns="lr")  # int64 and float64: the runner's chunks
    for chunk in (fast, fast.iloc[:0], fast.iloc[505:506], frame):
        expected = chunk.to_csv(index=False, header=False, lineterminator="\n")
        assert csv_rows(chunk) == expected


def test_chunks_append_to_one_exact_csv(tmp_path: Path) -> None:
    chunks = [
        pd.DataFrame({"epoch": [0, 1], "loss": [2.4166667461395264, 0.1], "a": [1.0, 1 / 3]}),
        pd.DataFrame({"epoch": [2], "loss": [1e-30], "a": [0.6666666269302368]}),
    ]
    path = tmp_path / "metrics.csv"
    sink = CsvSink(path, COLUMNS)
    sink.open()
    assert pd.read_csv(path).columns.tolist() == COLUMNS  # a run of no epoch has a header
    sink.write(chunks[0])
    # Readable with complete rows while the run is still going.
    pd.testing.assert_frame_equal(pd.read_csv(path), chunks[0])
    sink.write(chunks[1])
    sink.close(Ending("FINISHED"))
    back = pd.read_csv(path)
    pd.testing.assert_frame_equal(back, pd.concat(chunks, ignore_index=True), check_exact=True)


def test_a_full_disk_leaves_whole_rows_and_one_line(tmp_path: Path) -> None:
    """A write cut short (here by a file-size limit, as a full disk would) is undone."""
    path = tmp_path / "metrics.csv"
    sink = CsvSink(path, COLUMNS)
    sink.open()
    small = pd.DataFrame({"epoch": range(10), "loss": np.linspace(1, 0, 10), "a": 0.5})
    sink.write(small)
    size = path.stat().st_size
    big = pd.DataFrame({"epoch": range(10, 5000), "loss": np.linspace(1, 0, 4990), "a": 0.5})
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 1000, limits[1]))
    try:
        with pytest.raises(SinkError, match=r"^cannot write .*metrics.csv \(File too large\)$"):
            sink.write(big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    sink.close(Ending("FAILED"))
    assert path.stat().st_size == size and path.read_bytes().endswith(b"\n")
    pd.testing.assert_frame_equal(pd.read_csv(path), small, check_dtype=False)
    assert os.access(path, os.R_OK)


def test_progress_bar_moves_by_chunks() -> None:
    bar = ProgressSink(epochs=30)
    bar.open()
    bar.write(pd.DataFrame({"epoch": range(10), "loss": np.linspace(1, 0.5, 10)}))
    assert bar.bar.n == 10 and not bar.bar.disable  # still shown
    bar.write(pd.DataFrame({"epoch": range(10, 30), "loss": np.linspace(0.5, 0.1, 20)}))
    assert bar.bar.n == 30 and bar.bar.postfix == "loss=0.1"
    assert bar.bar.disable  # closed once full: no full bar sits there while the run ends
    bar.close(Ending("FINISHED"))
