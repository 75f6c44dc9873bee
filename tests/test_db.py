"""The volume database on real SQLite files."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import HOSTAGENTD, Agent
from dbfiles import (
    FIXTURES,
    at_schema,
    columns,
    frozen,
    opened_connections,
    stored_version,
    the_two_rows,
    upgraded,
)
from support import INFO

from hostagent import db
from hostagent.db import Database, DatabaseError, DatabaseNeedsOperator

ISCSI_MPATH = "36001405aaaa0000000000000000000a"


def damage_index(path: Path, vol_id: str) -> None:
    """Change ``vol_id``'s key in the primary key's index, in place.

    SQLite still opens the file (page 1 is intact) and answers queries,
    but ``PRAGMA integrity_check`` finds the table's row missing from
    the index: what a torn or bit-flipped page looks like.  Read-only,
    which leaves a WAL as it is (see
    :meth:`hostagent.dbfile.DatabaseFile.damage`).
    """
    con = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True)
    (root,) = con.execute(
        "SELECT rootpage FROM sqlite_master"
        " WHERE name = 'sqlite_autoindex_volume_1'"
    ).fetchone()
    (size,) = con.execute("PRAGMA page_size").fetchone()
    con.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * size)
        page = f.read(size)
        at = page.find(vol_id.encode())
        assert at > 0, "the key is not on the index's root page"
        f.seek((root - 1) * size + at)
        f.write(b"X" + vol_id.encode()[1:])


def many_rows(path: Path, n: int = 200) -> Database:
    """An open database holding ``n`` volumes (several table pages)."""
    d = Database(path)
    d.open()
    info = {"driver_volume_type": "iscsi", "data": {"target_lun": 0}}
    for i in range(n):
        d.insert(f"vol-{i:04d}", dict(info, data={"target_lun": i}))
    return d


def moved_aside(directory: Path, name: str = "h.db") -> Path:
    """The one database file moved aside in ``directory`` (not its WAL)."""
    (aside,) = [
        p
        for p in directory.glob(f"{name}.corrupt-*")
        if not p.name.endswith(("-wal", "-shm"))
    ]
    return aside


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


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
    with upgraded(tmp_path, 1) as new:
        a, b = the_two_rows(new)
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
        assert (b.path, b.multipath_id, b.state) == (
            "/dev/rbd0",
            None,
            "attached",
        )
        assert b.created == b.updated == 1700000100.5


def test_upgrade_from_frozen_schema_2(tmp_path: Path) -> None:
    """Rows of schema 2 keep state and last_error; backend is None."""
    with upgraded(tmp_path, 2) as new:
        a, b = the_two_rows(new)
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


def test_upgrade_to_attempts_starts_every_row_at_zero(
    tmp_path: Path,
) -> None:
    """_v6 gives the rows of a frozen schema-4 database 0 attempts."""
    with upgraded(tmp_path, 4) as new:
        rows = new.list()
        assert [r.vol_id for r in rows] == ["vol-a", "vol-b"]
        assert [r.attempts for r in rows] == [0, 0]
        # The count goes on from there, and the row is detaching.
        assert new.note_failure("vol-b", "detach: still busy") == 1
        assert new.note_failure("vol-b", "detach: still busy") == 2
        b = new.get("vol-b")
        assert b is not None
        assert (b.state, b.last_error, b.attempts) == (
            db.DETACHING,
            "detach: still busy",
            2,
        )


def test_old_migrations_still_make_the_frozen_schemas(tmp_path: Path) -> None:
    """The old migrations still create what the frozen fixtures hold.

    A fresh install runs them too; edited in place, it would get another
    schema than the hosts that ran the original.
    """
    for version in (1, 2, 3, 4):
        assert (FIXTURES / f"schema-{version}.sql").exists()
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
    info = {v["vol_id"]: v for v in a.call(INFO)}
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
    assert stored_version(a.db_path) == [(db.SCHEMA_VERSION,)]


def test_intents_are_synchronous_full_the_rest_normal(tmp_path: Path) -> None:
    """One fsync per operation: only the intent commits with FULL.

    The writer rests at NORMAL (WAL: no fsync at commit); a move to
    ``attaching`` (insert) or ``detaching`` runs inside FULL, and the
    other writes do not.  peek()'s query-only reader stays FULL: it may
    checkpoint when it closes last.
    """
    d = Database(tmp_path / "h.db")
    with opened_connections() as made:
        d.open()
    [writer] = made
    statements: list[str] = []
    writer.set_trace_callback(statements.append)

    def synchronous_around(write: Any) -> list[str]:
        statements.clear()
        write()
        return [s for s in statements if "synchronous" in s.lower()]

    durable = ["PRAGMA synchronous = FULL", "PRAGMA synchronous = NORMAL"]
    info = {"driver_volume_type": "local", "data": {}}
    assert synchronous_around(lambda: d.insert("v1", info)) == durable
    assert statements[1].startswith("INSERT"), statements
    assert synchronous_around(lambda: d.set_attachment("v1", {})) == []
    assert (
        synchronous_around(lambda: d.set_attached("v1", "/dev/x", {}, None))
        == []
    )
    # A re-attach's intent (and an attach's undo) is durable too.
    assert (
        synchronous_around(lambda: d.set_state("v1", db.ATTACHING)) == durable
    )
    assert synchronous_around(lambda: d.set_state("v1", db.ATTACHED)) == []
    assert (
        synchronous_around(lambda: d.set_state("v1", db.DETACHING)) == durable
    )
    assert synchronous_around(lambda: d.delete("v1")) == []
    writer.set_trace_callback(None)
    with opened_connections() as made:
        assert d.peek("v1") is None
    [reader] = made
    assert reader.execute("PRAGMA query_only").fetchone() == (1,)
    assert writer.execute("PRAGMA synchronous").fetchone() == (1,)
    assert reader.execute("PRAGMA synchronous").fetchone() == (2,)
    for con in (writer, reader):
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    d.close()


def test_another_volumes_device_and_connection_are_found_by_index(
    tmp_path: Path,
) -> None:
    """Every attach and detach asks who else has the device or the
    connection: the questions must not read every row (schema 7).

    The statements the database runs are caught and their plans read
    by SQLite itself; a table scan of ``volume`` fails the test.
    """
    d = Database(tmp_path / "h.db")
    with opened_connections() as made:
        d.open()
    [writer] = made

    def local(i: int) -> dict[str, Any]:
        return {"driver_volume_type": "local", "data": {"n": i}}

    for i in range(20):
        d.insert(f"v{i}", local(i))
        d.set_attached(f"v{i}", f"/dev/x{i}", {}, f"mp{i}", f"7:{i}")
    statements: list[str] = []
    writer.set_trace_callback(statements.append)
    assert d.find_device_owner("mp3", "/dev/x3", "v0", "7:3") == "v3"
    assert d.find_device_owner(None, "/dev/x4", "v0") == "v4"
    assert d.find_connection_owner(local(5), "v0") == "v5"
    writer.set_trace_callback(None)
    queries = [s for s in statements if s.startswith("SELECT")]
    assert len(queries) == 3, statements
    for query in queries:
        plan = writer.execute("EXPLAIN QUERY PLAN " + query).fetchall()
        details = [row[-1] for row in plan]
        assert not any(x.startswith("SCAN volume") for x in details), (
            query,
            details,
        )
        assert any("USING INDEX" in x for x in details), (query, details)
    d.close()


def test_damaged_page_fails_the_integrity_check(tmp_path: Path) -> None:
    """A file that opens but fails integrity_check is refused, moved."""
    path = tmp_path / "h.db"
    many_rows(path).close()
    damage_index(path, "vol-0100")
    # Still a database SQLite opens and reads: only the check tells.
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM volume").fetchone() == (200,)
    assert con.execute("PRAGMA integrity_check").fetchall() != [("ok",)]
    con.close()
    damaged = path.read_bytes()
    with pytest.raises(DatabaseError) as e:
        Database(path).open()
    assert "is damaged (" in str(e.value)
    assert "in index sqlite_autoindex_volume_1" in str(e.value)
    assert not path.exists()
    aside = moved_aside(tmp_path)
    assert str(aside) in str(e.value)
    assert aside.read_bytes() == damaged
    assert mode(aside) == 0o600


def test_wal_and_shm_are_moved_aside_with_the_database(
    tmp_path: Path,
) -> None:
    """The files a crash left are moved together, the WAL unapplied.

    A copy of the three files taken while the agent had a commit in the
    WAL only (a crash), with the database file then damaged: the
    quarantined WAL is the crashed one byte for byte, and with its
    database it still holds that commit.
    """
    live = tmp_path / "live"
    live.mkdir()
    d = many_rows(live / "h.db")
    # Checkpointed by a connection of our own: WAL mode lets any
    # connection move every commit into the database file.
    with contextlib.closing(sqlite3.connect(live / "h.db")) as con:
        assert (
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        )
    # Touches the table's pages only, not the index damaged below.
    d.set_state("vol-0100", db.DETACHING, "in the WAL only")
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(live / f"h.db{suffix}", crashed / f"h.db{suffix}")
    d.close()
    path = crashed / "h.db"
    damage_index(path, "vol-0100")
    os.chmod(path.with_name("h.db-wal"), 0o644)
    before = {s: Path(f"{path}{s}").read_bytes() for s in ("", "-wal")}
    assert before["-wal"]
    with pytest.raises(DatabaseError, match="damaged"):
        Database(path).open()
    aside = moved_aside(crashed)
    assert sorted(p.name for p in crashed.iterdir()) == [
        aside.name,
        f"{aside.name}-shm",
        f"{aside.name}-wal",
    ]
    for suffix, data in before.items():
        assert Path(f"{aside}{suffix}").read_bytes() == data
    for suffix in ("", "-wal", "-shm"):
        assert mode(Path(f"{aside}{suffix}")) == 0o600
    con = sqlite3.connect(aside.as_uri() + "?mode=ro", uri=True)
    assert con.execute(
        "SELECT state, last_error FROM volume NOT INDEXED"
        " WHERE vol_id = 'vol-0100'"
    ).fetchone() == (db.DETACHING, "in the WAL only")
    con.close()


def test_quarantine_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quarantines in the same second, even the same microsecond, all stay."""
    path = tmp_path / "h.db"
    d = Database(path)
    names = []
    for i in range(3):
        path.write_bytes(b"damaged %d" % i)
        names.append(d.file.quarantine())
    # The clock's microsecond is the same for the next two: a counter.
    monkeypatch.setattr(db.time, "time_ns", lambda: 1700000000123456789)
    for i in range(3, 5):
        path.write_bytes(b"damaged %d" % i)
        Path(f"{path}-wal").write_bytes(b"wal %d" % i)
        names.append(d.file.quarantine())
    assert names[3].name == "h.db.corrupt-20231114T221320.123456Z"
    assert names[4].name == "h.db.corrupt-20231114T221320.123456Z-1"
    assert len(set(names)) == 5
    for i, aside in enumerate(names):
        assert aside.read_bytes() == b"damaged %d" % i
        assert mode(aside) == 0o600
    assert Path(f"{names[4]}-wal").read_bytes() == b"wal 4"
    assert Path(f"{names[3]}-wal").read_bytes() == b"wal 3"
    assert not path.exists() and not Path(f"{path}-wal").exists()


