"""The volume database on real SQLite files."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest
from conftest import Agent

from hostagent import db
from hostagent.db import Database, DatabaseError


def at_schema(path: Path, version: int) -> sqlite3.Connection:
    """A database file as schema ``version`` left it, opened with sqlite3.

    The caller writes rows the way that version's code did, then opens
    it with the current code (:func:`reopened`).
    """
    old = Database(path, migrations=version)
    old.open()
    assert old.version() == version
    old.close()
    return sqlite3.connect(path)


def reopened(path: Path) -> Database:
    """The database at ``path`` opened (and so migrated) by this code."""
    d = Database(path)
    d.open()
    assert d.version() == db.SCHEMA_VERSION
    return d


def test_new_database_is_current_private_and_durable(tmp_path: Path) -> None:
    d = Database(tmp_path / "state" / "h.db")
    d.open()
    assert d.version() == db.SCHEMA_VERSION
    assert stat.S_IMODE((tmp_path / "state" / "h.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    d.insert("v1", {"driver_volume_type": "local", "data": {}})
    d.close()
    con = sqlite3.connect(tmp_path / "state" / "h.db")
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert con.execute("SELECT state FROM volume").fetchall() == [
        (db.ATTACHING,)
    ]


def test_upgrade_from_schema_1(tmp_path: Path) -> None:
    """A database written by the first schema is migrated, rows kept."""
    path = tmp_path / "h.db"
    con = at_schema(path, 1)
    attachment = {"path": "/dev/dm-3", "multipath_id": "36001"}
    con.execute(
        "INSERT INTO volume VALUES (?, ?, ?, ?, ?, ?)",
        (
            "vol-a",
            json.dumps({"driver_volume_type": "iscsi", "data": {}}),
            "/dev/mapper/36001",
            json.dumps(attachment),
            "36001",
            1700000000.0,
        ),
    )
    con.commit()
    con.close()
    new = reopened(path)
    rec = new.get("vol-a")
    assert rec is not None
    assert rec.state == db.ATTACHED
    assert rec.attachment == attachment
    assert rec.multipath_id == "36001"
    assert rec.created == rec.updated == 1700000000.0
    assert rec.last_error is None
    new.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    con = at_schema(path, db.SCHEMA_VERSION)
    con.execute("UPDATE schema_version SET version = 99")
    con.commit()
    con.close()
    with pytest.raises(DatabaseError, match="newer"):
        Database(path).open()


def test_corrupt_database_is_moved_aside_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    path.write_bytes(b"this is not sqlite" * 1000)
    with pytest.raises(DatabaseError) as e:
        Database(path).open()
    assert "damaged" in str(e.value)
    assert not path.exists()
    (aside,) = tmp_path.glob("h.db.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not sqlite")


def test_daemon_refuses_to_start_on_corrupt_db(agent_factory: object) -> None:
    a: Agent = agent_factory()  # type: ignore[operator]
    a.state_dir.mkdir()
    a.db_path.write_bytes(b"garbage" * 5000)
    a.start(wait=False)
    assert a.proc is not None
    assert a.proc.wait(30) == 1
    assert "damaged" in a.log()
    assert list(a.state_dir.glob("hostagent.db.corrupt-*"))


def test_update_of_missing_row_is_an_error(tmp_path: Path) -> None:
    d = Database(tmp_path / "h.db")
    d.open()
    with pytest.raises(DatabaseError):
        d.set_state("nope", db.DETACHING)
    with pytest.raises(ValueError):
        d.set_state("nope", "exploded")
    d.close()


def test_upgrade_from_schema_2_adds_backend(tmp_path: Path) -> None:
    """Rows written before backends keep everything; backend is None."""
    path = tmp_path / "h.db"
    con = at_schema(path, 2)
    assert "backend" not in [
        r[1] for r in con.execute("PRAGMA table_info(volume)")
    ]
    con.execute(
        "INSERT INTO volume (vol_id, connection_info, path, attachment,"
        " multipath_id, updated, state, last_error, created)"
        " VALUES (?, ?, ?, ?, NULL, 1.5, 'attached', NULL, 1.0)",
        (
            "vol-b",
            json.dumps({"driver_volume_type": "local", "data": {}}),
            "/dev/loop9",
            json.dumps({"path": "/dev/loop9"}),
        ),
    )
    con.commit()
    con.close()
    new = reopened(path)
    assert new.version() == 3
    rec = new.get("vol-b")
    assert rec is not None
    assert (rec.path, rec.state, rec.created, rec.updated) == (
        "/dev/loop9",
        db.ATTACHED,
        1.0,
        1.5,
    )
    assert rec.attachment == {"path": "/dev/loop9"}
    assert rec.backend is None
    new.insert("vol-c", {"driver_volume_type": "rbd", "data": {}}, "gold")
    assert new.get("vol-c").backend == "gold"  # type: ignore[union-attr]
    new.close()
