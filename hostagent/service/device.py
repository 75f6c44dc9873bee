"""The connected device: its path, its multipath rule, waiting for it.

One rule decides whether a connected volume is usable, for a live
attach and for an attach completed at start-up alike: with multipath
enforced (by ``[brick]`` or the volume's backend) a device without a
multipath id is not (928).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hostagent import drivers
from hostagent.config import BackendConfig
from hostagent.errors import ConnectorFailed, MultipathMissing
from hostagent.service.host import Host

DEVICE_POLL = 0.1


def device_path(driver: str, info: dict[str, Any]) -> str:
    """The path a VM should use for a connected volume."""
    mpath = info.get("multipath_id")
    if mpath and drivers.uses_multipath(driver):
        return f"/dev/mapper/{mpath}"
    return str(info.get("path") or "")


def unusable(
    h: Host,
    driver: str,
    info: dict[str, Any],
    backend: BackendConfig | None,
) -> MultipathMissing | ConnectorFailed | None:
    """Why os-brick's answer ``info`` cannot be attached, or ``None``."""
    mpath = info.get("multipath_id") or None
    if h.brick.enforces_multipath(driver, backend) and not mpath:
        return MultipathMissing(
            f"multipath is enforced but the {driver} connector returned "
            "no multipath device",
            {"driver": driver},
        )
    if not device_path(driver, info):
        return ConnectorFailed(
            f"{driver} connector returned no device path",
            {"driver": driver, "error_class": "VolumeDeviceNotFound"},
        )
    return None


async def exists(h: Host, path: str, mpath: str | None) -> bool:
    """Whether the device (and its multipath device) is there."""
    if mpath:  # enumerates the dm devices: on a worker
        return await h.in_worker(h.udev.exists, path, mpath)
    # A stat and a sysfs read: less than the hand-off to a thread.
    return h.udev.exists(path, None)


async def check_multipath(
    h: Host, driver: str, backend: BackendConfig | None
) -> None:
    """Refuse (928) an enforced-multipath attach without multipathd.

    Checked before connecting: without the daemon no dm device can
    appear, and os-brick would otherwise scan and log in for nothing.
    """
    if not h.brick.enforces_multipath(driver, backend):
        return
    if not await h.in_worker(h.brick.multipath_ready, driver, backend):
        raise MultipathMissing(
            "multipath is enforced"
            + (f" by backend {backend.name!r}" if backend else "")
            + " but multipathd is not running on this host",
            {"driver": driver, "backend": backend and backend.name},
        )


async def wait_for_device(
    h: Host,
    driver: str,
    info: dict[str, Any],
    backend: BackendConfig | None = None,
) -> str:
    """Wait for the connected device; return the VM's path.

    Raises 928 when multipath is enforced (by ``[brick]`` or the
    backend) and there is no multipath device (os-brick returned
    none, or its dm device did not appear in time), 926 when the
    device does not show up in time.
    """
    problem = unusable(h, driver, info, backend)
    if problem is not None:
        raise problem
    mpath = info.get("multipath_id") or None
    path = device_path(driver, info)
    deadline = time.monotonic() + h.device_wait
    while not await exists(h, path, mpath):
        if time.monotonic() >= deadline:
            # path is /dev/mapper/<id> here: absent when the map was
            # never made, which is what enforcing multipath forbids.
            if mpath and (
                h.brick.enforces_multipath(driver, backend)
                or await h.in_worker(h.udev.device_present, path)
            ):
                raise MultipathMissing(
                    f"no multipath device appeared: no dm device with "
                    f"uuid mpath-{mpath} within {h.device_wait:g} s",
                    {"driver": driver, "multipath_id": mpath},
                )
            raise ConnectorFailed(
                f"device {path} did not appear within {h.device_wait:g} s",
                {"driver": driver, "error_class": "VolumeDeviceNotFound"},
            )
        await asyncio.sleep(DEVICE_POLL)
    return path