def test_no_database_after_a_quarantine_is_refused(tmp_path: Path) -> None:
    """Missing (or empty) next to a moved-aside one: no empty start."""
    path = tmp_path / "h.db"
    path.write_bytes(b"garbage" * 5000)
    with pytest.raises(DatabaseNeedsOperator, match="damaged"):
        Database(path).open()
    aside = moved_aside(tmp_path)
    for _ in range(2):
        with pytest.raises(DatabaseNeedsOperator) as e:
            Database(path).open()
        assert f"database {path} is missing" in str(e.value)
        assert aside.name in str(e.value)
        assert not path.exists()
    # An empty file is no database either.
    path.touch()
    with pytest.raises(DatabaseError, match="is missing"):
        Database(path).open()
    assert path.stat().st_size == 0
    # A good copy restored: it opens, the quarantined file stays.
    path.unlink()
    good = tmp_path / "good.db"
    many_rows(good, 3).close()
    shutil.copy(good, path)
    d = Database(path)
    d.open()
    assert d.get("vol-0002") is not None
    d.close()
    assert aside.exists()


def test_unreadable_database_is_not_moved_aside(tmp_path: Path) -> None:
    """A file SQLite cannot open is not damage: refused, left in place."""
    path = tmp_path / "h.db"
    many_rows(path, 3).close()
    Path(f"{path}-wal").mkdir()
    with pytest.raises(DatabaseError, match="cannot read database"):
        Database(path).open()
    assert path.exists()
    assert not list(tmp_path.glob("h.db.corrupt-*"))
    Path(f"{path}-wal").rmdir()
    d = Database(path)
    d.open()
    assert d.get("vol-0002") is not None
    d.close()


