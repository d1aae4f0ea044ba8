"""metrics.csv: whole chunks, exact numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from runner.csv_sink import CsvSink


def test_chunks_append_to_one_exact_csv(tmp_path: Path) -> None:
    chunks = [
        pd.DataFrame({"epoch": [0, 1], "loss": [2.4166667461395264, 0.1], "a": [1.0, 1 / 3]}),
        pd.DataFrame({"epoch": [2], "loss": [1e-30], "a": [0.6666666269302368]}),
    ]
    path = tmp_path / "metrics.csv"
    with CsvSink(path) as sink:
        sink.write(chunks[0])
        # Readable with complete rows while the run is still going.
        pd.testing.assert_frame_equal(pd.read_csv(path), chunks[0])
        sink.write(chunks[1])
    back = pd.read_csv(path)
    pd.testing.assert_frame_equal(back, pd.concat(chunks, ignore_index=True), check_exact=True)
