"""Length-prefixed pickles over a pipe: how the runner and its tracking process talk.

A frame is 8 bytes of length, then the pickle. Reading keeps what it has read of a frame
in a buffer, so a Ctrl-C that interrupts a read loses nothing: the next read goes on.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
from typing import Any

HEADER = struct.Struct(">Q")


def write_frame(fd: int, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Whole frames from a file descriptor; None once the other end has closed it."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer = fd, bytearray()

    def has_data(self) -> bool:
        """Whether a read would find something at once (a frame, or the end)."""
        return self._complete() or bool(select.select([self.fd], [], [], 0)[0])

    def _complete(self) -> int:
        """The size of the whole frame at the head of the buffer, or 0."""
        if len(self.buffer) < HEADER.size:
            return 0
        end = HEADER.size + HEADER.unpack_from(self.buffer)[0]
        return end if len(self.buffer) >= end else 0

    def read(self) -> Any:
        while True:
            if end := self._complete():
                data = bytes(self.buffer[HEADER.size : end])
                del self.buffer[:end]
                return pickle.loads(data)
            more = os.read(self.fd, 1 << 20)  # an interrupt here has consumed nothing
            if not more:
                return None
            self.buffer += more
