"""Schema 5: the device identity and boot id columns, and the checks
that use them, on real SQLite files (frozen schema-3 and schema-4
fixtures)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from dbfiles import opened_connections, the_two_rows, upgraded

from hostagent import db
from hostagent.db import Database
from hostagent.dbfile import disk_failure


def test_upgrade_from_frozen_schema_3(tmp_path: Path) -> None:
    """Rows of schema 3 keep everything; identity and boot are None."""
    with upgraded(tmp_path, 3) as new:
        a, b = the_two_rows(new)
        assert (a.backend, a.state, a.created) == (
            "gold",
            "attached",
            1700000000.25,
        )
        assert a.connection_info["data"]["auth_password"] == "chap-secret-3"
        assert (a.device_key, a.boot_id) == (None, None)
        assert (b.path, b.device_key, b.boot_id) == ("/dev/loop7", None, None)
        # A row without identity is still compared by its path string.
        assert new.find_device_owner(None, "/dev/loop7", "x", "devno:7:7") == (
            "vol-b"
        )
    con = sqlite3.connect(tmp_path / "h.db")
    indexes = {r[1] for r in con.execute("PRAGMA index_list(volume)")}
    assert "volume_device_key" in indexes
    con.close()


def test_upgrade_from_frozen_schema_4(tmp_path: Path) -> None:
    """Rows of schema 4 keep sd_id and owner_prev; identity is None."""
    with upgraded(tmp_path, 4) as new:
        a, b = the_two_rows(new)
        assert (a.backend, a.sd_id) == (
            "gold",
            "5c1d3f9e-8f1c-4d6e-9a55-0f6f2b1c7d11",
        )
        assert a.owner_prev == {
            "gid": 6,
            "mode": 0o660,
            "path": "/dev/dm-3",
            "rdev": 64771,
            "uid": 0,
        }
        assert a.connection_info["data"]["auth_password"] == "chap-secret-4"
        assert (a.device_key, a.boot_id) == (None, None)
        assert (b.sd_id, b.owner_prev, b.device_key, b.boot_id) == (
            None,
            None,
            None,
            None,
        )


def test_owner_is_found_by_identity_not_path(tmp_path: Path) -> None:
    d = Database(tmp_path / "h.db")
    d.open()
    info = {"driver_volume_type": "local", "data": {}}
    d.insert("v1", info)
    assert d.set_attached("v1", "/dev/loop3", {}, None, "devno:7:3", "b1") is (
        None
    )
    rec = d.get("v1")
    assert rec is not None
    assert (rec.device_key, rec.boot_id) == ("devno:7:3", "b1")
    d.insert("v2", info)
    # Another path, the same device: refused.
    assert d.set_attached("v2", "/tmp/alias", {}, None, "devno:7:3") == "v1"
    # The same path string naming another device now: not the same.
    assert d.set_attached("v2", "/dev/loop3", {}, None, "devno:7:9") is None
    d.close()


def test_disk_errors_are_told_from_others(tmp_path: Path) -> None:
    """A write refused by SQLite for the disk's sake is told apart.

    A read-only connection stands for a read-only file system here
    (the same SQLITE_READONLY); a full one is made real in
    test_state_errors.py.
    """
    d = Database(tmp_path / "h.db")
    with opened_connections() as made:
        d.open()
    [con] = made
    d.insert("v1", {"driver_volume_type": "local", "data": {}})
    con.execute("PRAGMA query_only = 1")
    with pytest.raises(Exception) as e:  # peewee's OperationalError
        d.set_state("v1", db.DETACHING)
    assert disk_failure(e.value) == "read_only"
    con.execute("PRAGMA query_only = 0")
    d.set_state("v1", db.DETACHING)
    # Not every database error is the disk's.
    with pytest.raises(db.DatabaseError) as other:
        d.set_state("nope", db.DETACHING)
    assert disk_failure(other.value) is None
    assert disk_failure(ValueError("database or disk is full")) is None
    d.close()
