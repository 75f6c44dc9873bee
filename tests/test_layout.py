"""The architecture rules: which module may import which library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hostagent"

ONLY = {
    "os_brick": {"brick.py"},
    "oslo_concurrency": {"brick.py"},
    "oslo_config": {"brick.py"},
    "peewee": {"db.py"},
    "pyudev": {"udev.py"},
    "systemd": {"daemon.py", "systemd.py"},
    "jsonrpcserver": {"api.py"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add((node.module or "").split(".")[0])
    return roots


@pytest.mark.parametrize("library", sorted(ONLY))
def test_library_is_imported_only_where_allowed(library: str) -> None:
    users = {
        p.name for p in PACKAGE.glob("*.py") if library in imported_roots(p)
    }
    assert users <= ONLY[library], f"{library} imported by {users}"


def test_every_public_function_has_a_docstring() -> None:
    missing = []
    for p in PACKAGE.glob("*.py"):
        tree = ast.parse(p.read_text())
        top = list(tree.body)
        members = [
            n for c in top if isinstance(c, ast.ClassDef) for n in c.body
        ]
        for node in top + members:
            if (
                isinstance(
                    node,
                    (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef),
                )
                and not node.name.startswith("_")
                and node.name != "Meta"
                and ast.get_docstring(node) is None
            ):
                missing.append(f"{p.name}:{node.lineno} {node.name}")
    assert not missing, missing


def test_jsonrpcserver_is_used_through_its_public_api_only() -> None:
    """Its submodules are private: the next release may move them."""
    private = []
    for p in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            private += [
                f"{p.name}: {n}"
                for n in names
                if n.startswith("jsonrpcserver.")
            ]
    assert private == []
