"""The store's interface: the SQLite writer implements it, and the pipeline and IMAP door use nothing else of it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from mailhook.store.interface import Storage
from mailhook.store.pg.writer import PgWriter
from mailhook.store.writer import Writer

ROOT = Path(__file__).parent.parent / "mailhook"
MEMBERS = {name for name, _ in inspect.getmembers(Storage, inspect.isfunction) if not name.startswith("_")}


PROPERTIES = {name for name, _ in inspect.getmembers(Storage, lambda m: isinstance(m, property))}


@pytest.mark.parametrize("backend", [Writer, PgWriter])
def test_both_stores_implement_every_method_of_the_interface(backend: type) -> None:
    assert {"submit", "complete", "health", "committed_position", "quarantined_sources", "totals",
            "lease", "pending_queue", "close"} == MEMBERS
    assert {"depth", "alive"} == PROPERTIES
    for name in MEMBERS:
        wanted = list(inspect.signature(getattr(Storage, name)).parameters)
        assert list(inspect.signature(getattr(backend, name)).parameters) == wanted, name
    for name in PROPERTIES:
        assert isinstance(getattr(backend, name), property), name


def test_the_server_and_the_doors_commands_open_the_store_through_the_opener() -> None:
    for module in ("opening.py", "imap/door.py", "files/ingest.py"):
        tree = ast.parse((ROOT / module).read_text())
        called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and isinstance(node.func, ast.Name)}
        named = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert "open_storage" in named, module
        assert "Writer" not in called, f"{module} builds the SQLite writer itself"


def test_the_pipeline_and_the_imap_watcher_use_only_the_interface() -> None:
    for module in ("pipeline.py", "submitter.py", "imap/watcher.py", "imap/folder_session.py"):
        tree = ast.parse((ROOT / module).read_text())
        used = {
            node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "writer" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
        }
        assert used and used <= MEMBERS, f"{module} uses {sorted(used - MEMBERS)} beyond store.interface.Storage"
