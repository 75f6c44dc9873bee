"""Which driver and which ``[backend.NAME]`` options a volume uses."""

from __future__ import annotations

import logging
from typing import Any

from hostagent import drivers
from hostagent.config import BackendConfig, Config
from hostagent.db import VolumeRecord
from hostagent.errors import DriverNotSupported, InvalidParams

log = logging.getLogger(__name__)


def check_driver(config: Config, connection_info: dict[str, Any]) -> str:
    """The connection's driver, if it is allowed here (else 2009)."""
    driver = connection_info["driver_volume_type"]
    if driver not in config.brick.drivers:
        raise DriverNotSupported(
            f"driver_volume_type {driver!r} is not supported on this "
            "host; allowed: " + ", ".join(config.brick.drivers),
            {"driver_volume_type": driver},
        )
    return str(driver)


def check_data(driver: str, data: dict[str, Any]) -> None:
    """Connection data the driver refuses before anything runs (-32602)."""
    try:
        drivers.get(driver).check_params(data)
    except ValueError as e:
        raise InvalidParams(str(e), {"param": "connection_info.data"}) from e


def check_backend(
    config: Config, driver: str, name: str | None
) -> BackendConfig | None:
    """The ``[backend.NAME]`` an attach asked for (-32602 if wrong)."""
    if name is None:
        return None
    b = config.backend.get(name)
    if b is None:
        known = ", ".join(sorted(config.backend)) or "none"
        raise InvalidParams(
            f"backend {name!r} is not configured on this host "
            f"(configured: {known})",
            {"param": "backend", "backend": name},
        )
    if b.driver != driver:
        raise InvalidParams(
            f"backend {name!r} is for {b.driver} volumes, but "
            f"connection_info.driver_volume_type is {driver!r}",
            {"param": "backend", "backend": name, "driver": b.driver},
        )
    return b


def record_backend(config: Config, rec: VolumeRecord) -> BackendConfig | None:
    """The backend options a recorded volume was attached with.

    A backend removed from the config (or now for another driver)
    since the attach falls back to the [brick] defaults, so the
    volume can still be detached.
    """
    if rec.backend is None:
        return None
    b = config.backend.get(rec.backend)
    driver = rec.connection_info.get("driver_volume_type")
    if b is None or b.driver != driver:
        log.warning(
            "volume %s was attached with backend %r, which is no "
            "longer configured for %s; using the [brick] defaults",
            rec.vol_id,
            rec.backend,
            driver,
            extra={"VOL_ID": rec.vol_id},
        )
        return None
    return b
