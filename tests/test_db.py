"""The volume database on real SQLite files."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent

from hostagent import db
from hostagent.db import Database, DatabaseError

FIXTURES = Path(__file__).parent / "fixtures"
ISCSI_MPATH = "36001405aaaa0000000000000000000a"


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


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


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


def test_upgrade_from_frozen_schema_1(tmp_path: Path) -> None:
    """A database as schema 1 wrote it is migrated, every row kept."""
    path = tmp_path / "h.db"
    frozen(path, 1)
    fresh = tmp_path / "fresh.db"
    Database(fresh).open()
    new = reopened(path)
    a, b = new.get("vol-a"), new.get("vol-b")
    assert a is not None and b is not None
    assert a.connection_info["data"]["auth_password"] == "chap-secret-1"
    assert a.path == f"/dev/mapper/{ISCSI_MPATH}"
    assert a.attachment == {
        "multipath_id": ISCSI_MPATH,
        "path": "/dev/dm-3",
        "scsi_wwn": ISCSI_MPATH,
        "type": "block",
    }
    assert a.multipath_id == ISCSI_MPATH
    # Schema 1 had no state: every row was an attached volume.
    assert (a.state, a.last_error, a.backend) == (db.ATTACHED, None, None)
    assert a.created == a.updated == 1700000000.25
    assert b.connection_info["driver_volume_type"] == "rbd"
    assert (b.path, b.multipath_id, b.state) == ("/dev/rbd0", None, "attached")
    assert b.created == b.updated == 1700000100.5
    new.close()
    # Upgraded and fresh databases are the same: a migration edited in
    # place would make them differ.
    assert columns(path) == columns(fresh)
    con = sqlite3.connect(path)
    assert con.execute("SELECT version FROM schema_version").fetchall() == [
        (db.SCHEMA_VERSION,)
    ]


def test_upgrade_from_frozen_schema_2(tmp_path: Path) -> None:
    """Rows of schema 2 keep state and last_error; backend is None."""
    path = tmp_path / "h.db"
    frozen(path, 2)
    fresh = tmp_path / "fresh.db"
    Database(fresh).open()
    new = reopened(path)
    a, b = new.get("vol-a"), new.get("vol-b")
    assert a is not None and b is not None
    assert (a.state, a.created, a.updated) == (
        db.ATTACHED,
        1700000000.25,
        1700000200.75,
    )
    assert a.multipath_id == ISCSI_MPATH
    assert b.state == db.DETACHING
    assert b.last_error == (
        "detach: disconnect_volume failed: rbd unmap: device busy"
    )
    assert (b.created, b.updated) == (1700000100.5, 1700000300.5)
    assert b.connection_info["data"]["keyring"].startswith("AQBx")
    assert a.backend is None and b.backend is None
    new.insert("vol-c", {"driver_volume_type": "rbd", "data": {}}, "gold")
    assert new.get("vol-c").backend == "gold"  # type: ignore[union-attr]
    new.close()
    assert columns(path) == columns(fresh)


def test_old_migrations_still_make_the_frozen_schemas(tmp_path: Path) -> None:
    """_v1 and _v2 still create what the frozen fixtures hold.

    A fresh install runs them too; edited in place, it would get another
    schema than the hosts that ran the original.
    """
    for version in (1, 2):
        made = tmp_path / f"made{version}.db"
        kept = tmp_path / f"kept{version}.db"
        old = Database(made, migrations=version)
        old.open()
        old.close()
        frozen(kept, version)
        schemas = []
        for path in (made, kept):
            con = sqlite3.connect(path)
            schemas.append(
                con.execute(
                    "SELECT type, name, sql FROM sqlite_master ORDER BY name"
                ).fetchall()
            )
            con.close()
        assert schemas[0] == schemas[1]
        assert columns(made) == columns(kept)


def test_daemon_serves_a_frozen_schema_1_database(
    agent_factory: Any,
) -> None:
    """The real agent upgrades a schema-1 file and shows its volumes."""
    a: Agent = agent_factory()
    a.state_dir.mkdir(mode=0o700)
    frozen(a.db_path, 1)
    os.chmod(a.db_path, 0o644)
    a.start()
    info = {v["vol_id"]: v for v in a.call("ManagedVolume.volumes_info")}
    assert sorted(info) == ["vol-a", "vol-b"]
    vol_a = info["vol-a"]
    assert vol_a["path"] == f"/dev/mapper/{ISCSI_MPATH}"
    assert vol_a["state"] == db.ATTACHED
    assert vol_a["exists"] is False
    assert vol_a["backend"] is None
    assert vol_a["connection_info"]["data"]["auth_password"] == "***"
    assert vol_a["connection_info"]["data"]["target_lun"] == 1
    assert info["vol-b"]["connection_info"]["data"]["keyring"] == "***"
    assert "chap-secret-1" not in a.log()
    assert a.stop() == 0
    assert mode(a.db_path) == 0o600
    con = sqlite3.connect(a.db_path)
    assert con.execute("SELECT version FROM schema_version").fetchall() == [
        (db.SCHEMA_VERSION,)
    ]
