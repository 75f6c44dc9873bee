"""The volume record as the agent uses it, and its JSON columns.

No peewee here: :mod:`hostagent.db` stores what this decodes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class VolumeRecord:
    """One row of the ``volume`` table, decoded."""

    vol_id: str
    connection_info: dict[str, Any]
    path: str | None
    attachment: dict[str, Any] | None
    multipath_id: str | None
    state: str
    last_error: str | None
    created: float
    updated: float
    # The [backend.NAME] the volume was attached with (None: the driver
    # type's [brick] defaults); detach must use the same options.
    backend: str | None = None
    # The storage domain (vdsm's sd_id) the engine attached it for; it
    # names the managed link and the udev rule.
    sd_id: str | None = None
    # Owner, group and mode the device node had before the agent gave it
    # the configured ones (ownership.NodeState.to_dict()); None: untouched.
    owner_prev: dict[str, Any] | None = None
    # The device's identity (hostagent.service.identity.device_key) and
    # the boot it was attached in; None for rows of older versions.
    device_key: str | None = None
    boot_id: str | None = None
    # Failed detach attempts of a ``detaching`` row (client calls,
    # start-up and background retries).
    attempts: int = 0


def columns(r: VolumeRecord) -> dict[str, Any]:
    """A record as the table's columns, its JSON ones encoded."""
    row = asdict(r)
    for key in ("connection_info", "attachment", "owner_prev"):
        row[key] = dump(row[key])
    return row


def dump(value: Any) -> str | None:
    """``value`` as a JSON column (compact, sorted keys), None kept."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def decode(row: Any) -> VolumeRecord:
    """A row (a model instance or a named tuple of its columns), decoded."""
    return VolumeRecord(
        vol_id=str(row.vol_id),
        connection_info=json.loads(str(row.connection_info)),
        path=row.path,
        attachment=(
            None if row.attachment is None else json.loads(row.attachment)
        ),
        multipath_id=row.multipath_id,
        state=str(row.state),
        last_error=row.last_error,
        created=float(row.created if row.created is not None else 0.0),
        updated=float(row.updated),
        backend=row.backend,
        sd_id=row.sd_id,
        owner_prev=(
            None if row.owner_prev is None else json.loads(row.owner_prev)
        ),
        device_key=row.device_key,
        boot_id=row.boot_id,
        attempts=int(row.attempts or 0),
    )
