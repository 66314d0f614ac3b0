"""Write Datasette configuration for a mailhook database of any file name, for Datasette 0.65 and 1.0.

    python docs/datasette_config.py /var/lib/mailhook/accounts.db ~/datasette-mailhook

Datasette names a database after its file (`accounts.db` is `accounts`), and
its configuration refers to databases by name; docs/datasette-metadata.json
is written for `mailhook.db`. This script (standard library only: run it
with any Python 3) writes into the output folder:

- `metadata.json`: for Datasette 0.65, everything in one file;
- `metadata-1.0.json` and `datasette.json`: for Datasette 1.0, which keeps
  titles and descriptions in metadata and moved settings, plugins, canned
  queries and table options (facets, sort, full-text search) to the
  configuration file given with `-c`.

It prints the command line for each version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "datasette-metadata.json"
# Table options that Datasette 1.0 reads from datasette.json; the rest of a table's entry stays metadata.
TABLE_OPTIONS = ("facets", "sort", "sort_desc", "fts_table", "fts_pk", "searchmode", "size", "label_column",
                 "hidden", "units", "facet_size")
# Datasette's suggested facets count every column of a page's table at each visit: seconds on a
# million events. Set in datasette.json for 1.0; `--setting suggest_facets off` for 0.65.
SETTINGS = {"suggest_facets": False}


def renamed(metadata: dict[str, Any], name: str) -> dict[str, Any]:
    """Return the metadata with the database `mailhook` (and the dashboards' charts) renamed to `name`."""
    data = json.loads(json.dumps(metadata))
    data["databases"] = {name: data["databases"].pop("mailhook")}
    for dashboard in data.get("plugins", {}).get("datasette-dashboards", {}).values():
        for chart in dashboard.get("charts", {}).values():
            if chart.get("db") == "mailhook":
                chart["db"] = name
    return data


def split(metadata: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split 0.65 metadata into Datasette 1.0's metadata and configuration."""
    meta = {k: v for k, v in metadata.items() if k not in ("databases", "plugins")}
    config: dict[str, Any] = {"settings": dict(SETTINGS), "plugins": metadata.get("plugins", {}), "databases": {}}
    meta["databases"] = {}
    for db_name, database in metadata["databases"].items():
        meta_db = {k: v for k, v in database.items() if k not in ("tables", "queries")}
        config_db: dict[str, Any] = {"queries": database.get("queries", {}), "tables": {}}
        meta_db["tables"] = {}
        for table_name, table in database.get("tables", {}).items():
            meta_db["tables"][table_name] = {k: v for k, v in table.items() if k not in TABLE_OPTIONS}
            options = {k: v for k, v in table.items() if k in TABLE_OPTIONS}
            if options:
                config_db["tables"][table_name] = options
        meta["databases"][db_name] = meta_db
        config["databases"][db_name] = config_db
    return meta, config


def write(database: Path, folder: Path) -> dict[str, Path]:
    """Write the three files for `database` into `folder`; return them by name."""
    name = database.name.rsplit(".", 1)[0] if "." in database.name else database.name
    metadata = renamed(json.loads(SOURCE.read_text(encoding="utf-8")), name)
    meta, config = split(metadata)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"metadata.json": metadata, "metadata-1.0.json": meta, "datasette.json": config}
    paths = {}
    for filename, data in files.items():
        path = folder / filename
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths[filename] = path
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    database, folder = Path(argv[0]), Path(argv[1])
    paths = write(database, folder)
    print(f"Datasette 0.65: datasette {database} -m {paths['metadata.json']} --setting suggest_facets off")
    print(f"Datasette 1.0:  datasette {database} -m {paths['metadata-1.0.json']} -c {paths['datasette.json']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
