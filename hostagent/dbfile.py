"""The database file on disk: private, checked, moved aside when damaged.

No peewee here: the checks run on plain read-only sqlite3 connections,
before :class:`hostagent.db.Database` opens the file.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
from pathlib import Path
from typing import Any


class DatabaseError(Exception):
    """The database cannot be used; the message says what to do."""


class DatabaseNeedsOperator(DatabaseError):
    """Only an operator can fix this: starting again changes nothing.

    A damaged database (moved aside), one missing after such a move, or
    one newer than this agent.  The daemon exits with a status of its
    own, which the unit names in ``RestartPreventExitStatus=``.
    """


# SQLite's primary result codes that mean "the disk", not the query.
_DISK_FAILURES = {
    sqlite3.SQLITE_FULL: "full",  # ENOSPC, or the file size limit
    sqlite3.SQLITE_READONLY: "read_only",
    # The -wal/-shm on a read-only file system.
    sqlite3.SQLITE_CANTOPEN: "read_only",
    sqlite3.SQLITE_IOERR: "io_error",  # EIO, EROFS on a write
}


def disk_failure(error: BaseException) -> str | None:
    """Why the disk refused a database call, or None if it did not.

    ``full``, ``read_only`` or ``io_error``: the file system under the
    database, not the query (SQLite then kept nothing of the write).
    peewee re-raises sqlite3's error as its own, with the original as
    its first argument and as the context.
    """
    for cause in (error, *error.args[:1], error.__context__):
        code = getattr(cause, "sqlite_errorcode", None)
        if isinstance(cause, sqlite3.Error) and isinstance(code, int):
            return _DISK_FAILURES.get(code & 0xFF)
    return None


def create_private(path: Path) -> None:
    """Create ``path`` (and its directory) readable by root only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    # os.open's mode only applies when it creates the file; a DB left
    # group-readable by an older install is tightened here.
    os.chmod(path, 0o600)


class DatabaseFile:
    """One SQLite file, its WAL files and the damaged copies moved aside."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def damage(self) -> str | None:
        """What ``PRAGMA integrity_check`` finds wrong, or ``None``.

        On a read-only connection: closing the last read-write one would
        checkpoint a left-over WAL into the damaged file and delete the
        WAL, so what is moved aside would not be what was on disk.
        Errors that are not damage (the file cannot be opened or read)
        raise :class:`DatabaseError` and leave the file where it is.
        """
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            con = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as e:
            raise DatabaseError(
                f"cannot open database {self.path}: {e}"
            ) from e
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as e:
            code = e.sqlite_errorcode & 0xFF
            if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                return str(e)
            raise DatabaseError(
                f"cannot read database {self.path}: {e}"
            ) from e
        finally:
            con.close()
        if rows == [("ok",)]:
            return None
        return "; ".join(str(r[0]) for r in rows[:5])

    def quarantined(self) -> list[Path]:
        """The damaged databases (and their WAL files) moved aside."""
        return sorted(self.path.parent.glob(f"{self.path.name}.corrupt-*"))

    def what_to_do(self, names: str) -> str:
        """What an operator can do about the damaged ``names``."""
        where = self.path.parent
        return (
            f"Restore a good copy to {self.path}, or, to start with an "
            "empty database on purpose, first check the host's "
            f"attachments, then move {names} out of {where} (or delete "
            "it) and start again."
        )

    def refuse_after_quarantine(self) -> None:
        """Raise when a damaged DB was moved aside and none replaced it.

        A start after the one that moved the file aside (systemd restarts
        the agent within seconds) must not create an empty database.  An
        empty file counts as none.
        """
        try:
            empty = self.path.stat().st_size == 0
        except FileNotFoundError:
            empty = True
        aside = self.quarantined() if empty else []
        if aside:
            names = ", ".join(p.name for p in aside)
            raise DatabaseNeedsOperator(
                f"database {self.path} is missing, and {self.path.parent} "
                f"holds a damaged database moved aside at an earlier "
                f"start: {names}. Refusing to start with an empty database "
                "while volumes may be attached. " + self.what_to_do(names)
            )

    def quarantine(self) -> Path:
        """Move the DB file (and WAL files) aside; return the new name.

        The name is unique, never one of an earlier quarantine: the
        microseconds in it, and a counter should those clash.
        """
        stamp = time.time_ns() // 1000
        seconds = time.strftime("%Y%m%dT%H%M%S", time.gmtime(stamp // 10**6))
        base = f"{self.path.name}.corrupt-{seconds}.{stamp % 10**6:06d}Z"
        for n in itertools.count():
            aside = self.path.with_name(base if n == 0 else f"{base}-{n}")
            try:
                self._move_aside(aside)
            except FileExistsError:
                continue
            return aside
        raise AssertionError("unreachable")

    def _move_aside(self, aside: Path) -> None:
        """Move the files to ``aside`` (+ -wal, -shm); none is replaced.

        Each file is hard-linked to its new name (which fails, unlike a
        rename, when the name is taken), then unlinked, the database
        file first: a crash before its WAL follows leaves no database,
        so the next start refuses, and SQLite discards a WAL it finds
        next to an empty database.  The other way round, the next start
        could find the database without the commits in its WAL.
        """
        moves = [
            (Path(str(self.path) + s), Path(str(aside) + s))
            for s in ("", "-wal", "-shm")
        ]
        moves = [(src, dst) for src, dst in moves if src.exists()]
        done: list[Path] = []
        try:
            for src, dst in moves:
                os.link(src, dst)
                done.append(dst)
                # The copy holds the same secrets as the database.
                os.chmod(dst, 0o600)
        except BaseException:
            for dst in done:
                dst.unlink()
            raise
        for src, _ in moves:
            src.unlink()
        # The new names must survive a power loss as the records do.
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def open_reader(path: Path) -> sqlite3.Connection:
    """A query-only connection to ``path`` (the database's peek())."""
    # check_same_thread is off only so close() (on the database
    # thread, once nothing else runs) may close it; only the event
    # loop's thread reads through it.
    reader = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False
    )
    try:
        reader.execute("PRAGMA query_only = 1")
        reader.execute("PRAGMA busy_timeout = 0")
        # Query-only still checkpoints the WAL into the database
        # when it is the last connection to close, a write as
        # durable as the writer's must be (SQLite's compiled-in
        # default may be NORMAL).
        reader.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error:
        reader.close()
        raise
    return reader


class DatabaseBusy(Exception):
    """:class:`Reader` would have to wait; ask the database thread."""


class Reader:
    """A query-only connection for the event loop's thread, opened lazily.

    It never writes and never waits for a lock: in WAL mode readers are
    not held up by the writer, and in the rare moments when SQLite makes
    a reader wait (WAL recovery) a read raises :class:`DatabaseBusy` at
    once, for the caller to ask the database thread instead.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._con: sqlite3.Connection | None = None

    def rows(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Every row of ``sql``; raises :class:`DatabaseBusy`."""
        try:
            if self._con is None:
                self._con = open_reader(self.path)
            # fetchall() steps the statement to its end, which ends the
            # read transaction at once (an open one would hold back WAL
            # checkpoints).
            return self._con.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            raise DatabaseBusy(str(e)) from e

    def close(self) -> None:
        """Close the connection, if it was opened."""
        if self._con is not None:
            self._con.close()
            self._con = None
