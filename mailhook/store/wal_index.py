"""How far the WAL has grown past its last checkpoint, read from SQLite's shared WAL index (the -shm file).

The writer asks after every commit whether the checkpointer should run; a
query would be a statement per commit, and the -wal file's size is only its
high-water mark (SQLite writes the WAL again from its start after a complete
checkpoint). The WAL index, which every connection maps, holds both counts.
Its layout is SQLite's, documented in https://www.sqlite.org/walformat.html
("The WAL-Index Header", "The WAL-Index Checkpoint Information"), unchanged
since SQLite 3.7.0; tests/test_library_internals.py checks it still holds.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

# The WAL-index header, in the machine's byte order: iVersion (3007000) at 0, isInit at 12, szPage at 14,
# mxFrame (the last valid frame) at 16, the WAL header's first salt at 32; SQLite keeps a second copy
# of the 48-byte header at 48, then the checkpoint information, whose nBackfill (the frames copied back) is at 96.
VERSION = 3007000
_HEADER = struct.Struct("=I8xBxHI")  # iVersion, isInit, szPage, mxFrame
_FRAMES = struct.Struct("=I")
_MAX_FRAME_AT = 16
_BACKFILL_AT = 96
_LENGTH = 136


class WalIndex:
    """A read-only mapping of a database's WAL index that says how many WAL frames wait for a checkpoint."""

    def __init__(self, map_: mmap.mmap) -> None:
        self._map = map_

    @classmethod
    def open(cls, database: str | Path, page_size: int) -> WalIndex | None:
        """Map `database`'s -shm file; None unless it holds an initialised WAL index of `page_size` pages."""
        try:
            fd = os.open(f"{database}-shm", os.O_RDONLY)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size < _LENGTH:
                return None
            map_ = mmap.mmap(fd, _LENGTH, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        version, initialised, size, _ = _HEADER.unpack_from(map_, 0)
        if version != VERSION or initialised != 1 or (size if size != 1 else 65536) != page_size:
            map_.close()
            return None
        return cls(map_)

    def pending(self) -> int:
        """Return how many WAL frames have not been copied back into the database yet."""
        # A torn read (a commit updating the header meanwhile) is off by one commit's frames: only a hint.
        frames: int = _FRAMES.unpack_from(self._map, _MAX_FRAME_AT)[0]
        backfilled: int = _FRAMES.unpack_from(self._map, _BACKFILL_AT)[0]
        return max(0, frames - backfilled)

    def frames(self) -> int:
        """Return how many frames the WAL holds (fewer again once SQLite writes the WAL anew from its start)."""
        return int(_FRAMES.unpack_from(self._map, _MAX_FRAME_AT)[0])

    def backfilled(self) -> int:
        """Return how many of the WAL's frames have been copied back (0 again once SQLite writes the WAL anew)."""
        return int(_FRAMES.unpack_from(self._map, _BACKFILL_AT)[0])

    def close(self) -> None:
        """Unmap the index."""
        self._map.close()
