"""The import graph keeps the rules docs/architecture.md states (module-level imports, walked with `ast`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent / "mailhook"

# docs/architecture.md, "Who may import whom".
CORE = ("mailhook.models", "mailhook.errors", "mailhook.extract", "mailhook.derived")
STORE = ("mailhook.store",)
DOORS = ("mailhook.smtp", "mailhook.http", "mailhook.imap", "mailhook.files")
# What the pure core must never touch: sockets, the database, the event loop, other processes.
IMPURE = ("socket", "ssl", "selectors", "asyncio", "sqlite3", "sqlite_utils", "subprocess", "multiprocessing",
          "aiohttp", "aiosmtpd", "imapclient", "urllib.request", "http.client")


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _in(module: str, family: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in family)


def _graph() -> dict[str, set[str]]:
    """Map each mailhook module to what it imports at module level (lazy and TYPE_CHECKING imports aside)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        imports: set[str] = set()
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Import):
                imports |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "mailhook" or (node.module.startswith("mailhook.") and _is_package(node.module)):
                    imports |= {f"{node.module}.{alias.name}" for alias in node.names}
                else:
                    imports.add(node.module)
        graph[_name(path)] = imports
    return graph


def _is_package(module: str) -> bool:
    return (ROOT.parent / module.replace(".", "/") / "__init__.py").is_file()


