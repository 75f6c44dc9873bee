"""The volume database: the only module that talks to peewee.

One SQLite file keyed by volume ID.  It is the agent's memory of what it
attached, so its durability is planned: WAL journal; the intent of an
operation (a row moving to ``attaching`` or ``detaching``) is committed
with ``synchronous=FULL``, so it is on the disk before the host is
touched; every other write is committed with ``synchronous=NORMAL``,
which in WAL mode does not fsync (the next durable commit, or a
checkpoint, carries it to the disk).  A power loss can undo only what
came after the last intent, and start-up reconciliation re-derives that
from the row's intent and the devices: one fsync per operation.  Also
an integrity check at every start, and a refusal to start on a damaged
file rather than an empty one.

All calls are synchronous and meant to run on one dedicated thread (see
:class:`hostagent.service.host.Host`); peewee keeps one connection per
thread, so that thread owns the only connection that writes.  The one
exception is :meth:`Database.peek`, a read of one row by its key for the
event loop's thread, on a query-only connection of its own: it takes
some 10 us, a trip to the database thread and back 25 us or more.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import peewee as pw

# The errors are re-exported: callers know them as the database's.
from hostagent import dbmigrations
from hostagent.dbfile import DatabaseBusy as DatabaseBusy
from hostagent.dbfile import DatabaseError as DatabaseError
from hostagent.dbfile import DatabaseFile, Reader, create_private
from hostagent.dbfile import DatabaseNeedsOperator as DatabaseNeedsOperator
from hostagent.dbrecord import VolumeRecord as VolumeRecord
from hostagent.dbrecord import columns as _columns
from hostagent.dbrecord import decode as _decode
from hostagent.dbrecord import dump as _dump

# Volume states.  A row is written in ATTACHING before the connector runs
# and in DETACHING before it is torn down, so a crash in between leaves a
# record that start-up reconciliation can finish or undo.
ATTACHING = "attaching"
ATTACHED = "attached"
DETACHING = "detaching"
STATES = (ATTACHING, ATTACHED, DETACHING)


# peewee logs every query with its parameters at DEBUG; those parameters
# include connection info, secrets and all.
logging.getLogger("peewee").setLevel(logging.INFO)


class StoredVolume(NamedTuple):
    """What volumes_info shows of a row, its JSON columns left as text."""

    vol_id: str
    connection_info: str
    path: str | None
    attachment: str | None
    multipath_id: str | None
    state: str
    last_error: str | None
    backend: str | None
    sd_id: str | None
    boot_id: str | None
    attempts: int


_proxy = pw.DatabaseProxy()


class _Base(pw.Model):
    class Meta:
        database = _proxy


class _SchemaVersion(_Base):
    version = pw.IntegerField()

    class Meta:
        table_name = "schema_version"


class _Volume(_Base):
    vol_id = pw.CharField(primary_key=True)
    connection_info = pw.TextField()
    path = pw.TextField(null=True)
    attachment = pw.TextField(null=True)
    multipath_id = pw.CharField(null=True, unique=True)
    state = pw.CharField(default=ATTACHED)
    last_error = pw.TextField(null=True)
    created = pw.FloatField()
    updated = pw.FloatField()
    backend = pw.TextField(null=True)
    sd_id = pw.TextField(null=True)
    owner_prev = pw.TextField(null=True)
    device_key = pw.TextField(null=True)
    boot_id = pw.TextField(null=True)
    attempts = pw.IntegerField(default=0)

    class Meta:
        table_name = "volume"


def _column(name: str) -> str:
    """The column of the model's field ``name``."""
    return str(_Volume._meta.fields[name].column_name)


# A row of ``_Volume.select()`` as the cursor returns it: every column, in
# the model's field order.
_Row = collections.namedtuple(  # type: ignore[misc]
    "_Row", _Volume._meta.sorted_field_names
)

