"""Database files for the tests: known schemas, caught connections.

Old schemas come from frozen SQL fixtures (``tests/fixtures``), which
an edit of an old migration cannot change; :func:`upgraded` opens one
with this code and checks the result against a fresh database.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostagent import db
from hostagent.db import Database, VolumeRecord

FIXTURES = Path(__file__).parent / "fixtures"


def at_schema(path: Path, version: int) -> sqlite3.Connection:
    """A database file made by this code's migrations up to ``version``.

    Only for the current version: older ones come from the frozen
    fixtures (:func:`frozen`), which an edit of an old migration cannot
    change.
    """
    old = Database(path, migrations=version)
    old.open()
    assert old.version() == version
    old.close()
    return sqlite3.connect(path)


def frozen(path: Path, version: int) -> None:
    """Write the frozen schema-``version`` database to ``path``."""
    sql = (FIXTURES / f"schema-{version}.sql").read_text()
    con = sqlite3.connect(path, isolation_level=None)
    con.executescript(sql)
    con.close()


def columns(path: Path) -> list[tuple[Any, ...]]:
    """The volume table's columns (name, type, notnull, default, pk)."""
    con = sqlite3.connect(path)
    rows = con.execute("PRAGMA table_info(volume)").fetchall()
    con.close()
    return [tuple(r[1:]) for r in rows]


def stored_version(path: Path) -> list[tuple[Any, ...]]:
    """The rows of the file's schema_version table."""
    con = sqlite3.connect(path)
    rows = con.execute("SELECT version FROM schema_version").fetchall()
    con.close()
    return rows


def reopened(path: Path) -> Database:
    """The database at ``path`` opened (and so migrated) by this code."""
    d = Database(path)
    d.open()
    assert d.version() == db.SCHEMA_VERSION
    return d


@contextlib.contextmanager
def upgraded(directory: Path, version: int) -> Iterator[Database]:
    """The frozen schema-``version`` database as this code opens it.

    Written to ``directory / "h.db"``.  On leaving the block it is
    closed, its version checked and its columns compared with a fresh
    database's: a migration edited in place would make them differ.
    """
    path = directory / "h.db"
    frozen(path, version)
    fresh = Database(directory / "fresh.db")
    fresh.open()
    fresh.close()
    new = reopened(path)
    yield new
    new.close()
    assert columns(path) == columns(fresh.path)
    assert stored_version(path) == [(db.SCHEMA_VERSION,)]


def the_two_rows(d: Database) -> tuple[VolumeRecord, VolumeRecord]:
    """vol-a and vol-b, the two rows every frozen fixture holds."""
    a, b = d.get("vol-a"), d.get("vol-b")
    assert a is not None and b is not None
    return a, b


@contextlib.contextmanager
def opened_connections() -> Iterator[list[sqlite3.Connection]]:
    """The sqlite3 connections opened in the block and still open after.

    A :class:`Database` keeps its connections to itself; a test that
    must read one's pragmas, or change one, catches it here as sqlite3
    makes it (peewee's writer in open(), peek()'s reader).
    """
    made: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def catch(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        con = connect(*args, **kwargs)
        made.append(con)
        return con

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite3, "connect", catch)
        yield made
    made[:] = [c for c in made if is_open(c)]


def is_open(con: sqlite3.Connection) -> bool:
    """Whether ``con`` is still open."""
    try:
        con.total_changes  # noqa: B018 (raises once closed)
    except sqlite3.ProgrammingError:
        return False
    return True
