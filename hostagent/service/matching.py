"""Whether a call matches the volume's record: re-attach and detach.

A re-attach with what the attach was made with (connection info,
backend, storage domain) returns the attachment again; anything else is
refused, so no client mistakes another volume's device for its own.
"""

from __future__ import annotations

from typing import Any

from hostagent import db
from hostagent.db import VolumeRecord
from hostagent.errors import ConnectionInfoMismatch, InvalidParams, VolumeBusy


def check_reattach(
    rec: VolumeRecord,
    connection_info: dict[str, Any],
    sd_id: str | None,
    backend: str | None,
) -> None:
    """Raise 927 unless attached, 929 unless asked for the same way."""
    if rec.state != db.ATTACHED:
        raise VolumeBusy(
            f"volume {rec.vol_id} is {rec.state}"
            + (f" (last error: {rec.last_error})" if rec.last_error else "")
            + "; detach it first",
            {"vol_id": rec.vol_id, "state": rec.state},
        )
    if rec.connection_info != connection_info:
        raise ConnectionInfoMismatch(
            f"volume {rec.vol_id} is already attached with different "
            "connection info; detach it first",
            {"vol_id": rec.vol_id},
        )
    if rec.backend != backend:
        raise ConnectionInfoMismatch(
            f"volume {rec.vol_id} is already attached with backend "
            f"{rec.backend!r}, not {backend!r}; detach it first",
            {"vol_id": rec.vol_id, "backend": rec.backend},
        )
    if rec.sd_id != sd_id:
        raise ConnectionInfoMismatch(
            f"volume {rec.vol_id} is already attached with sd_id "
            f"{rec.sd_id!r}, not {sd_id!r}; detach it first",
            {"vol_id": rec.vol_id, "sd_id": rec.sd_id},
        )


def check_detach(rec: VolumeRecord, sd_id: str | None) -> None:
    """A detach naming a storage domain must name the volume's (-32602).

    vdsm's clients send the sd_id they attached with; another one means
    another volume, which must not be detached by mistake.
    """
    if sd_id is not None and sd_id != rec.sd_id:
        raise InvalidParams(
            f"volume {rec.vol_id} was attached with sd_id "
            f"{rec.sd_id!r}, not {sd_id!r}",
            {"param": "sd_id", "sd_id": rec.sd_id},
        )
