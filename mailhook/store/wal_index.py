"""How far the WAL has grown past its last checkpoint, read from SQLite's shared WAL index (the -shm file).

The writer asks after every commit whether the checkpointer should run; a
query would be a statement per commit, and the -wal file's size is only its
high-water mark (SQLite writes the WAL again from its start after a complete
checkpoint). The WAL index holds both counts. Its layout is SQLite's,
documented in https://www.sqlite.org/walformat.html ("The WAL-Index Header",
"The WAL-Index Checkpoint Information"), unchanged since SQLite 3.7.0;
tests/test_library_internals.py checks it still holds.

It is read where SQLite itself maps it in this process (/proc/self/maps),
never through a file descriptor of our own: SQLite's locks on the -shm file
are POSIX record locks, which closing *any* descriptor of the file drops for
the whole process (Python's mmap closes the duplicate it keeps), after which
another process may take the file for its own and truncate it under every
mapping (SIGBUS). SQLite's mapping lives as long as one connection of this
process has the database open: the writer's, which outlives every reader here.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

# The WAL-index header, in the machine's byte order: iVersion (3007000) at 0, isInit at 12, szPage at 14,
# mxFrame (the last valid frame) at 16; SQLite keeps a second copy of the 48-byte header at 48, then the
# checkpoint information, whose nBackfill (the frames copied back) is at 96.
VERSION = 3007000
_VERSION_AT = 0
_INIT_AT = 12
_PAGE_SIZE_AT = 14
_MAX_FRAME_AT = 16
_BACKFILL_AT = 96


class WalIndex:
    """SQLite's own mapping of a database's WAL index, read to say how many WAL frames wait for a checkpoint.

    Nothing of it is ours to close: the mapping is SQLite's, and stays while a
    connection of this process has the database open (the writer's outlives it).
    """

    def __init__(self, address: int) -> None:
        self._frames = ctypes.c_uint32.from_address(address + _MAX_FRAME_AT)
        self._backfilled = ctypes.c_uint32.from_address(address + _BACKFILL_AT)

    @classmethod
    def open(cls, database: str | Path, page_size: int) -> WalIndex | None:
        """Find SQLite's mapping of `database`'s -shm in this process; None unless it is a WAL index of `page_size`."""
        shm = os.path.realpath(f"{database}-shm")
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return None
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5] == shm and int(fields[2], 16) == 0:
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                if end - start >= _BACKFILL_AT + 4 and _valid(start, page_size):
                    return cls(start)
        return None

    def pending(self) -> int:
        """Return how many WAL frames have not been copied back into the database yet."""
        # A torn read (a commit updating the header meanwhile) is off by one commit's frames: only a hint.
        return max(0, self._frames.value - self._backfilled.value)

    def frames(self) -> int:
        """Return how many frames the WAL holds (fewer again once SQLite writes the WAL anew from its start)."""
        return int(self._frames.value)

    def backfilled(self) -> int:
        """Return how many of the WAL's frames have been copied back (0 again once SQLite writes the WAL anew)."""
        return int(self._backfilled.value)


def _valid(address: int, page_size: int) -> bool:
    """Say whether the mapping at `address` starts with an initialised WAL-index header for pages of `page_size`."""
    version = ctypes.c_uint32.from_address(address + _VERSION_AT).value
    initialised = ctypes.c_uint8.from_address(address + _INIT_AT).value
    size = ctypes.c_uint16.from_address(address + _PAGE_SIZE_AT).value
    return version == VERSION and initialised == 1 and (size if size != 1 else 65536) == page_size
