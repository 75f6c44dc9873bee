"""Local: a block device already on this host (os-brick's LOCAL).

os-brick's connector takes ``device_path`` as given; a VM must never
get a host file, a directory, /dev/null or the host's own disk, so the
path is checked first (:func:`admit`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hostagent import devices
from hostagent.drivers.base import Driver

if TYPE_CHECKING:
    from hostagent.config import BrickConfig


def admit(data: dict[str, Any], brick: BrickConfig) -> str | None:
    """Refuse a ``device_path`` a VM must not get; its identity key.

    See :func:`hostagent.devices.check_local_device` and ``[brick]
    local_allowed``.  Without a ``device_path`` the connector refuses
    the data itself.
    """
    if "device_path" not in data:
        return None
    path = data["device_path"]
    if not isinstance(path, str):
        raise devices.BadPath(
            repr(path)[:40],
            "connection_info.data.device_path must be a string",
        )
    return devices.check_local_device(path, brick.local_allowed).key


DRIVER = Driver(name="local", protocol="LOCAL", admit=admit)
