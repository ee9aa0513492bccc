"""A file as libsndfile reads it through soundfile's virtual I/O, with a hook on every read.

jibjib.features.audio hashes a recording on the bytes its decoder reads, so
that decoding a FLAC, MP3, Ogg or 24-bit WAV file and hashing it cost one
read of the file, not two.
"""

from __future__ import annotations

import io
import os
from typing import Callable


class ReadHook(io.RawIOBase):
    """Reads of an open file descriptor at this object's own position, each reported to `on_read(position, bytes)`.

    Reads go through os.preadv, so whoever else seeks the same descriptor (the
    header checks) does not disturb the decoder, nor the decoder them.
    """

    def __init__(self, fd: int, size: int, on_read: Callable[[int, memoryview], None]) -> None:
        super().__init__()
        self._fd, self._size, self._on_read = fd, size, on_read
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:
        got = os.preadv(self._fd, [buffer], self._position)
        self._on_read(self._position, memoryview(buffer).cast("B")[:got])
        self._position += got
        return got
