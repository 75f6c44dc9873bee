"""volumes_info's entries, and the presence the events watch compares.

Both run on the database thread (they read the table through
:meth:`~hostagent.db.Database.stored`) and check every volume's device
now (:meth:`~hostagent.udev.Udev.exists_many`).
"""

from __future__ import annotations

import json
from typing import Any

from hostagent.db import Database, StoredVolume
from hostagent.jsoncodec import encoded
from hostagent.redact import redact
from hostagent.service import identity
from hostagent.udev import Udev

# Where a stored row (Database.stored) holds what the listing reads.
_VOL_ID = StoredVolume._fields.index("vol_id")
_STATE = StoredVolume._fields.index("state")
_PATH = StoredVolume._fields.index("path")
_MULTIPATH_ID = StoredVolume._fields.index("multipath_id")


class Listing:
    """The volumes as volumes_info shows them, kept between calls."""

    def __init__(self, database: Database, udev: Udev) -> None:
        self.db = database
        self.udev = udev
        # The last answer's entries (encoded), by row and presence.
        self._shown: dict[tuple[tuple[Any, ...], bool], Any] = {}

    def entries(self, vol_ids: list[str] | None) -> list[Any]:
        """volumes_info's answer: one encoded entry per volume.

        Decoding, masking and encoding a volume's entry are most of the
        cost of volumes_info, and its answer changes little from one
        call to the next: the entries of the last answer are kept, by
        row and presence (secrets are masked by key alone, so nothing
        else changes an entry), encoded: 10,000 of them hold some 8 MB
        where decoded dicts held 39 MB, and an answer copies them where
        orjson walked every dict again.
        """
        rows = self.db.stored(vol_ids)
        last = self._shown
        shown: dict[tuple[tuple[Any, ...], bool], Any] = {}
        for key in zip(rows, self._present(rows), strict=True):
            entry = last.get(key)
            if entry is None:
                entry = encoded(_entry(StoredVolume._make(key[0]), key[1]))
            shown[key] = entry
        # Only this answer's entries are kept: the memo stays its size.
        self._shown = shown
        return list(shown.values())

    def presence(self) -> list[dict[str, Any]]:
        """Every volume's ``vol_id``, ``state``, ``path`` and ``exists``."""
        rows = self.db.stored()
        return [
            {
                "vol_id": row[_VOL_ID],
                "state": row[_STATE],
                "path": row[_PATH],
                "exists": exists,
            }
            for row, exists in zip(rows, self._present(rows), strict=True)
        ]

    def _present(self, rows: list[tuple[Any, ...]]) -> list[bool]:
        return self.udev.exists_many(
            (row[_PATH], row[_MULTIPATH_ID]) for row in rows
        )


def _entry(row: StoredVolume, exists: bool) -> dict[str, Any]:
    """One volume as volumes_info shows it, secrets masked."""
    return {
        "vol_id": row.vol_id,
        "connection_info": _shown_json(row.connection_info),
        "path": row.path,
        "attachment": _shown_json(row.attachment),
        "exists": exists,
        "state": row.state,
        "last_error": row.last_error,
        "backend": row.backend,
        "sd_id": row.sd_id,
        "boot_id": row.boot_id,
        # A device number recorded in an earlier boot may name another
        # device now: such a row is attached again by a re-attach.
        "this_boot": row.boot_id is not None
        and row.boot_id == identity.boot_id(),
        "attempts": row.attempts,
    }


def _shown_json(text: str | None) -> Any:
    """A stored JSON column, decoded and masked, as results show it."""
    return None if text is None else redact(json.loads(text))
