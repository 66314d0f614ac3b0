"""The store's interface: the SQLite writer implements it, and the pipeline and IMAP door use nothing else of it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from mailhook.store.interface import Storage
from mailhook.store.writer import Writer

ROOT = Path(__file__).parent.parent / "mailhook"
MEMBERS = {name for name, _ in inspect.getmembers(Storage, inspect.isfunction) if not name.startswith("_")}


def test_the_sqlite_writer_implements_every_method_of_the_interface() -> None:
    assert {"submit", "complete", "health", "committed_position", "quarantined_sources", "lease", "pending_queue",
            "close"} == MEMBERS
    for name in MEMBERS:
        wanted = list(inspect.signature(getattr(Storage, name)).parameters)
        assert list(inspect.signature(getattr(Writer, name)).parameters) == wanted, name


def test_the_pipeline_and_the_imap_watcher_use_only_the_interface() -> None:
    for module in ("pipeline.py", "imap/watcher.py"):
        tree = ast.parse((ROOT / module).read_text())
        used = {
            node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "writer" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
        }
        assert used and used <= MEMBERS, f"{module} uses {sorted(used - MEMBERS)} beyond store.interface.Storage"