# The statements of every attach, detach and extend are written as SQL
# once: peewee builds a query's SQL anew on each call.  Measured with
# timeit (a 200-row table, this project's shared 2-CPU machine): a read
# of one row takes 12 us as SQL and 163 us built by peewee, an owner
# check 3 us against 86 us, an update 14 us against 69 us: some 1 ms
# of every attach + detach (> 20 %: raw SQL).  Every other statement is
# peewee's (migrations, bulk imports, start-up reads, volumes_info's
# whole table: 556 us raw, 743 us peewee, paid only when it changed).
_COLUMNS = ", ".join(f'"{f.column_name}"' for f in _Volume._meta.sorted_fields)
_GET = f'SELECT {_COLUMNS} FROM "volume" WHERE "vol_id" = ?'
_INSERT_FIELDS = (
    "vol_id",
    "connection_info",
    "state",
    "created",
    "updated",
    "backend",
    "sd_id",
)
_INSERT = (
    'INSERT INTO "volume" ('
    + ", ".join(f'"{_column(n)}"' for n in _INSERT_FIELDS)
    + ") VALUES ("
    + ", ".join("?" for _ in _INSERT_FIELDS)
    + ")"
)
_DELETE = 'DELETE FROM "volume" WHERE "vol_id" = ?'
_OWNER = 'SELECT "vol_id" FROM "volume" WHERE ({}) AND "vol_id" != ? LIMIT 1'
# The columns volumes_info shows, in StoredVolume's order.
_STORED = [_Volume._meta.fields[name] for name in StoredVolume._fields]


# The migrations (their DDL is SQL: each writes the table as it was at
# its version, which the model, today's table, cannot describe).
MIGRATIONS = dbmigrations.MIGRATIONS
SCHEMA_VERSION = dbmigrations.SCHEMA_VERSION

PRAGMAS = (
    ("journal_mode", "wal"),
    # Commits without an fsync; intents switch to FULL (see _durably).
    ("synchronous", "normal"),
    ("foreign_keys", 1),
    ("busy_timeout", 5000),
)


