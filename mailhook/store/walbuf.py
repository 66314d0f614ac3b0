"""The WAL-buffering VFS (walbuf.c): loaded into this process's SQLite once, or SQLite's default VFS instead.

SQLite writes each WAL frame as two writes; the writer's connection, opened through the
"walbuf" VFS, writes a commit's frames with one (docs/operations.md, "The WAL buffer").
Readers keep the default VFS: the files, their format and their locks are the same.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import os
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("mailhook.store")

VFS = "walbuf"
ENTRY_POINT = "sqlite3_walbuf_init"

_SQLITE_OPEN_READWRITE_CREATE = 0x02 | 0x04

_lock = threading.Lock()
_loaded: bool | None = None


def library() -> Path | None:
    """Return the built extension inside the package, or None where it was not built."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = Path(__file__).with_name(f"_walbuf{suffix}")
        if candidate.exists():
            return candidate
    return None


def available() -> bool:
    """Register the VFS on the first call (logging once at INFO if it cannot be); return whether it is registered."""
    global _loaded
    with _lock:
        if _loaded is None:
            reason = _load()
            _loaded = reason is None
            if reason is not None:
                log.info("the writer writes its WAL through SQLite's default VFS: %s", reason)
        return _loaded


def _load() -> str | None:
    """Load the extension into the SQLite the sqlite3 module uses; return why not, or None."""
    path = library()
    if path is None:
        return "the walbuf extension was not built (it needs a C compiler and sqlite3ext.h when installing)"
    try:
        probe = sqlite3.connect(":memory:")
        try:
            if hasattr(probe, "enable_load_extension"):
                probe.enable_load_extension(True)
                probe.load_extension(str(path))
            else:
                _load_without_the_module(path)
        finally:
            probe.close()
        # The VFS must be in the SQLite this module talks to, not in a second copy of the library.
        sqlite3.connect(f"file:walbuf-probe?mode=memory&vfs={VFS}", uri=True).close()
    except (sqlite3.Error, OSError, AttributeError) as exc:
        return f"cannot load {path.name}: {exc}"
    return None


def _load_without_the_module(path: Path) -> None:
    """Load the extension through SQLite's C API where this Python's sqlite3 lacks load_extension.

    A Python built without --enable-loadable-sqlite-extensions (pyenv's default) still links a
    SQLite that can load them. Looking the functions up through the private _sqlite3 module's own
    handle finds that very SQLite, linked into the module or in the library it depends on; an
    extension loaded there registers its VFS for every connection the module opens.
    """
    import _sqlite3  # the module's C part: its file is the handle to look SQLite up from (test_library_internals)

    sqlite = ctypes.CDLL(_sqlite3.__file__)
    sqlite.sqlite3_open_v2.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_char_p]
    sqlite.sqlite3_enable_load_extension.argtypes = [ctypes.c_void_p, ctypes.c_int]
    sqlite.sqlite3_load_extension.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    sqlite.sqlite3_free.argtypes = [ctypes.c_void_p]
    sqlite.sqlite3_close.argtypes = [ctypes.c_void_p]
    db = ctypes.c_void_p()
    if sqlite.sqlite3_open_v2(b":memory:", ctypes.byref(db), _SQLITE_OPEN_READWRITE_CREATE, None) != 0:
        sqlite.sqlite3_close(db)
        raise OSError("sqlite3_open_v2 failed")
    try:
        if sqlite.sqlite3_enable_load_extension(db, 1) != 0:
            raise OSError("sqlite3_enable_load_extension failed")
        error = ctypes.c_void_p()
        if sqlite.sqlite3_load_extension(db, os.fsencode(path), ENTRY_POINT.encode(), ctypes.byref(error)) != 0:
            message = ctypes.string_at(error.value).decode(errors="replace") if error.value else "failed"
            sqlite.sqlite3_free(error)
            raise OSError(message)
    finally:
        sqlite.sqlite3_close(db)