def hostagentd(a: Agent) -> subprocess.CompletedProcess[str]:
    """One run of the daemon that is expected to exit by itself."""
    return subprocess.run(
        [HOSTAGENTD, "--config", str(a.config)],
        capture_output=True,
        text=True,
        env=a.env,
        timeout=30,
    )


def test_daemon_keeps_refusing_until_the_operator_decides(
    agent_factory: Any,
) -> None:
    """After a quarantine every start refuses, until the file is moved.

    systemd restarts a failed agent two seconds later: that start must
    not serve an empty database while volumes may be attached.
    """
    a: Agent = agent_factory()
    a.state_dir.mkdir(mode=0o700)
    a.db_path.write_bytes(b"garbage" * 5000)
    first = hostagentd(a)
    # 3: needs an operator; the unit does not restart it (2: config).
    assert first.returncode == 3
    assert "damaged" in first.stderr
    aside = moved_aside(a.state_dir, "hostagent.db")
    for _ in range(2):
        again = hostagentd(a)
        assert again.returncode == 3, again.stderr
        assert f"database {a.db_path} is missing" in again.stderr
        assert aside.name in again.stderr
        assert "Restore a good copy" in again.stderr
        assert mode(aside) == 0o600
        assert not a.db_path.exists()
    # The operator checked the host and moves the damaged file away.
    for p in a.state_dir.glob("hostagent.db.corrupt-*"):
        p.rename(a.tmp / p.name)
    a.start()
    assert a.call(INFO) == []
    assert mode(a.db_path) == 0o600


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    """A database a newer agent wrote: refused, kept, never downgraded."""
    path = tmp_path / "h.db"
    d = Database(path)
    d.open()
    d.close()
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE schema_version SET version = version + 1")
    con.close()
    before = path.read_bytes()
    with pytest.raises(DatabaseNeedsOperator, match="upgrade the agent"):
        Database(path).open()
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("h.db.corrupt-*"))
