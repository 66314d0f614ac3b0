"""The optional C part of mailhook: the WAL-buffering SQLite VFS, built where a compiler and sqlite3ext.h exist."""

from setuptools import Extension, setup

# A SQLite loadable extension, not a Python module: mailhook.store.walbuf loads it into SQLite. optional=True
# installs mailhook without it where it cannot be built; the writer then uses SQLite's default VFS.
setup(ext_modules=[Extension("mailhook.store._walbuf", sources=["mailhook/store/walbuf.c"], optional=True)])
