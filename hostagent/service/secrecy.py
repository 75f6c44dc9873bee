"""Which volumes' secrets the scrubber holds: those with a row.

The scrubbing itself is :mod:`hostagent.redact`'s; this module says what
it must know.  The rule: every volume with a row in the database (the
truth about what may still be connected) has its connection info's
secrets held, because os-brick sees them again at detach and logs what
it sees; a volume without a row has none held.  The API holds a
request's own secrets for the length of the call.
"""

from __future__ import annotations

from hostagent.db import Database, DatabaseBusy
from hostagent.redact import SCRUBBER


def hold_recorded(database: Database) -> None:
    """Hold the secrets of rows from an earlier run (at start-up).

    On the database thread; the rows are decoded one at a time.
    """
    SCRUBBER.hold_many(database.connection_infos())


def keep(database: Database, vol_id: str) -> None:
    """Hold the secrets of ``vol_id``'s row, if any; else let them go.

    Called after every attach and detach, whatever its outcome: the
    row is the truth (an attach whose undo failed keeps one, a failed
    detach keeps it, a refused attach leaves another's in place).  The
    read and the change happen in one step of the event loop, so no
    other call's row can come or go in between.
    """
    try:
        rec = database.peek(vol_id)
    except DatabaseBusy:
        return  # keep what is held: holding too much costs memory only
    if rec is None:
        SCRUBBER.release(vol_id)
    else:
        SCRUBBER.hold(vol_id, rec.connection_info)


def forgotten(vol_id: str) -> None:
    """``vol_id``'s row was deleted (by start-up reconciliation)."""
    SCRUBBER.release(vol_id)
