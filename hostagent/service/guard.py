"""Admission: what an attach checks before it records or connects.

A driver may check the device its connection data names before anything
happens (``Driver.admit``: the ``local`` guard), and every attach makes
sure its device is not another volume's, compared by identity
(:mod:`.identity`), not by the path string that named it.  Refusals are
numbered errors with ``data.reason`` from :mod:`hostagent.devices`:

* -32602: the path is bad, not a block device, under /proc or /sys, or
  matches no ``[brick] local_allowed`` glob (the request is wrong);
* 926: no media behind the node (a detached loop, a LUN gone): the
  device is not there, as when a connector finds none;
* 927: the device is in use on this host (mounted, held, the host's
  own disk, an exclusive open fails) or is another volume's.
"""

from __future__ import annotations

from hostagent import devices, drivers
from hostagent.errors import (
    AgentError,
    ConnectorFailed,
    InvalidParams,
    VolumeBusy,
)
from hostagent.service.host import Host

DEVICE_PARAM = "connection_info.data.device_path"


def device_error(driver: str, e: devices.DeviceError) -> AgentError:
    """The numbered error for a device refusal (see the module)."""
    data: dict[str, object] = {"driver": driver, **e.detail}
    if isinstance(e, devices.DeviceBusy):
        return VolumeBusy(e.message, data)
    if isinstance(e, (devices.NoMedia, devices.DeviceNotFound)):
        data["error_class"] = "VolumeDeviceNotFound"
        return ConnectorFailed(e.message, data)
    return InvalidParams(e.message, {"param": DEVICE_PARAM, **data})


async def admit(
    h: Host, driver: str, data: dict[str, object], final: bool = False
) -> tuple[str | None, bool]:
    """Run the driver's device check; ``(identity key, done)``.

    ``done`` is False when the device is not there yet (the connector
    is left to say so, and :func:`admit` runs again, ``final``, once the
    device showed up: what appears in between is checked too).  The
    check reads mountinfo and sysfs and opens the device: on a worker.
    """
    check = drivers.get(driver).admit
    if check is None:
        return None, True
    try:
        key = await h.in_worker(check, dict(data), h.config.brick)
    except devices.DeviceNotFound as e:
        if final:
            raise device_error(driver, e) from None
        return None, False
    except devices.DeviceError as e:
        raise device_error(driver, e) from None
    return key, True


async def refuse_owned(
    h: Host, vol_id: str, key: str | None, path: str | None = None
) -> None:
    """927 when the device ``key`` is already another volume's."""
    if key is None:
        return
    owner = await h.in_db(h.db.find_device_owner, None, None, vol_id, key)
    if owner is not None:
        raise owned_error(vol_id, key, path, owner)


def owned_error(
    vol_id: str, key: str | None, path: str | None, owner: str
) -> VolumeBusy:
    """927: the device ``key`` (named ``path``) is volume ``owner``'s."""
    return VolumeBusy(
        f"device {devices.printable(path or key or '?')} is already attached "
        f"as volume {owner}",
        {"vol_id": vol_id, "attached_as": owner, "device_key": key},
    )