class Database:
    """The volume records, with migrations and integrity checks."""

    def __init__(self, path: Path | str, migrations: int | None = None):
        self.path = Path(path)
        self.file = DatabaseFile(self.path)
        self._target = SCHEMA_VERSION if migrations is None else migrations
        self._db = pw.SqliteDatabase(None)
        # peek()'s connection, opened by its first call.
        self._reader = Reader(self.path)
        # The whole table as stored() last read it, and what the database
        # had seen of changes then (see _changes).
        self._table: tuple[tuple[int, int], list[tuple[Any, ...]]] | None = (
            None
        )

    def open(self) -> None:
        """Open (creating if needed), check integrity, migrate.

        Raises :class:`DatabaseError` when the file is damaged; the damaged
        file is first moved aside so an operator can inspect it.  Also
        when there is no database but a damaged one was moved aside at
        an earlier start: an empty database would forget the volumes
        still attached, so that takes the operator's decision.
        """
        self.file.refuse_after_quarantine()
        create_private(self.path)
        self._table = None
        problem = self.file.damage()
        if problem is not None:
            aside = self.file.quarantine()
            raise DatabaseNeedsOperator(
                f"database {self.path} is damaged ({problem}); it was moved "
                f"to {aside}. Refusing to start with an empty database "
                "while volumes may be attached. "
                + self.file.what_to_do(aside.name)
            )
        self._db.init(str(self.path), pragmas=PRAGMAS)
        _proxy.initialize(self._db)
        try:
            self._db.connect(reuse_if_open=True)
        except pw.DatabaseError as e:
            # The file passed the check, so this is the host (a full or
            # read-only file system, say), not damage: nothing is moved.
            raise DatabaseError(
                f"cannot open database {self.path}: {e}"
            ) from e
        for name in ("-wal", "-shm"):
            extra = Path(str(self.path) + name)
            if extra.exists():
                os.chmod(extra, 0o600)
        _migrate(self, self.version(), self._target)

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        self._table = None
        self._reader.close()
        if not self._db.is_closed():
            self._db.close()

    def version(self) -> int:
        """The schema version of the open database (0 when empty)."""
        if not self._db.table_exists("schema_version"):
            return 0
        row = _SchemaVersion.select().first()
        return int(row.version) if row else 0

    # -- queries -----------------------------------------------------------

    def stored(
        self, vol_ids: Sequence[str] | None = None
    ) -> list[tuple[Any, ...]]:
        """:meth:`list`, with the JSON columns as stored (not decoded).

        The rows are plain tuples of :class:`StoredVolume`'s fields, in
        its order (``StoredVolume._make`` names them).  volumes_info asks
        for every volume, again and again, while the table rarely
        changes: the whole table is read again only when it changed
        since the last read, and the same row tuples come back
        otherwise, so the caller can keep what it made of each.
        """
        if not vol_ids:
            changes = _changes(self._db)
            if self._table is not None and self._table[0] == changes:
                return self._table[1]
            rows = self._rows(_stored_query())
            self._table = (changes, rows)
            return rows
        wanted = list(dict.fromkeys(vol_ids))
        return self._rows(_stored_query().where(_Volume.vol_id.in_(wanted)))

    def _rows(self, query: Any) -> list[tuple[Any, ...]]:
        """The cursor's plain rows of ``query``.

        peewee's model instances (or its own tuples, converted column by
        column) cost more than decoding the JSON, and volumes_info lists
        every volume.
        """
        return list(cast(Any, self._db).execute(query))

    def summaries(self) -> list[StoredVolume]:
        """Every row, by vol_id, no JSON column decoded (start-up).

        From the table :meth:`stored` keeps: start-up's secrets, its
        reconciliation and the events' first look read it once.
        """
        return [StoredVolume._make(r) for r in self.stored()]

    def connection_infos(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(vol_id, connection_info)`` of every row, decoded one by one.

        A generator: start-up takes the secrets out of each and keeps
        none of the decoded rows (10,000 of them held some 30 MB).
        """
        for row in self.summaries():
            yield row.vol_id, json.loads(row.connection_info)

    def get(self, vol_id: str) -> VolumeRecord | None:
        """The record of ``vol_id``, or ``None``."""
        rows = _sql(self._db, _GET, (vol_id,)).fetchall()
        return _decode(_Row._make(rows[0])) if rows else None

    def peek(self, vol_id: str) -> VolumeRecord | None:
        """:meth:`get`, for the event loop's thread, which must not wait.

        On a query-only connection of its own (:class:`~.dbfile.Reader`):
        raises :class:`DatabaseBusy` rather than wait, for the caller to
        ask the database thread instead.  It sees every write that the
        database thread committed before it was called.
        """
        rows = self._reader.rows(_GET, (vol_id,))
        return _decode(_Row._make(rows[0])) if rows else None

    def list(self, vol_ids: Sequence[str] | None = None) -> list[VolumeRecord]:
        """Records of ``vol_ids`` (all when ``None`` or empty), by vol_id."""
        query = _Volume.select().order_by(_Volume.vol_id)
        if vol_ids:
            query = query.where(_Volume.vol_id.in_(list(vol_ids)))
        return [_decode(_Row._make(r)) for r in self._rows(query)]

    def find_device_owner(
        self,
        multipath_id: str | None,
        path: str | None,
        exclude: str,
        device_key: str | None = None,
    ) -> str | None:
        """The vol_id (other than ``exclude``) using this device, if any.

        By identity when ``device_key`` is given: the path string then
        counts only for rows that recorded none (older versions').
        """
        conditions = _same_device(multipath_id, path, device_key)
        if not conditions:
            return None
        return self._owner(
            " OR ".join(sql for sql, _ in conditions),
            [value for _, value in conditions],
            exclude,
        )

    def _owner(
        self, condition: str, params: Sequence[Any], exclude: str
    ) -> str | None:
        """The first vol_id (other than ``exclude``) meeting ``condition``."""
        row = _sql(self._db, _OWNER.format(condition), (*params, exclude))
        found = row.fetchone()
        return None if found is None else str(found[0])

    def insert(
        self,
        vol_id: str,
        connection_info: dict[str, Any],
        backend: str | None = None,
        sd_id: str | None = None,
    ) -> None:
        """Record the intent to attach ``vol_id`` (``attaching``), durably."""
        now = time.time()
        values = (
            vol_id,
            _dump(connection_info),
            ATTACHING,
            now,
            now,
            backend,
            sd_id,
        )
        _durably(self._db, lambda: _sql(self._db, _INSERT, values))

    def set_owner_prev(
        self, vol_id: str, previous: dict[str, Any] | None
    ) -> None:
        """Keep what the device node had before the agent changed it."""
        self._update(vol_id, owner_prev=_dump(previous))

    def set_attachment(self, vol_id: str, attachment: dict[str, Any]) -> None:
        """Keep os-brick's answer on a row that is still ``attaching``.

        Written as soon as connect returns, so that after a crash the
        start-up reconciliation knows the device (to complete the attach,
        or to disconnect it precisely).  ``path`` and ``multipath_id`` are
        only set by :meth:`set_attached`, after the device was checked:
        ``multipath_id`` is unique and must not clash with another row.
        """
        self._update(vol_id, attachment=_dump(attachment))

    def find_connection_owner(
        self, connection_info: dict[str, Any], exclude: str
    ) -> str | None:
        """The vol_id (other than ``exclude``) with this connection info."""
        column = _column("connection_info")
        return self._owner(
            f'"{column}" = ?', [_dump(connection_info)], exclude
        )

    def set_attached(
        self,
        vol_id: str,
        path: str,
        attachment: dict[str, Any],
        multipath_id: str | None,
        device_key: str | None = None,
        boot_id: str | None = None,
    ) -> str | None:
        """Record a finished attach, unless another volume has the device.

        Returns that other volume's vol_id, and then writes nothing.  The
        check and the write are one call on the database's one thread,
        so no other write can come between them.  ``device_key`` is the
        device's identity, ``boot_id`` the boot it was attached in.
        """
        owner = self.find_device_owner(multipath_id, path, vol_id, device_key)
        if owner is not None:
            return owner
        self._update(
            vol_id,
            path=path,
            attachment=_dump(attachment),
            multipath_id=multipath_id,
            state=ATTACHED,
            last_error=None,
            device_key=device_key,
            boot_id=boot_id,
        )
        return None

    def set_state(
        self, vol_id: str, state: str, last_error: str | None = None
    ) -> None:
        """Move ``vol_id`` to ``state``, recording (or clearing) an error.

        A move to ``attaching`` (a re-attach's intent, before it
        connects; an attach's undo, before it disconnects) or to
        ``detaching`` (a detach's intent, or a failed clean-up kept for
        a retry) is durable before it returns, as the insert is.
        """
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        write = functools.partial(
            self._update, vol_id, state=state, last_error=last_error
        )
        if state == ATTACHED:
            write()  # the outcome: reconcile re-derives it from the device
        else:
            _durably(self._db, write)

    def note_failure(self, vol_id: str, last_error: str) -> int:
        """A detach failed: ``detaching``, the error, one attempt more.

        Returns the attempts so far.
        """
        query = _Volume.update(
            state=DETACHING,
            last_error=last_error,
            attempts=_Volume.attempts + 1,
            updated=time.time(),
        ).where(_Volume.vol_id == vol_id)
        _durably(self._db, query.execute)
        return int(_Volume.get_by_id(vol_id).attempts)

    def delete(self, vol_id: str) -> None:
        """Forget ``vol_id`` (a no-op when it is unknown)."""
        _sql(self._db, _DELETE, (vol_id,))

    def integrity_ok(self) -> bool:
        """Run ``PRAGMA integrity_check`` on the open database."""
        # The first line is "ok" only when it is the only one.
        return bool(self._db.pragma("integrity_check") == "ok")

    def _update(self, vol_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        cursor = _sql(
            self._db, _update_sql(tuple(fields)), (*fields.values(), vol_id)
        )
        if cursor.rowcount != 1:
            raise DatabaseError(f"volume {vol_id} has no record to update")


def insert_many(d: Database, records: Iterable[VolumeRecord]) -> None:
    """Write whole records into ``d`` in one transaction (bench, imports)."""
    rows = [_columns(r) for r in records]
    with d._db.atomic():
        for i in range(0, len(rows), 100):
            _Volume.insert_many(rows[i : i + 100]).execute()
    # Bulk imports are rare: a checkpoint makes them durable.
    _sql(d._db, "PRAGMA wal_checkpoint(FULL)")


def _migrate(d: Database, current: int, target: int) -> None:
    """Run the migrations from ``current`` up to ``target`` on ``d``."""
    if current > SCHEMA_VERSION:
        raise DatabaseNeedsOperator(
            f"database {d.path} has schema version {current}, newer "
            f"than this agent's {SCHEMA_VERSION}; upgrade the agent"
        )
    for i in range(current, target):
        with d._db.atomic():
            if i == 0:
                d._db.create_tables([_SchemaVersion])
            MIGRATIONS[i](d._db)
            _SchemaVersion.delete().execute()
            _SchemaVersion.create(version=i + 1)


@functools.cache
def _update_sql(names: tuple[str, ...]) -> str:
    """``UPDATE`` of the fields ``names`` of one row (few sets exist)."""
    columns = ", ".join(f'"{_column(n)}" = ?' for n in names)
    return f'UPDATE "volume" SET {columns} WHERE "vol_id" = ?'


def _same_device(
    multipath_id: str | None, path: str | None, device_key: str | None
) -> list[tuple[str, Any]]:
    """Conditions on rows for "the same device" (any one suffices).

    Each is SQL with one parameter, and the parameter.
    """
    conditions: list[tuple[str, Any]] = []
    if multipath_id:
        conditions.append((f'"{_column("multipath_id")}" = ?', multipath_id))
    if device_key:
        conditions.append((f'"{_column("device_key")}" = ?', device_key))
    if path:
        same = f'"{_column("path")}" = ?'
        if device_key:
            same += f' AND "{_column("device_key")}" IS NULL'
        conditions.append((f"({same})", path))
    return conditions


def _changes(database: pw.SqliteDatabase) -> tuple[int, int]:
    """What changed the database so far, as two counters.

    ``total_changes`` counts the rows this connection (the agent's
    only one) inserted, updated or deleted; ``PRAGMA data_version``
    moves when another connection commits (an operator with the
    sqlite3 tool, say).  While both stay the same, so does the table.
    """
    con = cast(Any, database).connection()
    version = con.execute("PRAGMA data_version").fetchone()[0]
    return con.total_changes, int(version)


def _durably(database: pw.SqliteDatabase, write: Callable[[], Any]) -> None:
    """Run ``write`` (its own transaction) with an fsync at commit.

    The connection commits with ``synchronous=NORMAL``; for this one
    transaction it is FULL, which in WAL mode fsyncs the WAL at commit,
    and with it every earlier commit not yet synced.  The two pragmas
    cost microseconds and no I/O.
    """
    _sql(database, "PRAGMA synchronous = FULL")
    try:
        write()
    finally:
        _sql(database, "PRAGMA synchronous = NORMAL")


def _sql(
    database: pw.SqliteDatabase, query: str, params: Sequence[Any] = ()
) -> Any:
    """One statement on ``database``'s connection; its cursor.

    ``execute_sql`` is untyped in peewee's stubs.
    """
    return cast(Any, database).execute_sql(query, params)


def _stored_query() -> Any:
    """The rows of volumes_info, in StoredVolume's columns."""
    return _Volume.select(*_STORED).order_by(_Volume.vol_id)
