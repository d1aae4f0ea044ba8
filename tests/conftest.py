"""Processes a test started are ended when it ends, passed, failed or timed out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import STARTED, kill_tree


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            kill_tree(process.pid)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
