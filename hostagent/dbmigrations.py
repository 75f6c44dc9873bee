"""The volume table's migrations, as SQL.

No peewee here: :mod:`hostagent.db` runs them, each in a transaction
with the schema version it reaches, on its connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Executes(Protocol):
    """What a migration needs of a database: run one SQL statement."""

    def execute_sql(self, sql: str) -> Any:
        """Run ``sql``."""
        ...


def _sql(db: Executes, query: str) -> None:
    db.execute_sql(query)


# Ordered migrations: MIGRATIONS[i] brings a database from version i to
# i + 1.  Version 1 is the table vdsm's managed-volume DB had; version 2
# adds the flow state, so an interrupted attach or detach is visible;
# version 3 records the backend a volume was attached with; version 4
# its storage domain (sd_id) and the device node's previous ownership;
# version 5 the device's identity and the boot id; version 6 counts
# failed detach attempts (shown by volumes_info; the detach is retried
# in the background with backoff); version 7 indexes what the "another
# volume has this device or connection" checks look up.  Their DDL is
# SQL:
# each writes the table as it was at its version, which the
# model (today's table) cannot describe.
def _v1(db: Executes) -> None:
    _sql(
        db,
        "CREATE TABLE volume ("
        " vol_id TEXT PRIMARY KEY,"
        " connection_info TEXT NOT NULL,"
        " path TEXT,"
        " attachment TEXT,"
        " multipath_id TEXT UNIQUE,"
        " updated REAL NOT NULL)",
    )


def _v2(db: Executes) -> None:
    _sql(
        db,
        "ALTER TABLE volume ADD COLUMN state TEXT NOT NULL"
        # Written out: a migration is history, whatever states become.
        " DEFAULT 'attached'",
    )
    _sql(db, "ALTER TABLE volume ADD COLUMN last_error TEXT")
    _sql(db, "ALTER TABLE volume ADD COLUMN created REAL")
    _sql(db, "UPDATE volume SET created = updated")


def _v3(db: Executes) -> None:
    # Rows from before backends were attached with the [brick] defaults.
    _sql(db, "ALTER TABLE volume ADD COLUMN backend TEXT")


def _v4(db: Executes) -> None:
    # vdsm's storage domain id, and what device ownership replaced.
    _sql(db, "ALTER TABLE volume ADD COLUMN sd_id TEXT")
    _sql(db, "ALTER TABLE volume ADD COLUMN owner_prev TEXT")


def _v5(db: Executes) -> None:
    # One device is one volume, whatever path named it: its identity,
    # and the boot it was attached in (a device number of an earlier
    # boot may name another device now).  Older rows have neither.
    _sql(db, "ALTER TABLE volume ADD COLUMN device_key TEXT")
    _sql(db, "ALTER TABLE volume ADD COLUMN boot_id TEXT")
    _sql(db, "CREATE INDEX volume_device_key ON volume (device_key)")


def _v6(db: Executes) -> None:
    # Failed detach attempts, for the background retries' backoff.
    _sql(
        db,
        "ALTER TABLE volume ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
    )


def _v7(db: Executes) -> None:
    # Every attach and detach asks whether another volume has the same
    # path or the same connection info: without an index each question
    # read every row (3.9 ms a detach at 10,000 volumes, on the one
    # database thread every call waits for).
    _sql(db, "CREATE INDEX volume_path ON volume (path)")
    _sql(db, "CREATE INDEX volume_connection ON volume (connection_info)")


MIGRATIONS: tuple[Callable[[Executes], None], ...] = (
    _v1,
    _v2,
    _v3,
    _v4,
    _v5,
    _v6,
    _v7,
)
SCHEMA_VERSION = len(MIGRATIONS)
