"""The architecture rules: which module may import which library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import ROOT

PACKAGE = ROOT / "hostagent"

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
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if library in imported_roots(p)
    }
    assert users <= ONLY[library], f"{library} imported by {users}"


def test_every_public_function_has_a_docstring() -> None:
    missing = []
    for p in PACKAGE.rglob("*.py"):
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
                name = p.relative_to(PACKAGE).as_posix()
                missing.append(f"{name}:{node.lineno} {node.name}")
    assert not missing, missing


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def hostagent_imports(path: Path, modules: set[str]) -> set[str]:
    """The hostagent modules ``path`` imports, function-level included.

    ``from hostagent.x import y`` counts as importing ``hostagent.x.y``
    when that is a module, else ``hostagent.x``.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules}


def test_no_import_circle() -> None:
    """Data flows one way: no module imports one that imports it back."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {m: hostagent_imports(p, modules) for m, p in files.items()}
    # A package's __init__ may re-export its modules: an edge into the
    # package itself (importing a submodule runs it) is not followed.
    packages = {m for m, p in files.items() if p.name == "__init__.py"}
    graph = {
        m: {d for d in deps if d not in packages or m == d}
        for m, deps in graph.items()
    }
    path: list[str] = []
    state: dict[str, int] = {}

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = [*path[path.index(d) :], d]
                raise AssertionError(" -> ".join(cycle))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


# Still over the limits, being split by other work (transport/, api).
NOT_YET: set[str] = set()


def test_no_class_or_module_is_too_big() -> None:
    """No class over 300 lines, no module over 600."""
    big = []
    for p in PACKAGE.rglob("*.py"):
        if p.relative_to(PACKAGE).as_posix() in NOT_YET:
            continue
        text = p.read_text()
        if len(text.splitlines()) > 600:
            big.append(f"{p.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or 0) - node.lineno + 1
                if size > 300:
                    big.append(f"{p.name}: class {node.name} {size} lines")
    assert not big, big


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