def _uses_environment(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            return True
    return False


GRAPH = _graph()


def _broken(rule: str, found: list[str]) -> str:
    return f"{rule} (docs/architecture.md); broken by: {', '.join(found)}"


def test_the_pure_core_imports_only_the_core_and_touches_no_socket_database_or_environment() -> None:
    found = [f"{m} -> {i}" for m, imports in GRAPH.items() if _in(m, CORE) for i in imports
             if (i.startswith("mailhook") and not _in(i, CORE)) or _in(i, IMPURE)]
    found += [f"{_name(path)} reads the environment" for path in sorted(ROOT.rglob("*.py"))
              if _in(_name(path), CORE) and _uses_environment(path)]
    assert not found, _broken("the core (models, errors, extract, derived) imports only itself", found)


def test_the_store_knows_nothing_of_the_pipeline_the_doors_or_the_commands() -> None:
    allowed = ("mailhook.privileges", "mailhook.health", "mailhook.backoff", "mailhook.thread_names")
    found = [f"{m} -> {i}" for m, imports in GRAPH.items() if _in(m, STORE) for i in imports
             if i.startswith("mailhook") and not (_in(i, CORE) or _in(i, STORE) or i in allowed)]
    assert not found, _broken("the store imports only the core and itself", found)


def test_the_pipeline_knows_no_door_and_the_backlog_is_its_client() -> None:
    found = [f"{m} -> {i}" for m in ("mailhook.pipeline", "mailhook.submitter", "mailhook.reprocess")
             for i in GRAPH[m]
             if _in(i, (*DOORS, "mailhook.backlog", "mailhook.backlog_workers", "mailhook.pending_extraction",
                        "mailhook.server", "mailhook.runtime", "mailhook.status_line", "mailhook.opening",
                        "mailhook.cli", "mailhook.config"))]
    assert not found, _broken("the pipeline imports no door, backlog, server or configuration", found)


def test_doors_know_the_store_only_by_its_interface() -> None:
    # The opener (and the writer): where a door's own command builds its store.
    allowed = ("mailhook.store.interface", "mailhook.store.open", "mailhook.store.writer")
    found = [f"{m} -> {i}" for m, imports in GRAPH.items() if _in(m, DOORS) for i in imports
             if (_in(i, STORE) and i not in allowed) or i in ("sqlite3", "sqlite_utils")]
    assert not found, _broken("a door imports from the store only its interface (and the opener to build)", found)


def test_the_store_interface_needs_nothing_of_sqlite_or_postgresql() -> None:
    found = [i for i in GRAPH["mailhook.store.interface"]
             if i in ("sqlite3", "sqlite_utils") or _in(i, ("psycopg",))
             or (_in(i, STORE) and i != "mailhook.store.rows")]
    assert not found, _broken("store.interface names no SQLite or PostgreSQL part", found)


def test_only_the_postgresql_store_imports_psycopg_so_it_stays_an_optional_extra() -> None:
    found = [f"{m} -> {i}" for m, imports in GRAPH.items() for i in imports
             if _in(i, ("psycopg",)) and not _in(m, ("mailhook.store.pg",))]
    found += [f"{m} -> {i}" for m, imports in GRAPH.items() for i in imports
              if _in(i, ("mailhook.store.pg",)) and not _in(m, ("mailhook.store.pg",))]
    assert not found, _broken("psycopg and store.pg are imported (lazily) only where PostgreSQL is chosen", found)


def test_the_settings_are_apart_from_their_loading() -> None:
    found = [f"mailhook.config.settings -> {i}" for i in GRAPH["mailhook.config.settings"]
             if i in ("os", "tomllib", "mailhook.config.load", "mailhook.config.render")]
    found += ["mailhook.config.settings reads the environment"] * _uses_environment(ROOT / "config" / "settings.py")
    found += [f"{m} -> {i}" for m, imports in GRAPH.items() if _in(m, DOORS) or _in(m, CORE) or _in(m, STORE)
              for i in imports if i == "mailhook.config.load"]
    assert not found, _broken("settings.py declares, load.py reads; doors and the store never load settings", found)


def test_no_door_imports_another_door() -> None:
    def family(module: str) -> str:
        return next(f for f in DOORS if _in(module, (f,)))

    found = [f"{m} -> {i}" for m, imports in GRAPH.items() if _in(m, DOORS) for i in imports
             if _in(i, DOORS) and family(i) != family(m)]
    assert not found, _broken("doors are independent", found)


def test_the_module_graph_has_no_cycle() -> None:
    internal = {m: {i for i in imports if i in GRAPH and i != m} for m, imports in GRAPH.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return None
        for dependency in sorted(internal[module]):
            if module.startswith(dependency + ".") or dependency == "mailhook":
                continue  # a package's own __init__
            cycle = visit(dependency, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(internal):
        cycle = visit(module, [])
        assert cycle is None, _broken("module-level imports form no cycle", [" -> ".join(cycle)])


GROUP = ("mailhook.group",)


def test_the_group_reaches_the_store_only_through_its_interface_and_nothing_imports_the_group() -> None:
    allowed = ("mailhook.store.interface", "mailhook.store.rows")
    found = [f"{m} -> {i}" for m, imports in GRAPH.items() if _in(m, GROUP) for i in imports
             if (_in(i, STORE) and i not in allowed) or i in ("sqlite3", "sqlite_utils")]
    found += [f"{m} -> {i}" for m, imports in GRAPH.items() if not _in(m, GROUP) for i in imports if _in(i, GROUP)]
    assert not found, _broken("the group stores through store.interface; only server.py starts it, by name", found)

def test_the_commands_path_to_postgresql_loads_nothing_of_sqlite() -> None:
    sqlite_side = ("sqlite3", "sqlite_utils", "mailhook.health", "mailhook.store.connection", "mailhook.store.write",
                   "mailhook.store.writer", "mailhook.store.reads", "mailhook.store.maintenance")
    # What the commands reach on PostgreSQL (the writer, a subclass of SQLite's Writer, is serve's and ingest's).
    commands_path = ("mailhook.store.operations", "mailhook.store.target", "mailhook.store.pg",
                     "mailhook.store.pg.connection", "mailhook.store.pg.schema", "mailhook.store.pg.figures",
                     "mailhook.store.pg.figure_triggers", "mailhook.store.pg.reports", "mailhook.store.pg.maintenance",
                     "mailhook.store.pg.reprocess", "mailhook.store.pg.attempts", "mailhook.store.pg.text")
    found = [f"{m} -> {i}" for m in commands_path for i in GRAPH[m] if _in(i, sqlite_side)]
    assert not found, _broken("the commands' PostgreSQL modules import no SQLite part", found)
