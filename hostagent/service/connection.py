"""Disconnecting a recorded volume, unless another volume uses its device."""

from __future__ import annotations

import logging
from typing import Any

from hostagent import drivers
from hostagent.db import Database, VolumeRecord
from hostagent.service.backends import record_backend
from hostagent.service.device import device_path
from hostagent.service.host import Host

log = logging.getLogger(__name__)


def recorded_device(rec: VolumeRecord) -> tuple[str | None, str | None]:
    """``(path, multipath_id)`` of a record's device, as far as known."""
    driver = str(rec.connection_info["driver_volume_type"])
    attachment = rec.attachment or {}
    path = rec.path or device_path(driver, attachment) or None
    mpath = rec.multipath_id or attachment.get("multipath_id") or None
    return path, mpath


def device_sharer(database: Database, rec: VolumeRecord) -> str | None:
    """The other volume using ``rec``'s device or connection, if any.

    Runs on the database thread.  A row still ``attaching`` has no
    ``path`` yet: the device is then worked out from the recorded
    attachment, and when os-brick never returned one, the connection
    info alone tells.
    """
    path, mpath = recorded_device(rec)
    return database.find_device_owner(
        mpath, path, rec.vol_id, rec.device_key
    ) or database.find_connection_owner(rec.connection_info, rec.vol_id)


async def disconnect(h: Host, rec: VolumeRecord) -> None:
    """Disconnect a record's device, unless another volume uses it."""
    sharer = await h.in_db(device_sharer, h.db, rec)
    await disconnect_unshared(h, rec, sharer)


async def disconnect_unshared(
    h: Host, rec: VolumeRecord, sharer: str | None, force: bool = False
) -> None:
    """Disconnect a record's device; not when ``sharer`` uses it too.

    ``sharer`` is what :func:`device_sharer` found; ``force`` is
    os-brick's (flush errors ignored, see :meth:`Brick.disconnect`).
    """
    vol_id = rec.vol_id
    driver = str(rec.connection_info["driver_volume_type"])
    path, _ = recorded_device(rec)
    if sharer is not None:
        log.warning(
            "volume %s: device %s is also volume %s's; not disconnecting",
            vol_id,
            path,
            sharer,
            extra={"VOL_ID": vol_id},
        )
        return
    backend = record_backend(h.config, rec)
    log.info(
        "volume %s: disconnecting %s (%s)",
        vol_id,
        path or "device unknown",
        driver,
        extra={"VOL_ID": vol_id},
    )
    data = rec.connection_info["data"]
    await h.in_worker(
        lambda: h.brick.disconnect(
            driver, data, rec.attachment, force=force, backend=backend
        )
    )
    if drivers.get(driver).shares and not await h.in_db(
        _share_in_use, h.db, driver, data, vol_id
    ):
        await h.in_worker(lambda: h.brick.release_share(driver, data, backend))


def _share_in_use(
    database: Database, driver: str, data: dict[str, Any], vol_id: str
) -> bool:
    """Whether another volume record is on the share ``data`` names."""
    share = data.get("export")
    return any(
        r.vol_id != vol_id
        and r.connection_info.get("driver_volume_type") == driver
        and r.connection_info.get("data", {}).get("export") == share
        for r in database.list()
    )
