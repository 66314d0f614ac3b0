"""The one exception tree: every class in it is raised somewhere and answered by the doors; exit codes in one place."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from mailhook import errors, exitcodes
from mailhook.http.door import STATUS

SOURCES = sorted((Path(__file__).parent.parent / "mailhook").rglob("*.py"))


def _raised() -> set[str]:
    names: set[str] = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(target, ast.Name):
                    names.add(target.id)
    return names


def _tree() -> list[type[errors.MailhookError]]:
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, errors.MailhookError)]


def test_every_exception_in_the_tree_is_raised_somewhere() -> None:
    unused = {cls.__name__ for cls in _tree() if cls is not errors.MailhookError} - _raised()
    assert not unused, f"never raised (raise them where they belong, or delete them): {sorted(unused)}"


def test_the_http_door_answers_every_refusal_with_its_own_status() -> None:
    refusals = [cls for cls in _tree() if issubclass(cls, errors.Rejected)]
    mapped = {cls for cls, _ in STATUS}
    assert set(refusals) == mapped
    # Most specific first: a subclass listed after its base would never be reached.
    for i, (cls, _) in enumerate(STATUS):
        assert not any(issubclass(cls, earlier) for earlier, _ in STATUS[:i])


def test_exit_codes_are_defined_only_in_exitcodes() -> None:
    defined = []
    for path in SOURCES:
        if path.name == "exitcodes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.startswith("EX_") for t in node.targets
            ):
                defined.append(f"{path.name}:{node.lineno}")
    assert not defined, f"exit codes defined outside mailhook/exitcodes.py: {defined}"


def test_exit_codes_are_the_sysexits_values() -> None:
    import os

    for name in dir(exitcodes):
        if name.startswith("EX_") and hasattr(os, name):
            assert getattr(exitcodes, name) == getattr(os, name), name
