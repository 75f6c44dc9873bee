"""ATA over Ethernet: the agent's own connector (os-brick dropped its).

Opt-in (not in the default [brick].drivers): it is unauthenticated
layer-2 traffic that any host on the segment can answer, and few sites
still run it.  The connector itself, on os-brick's base class,
is built here on the os-brick parts brick.py hands over, and checks the
connection data itself (with :func:`aoe_device_name`, as os-brick's
connectors do: a BrickException).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from hostagent.drivers.base import Driver

log = logging.getLogger(__name__)

AOE_DISCOVER = "/dev/etherd/discover"

# AoE addresses a target as shelf (major, 16 bits; 0xffff is broadcast)
# and slot (minor, 8 bits; 0xff is broadcast).
AOE_MAX_SHELF = 0xFFFE
AOE_MAX_SLOT = 0xFE


def aoe_device_name(props: dict[str, Any]) -> str:
    """``e<shelf>.<slot>`` from AoE connection properties.

    ``target_shelf`` and ``target_lun`` (the slot) are what Cinder's and
    nova-volume's AoE drivers sent; both must be in AoE's address range,
    so nothing from a client reaches a command line unchecked.
    """
    shelf = props.get("target_shelf")
    slot = props.get("target_lun")
    for key, value, top in (
        ("target_shelf", shelf, AOE_MAX_SHELF),
        ("target_lun", slot, AOE_MAX_SLOT),
    ):
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 0 <= value <= top
        ):
            raise ValueError(
                f"AoE connection data needs {key} as an integer 0..{top}"
            )
    return f"e{shelf}.{slot}"


@functools.cache
def connector_class(os_brick: Any) -> type[Any]:
    """The AoE connector class, built on ``os_brick``'s parts.

    ``os_brick`` is what brick.py hands over (its ``OsBrickParts``):
    only brick.py imports os-brick.  One class per parts, so a test may
    change its paths before the agent uses it.

    os-brick removed its AoE connector; this one follows os-brick's
    connector interface (``BaseLinuxConnector``) and drives the kernel's
    aoe module through aoetools: ``aoe-discover`` makes the driver
    broadcast a query and create ``/dev/etherd/e<shelf>.<slot>`` for
    every target that answers, ``aoe-revalidate`` re-reads one target's
    size, ``aoe-flush`` drops a target from the driver.
    """
    base = os_brick.base
    exception = os_brick.exception
    initiator = os_brick.initiator
    utils = os_brick.utils
    connector_base: Any = base.BaseLinuxConnector

    class AoEConnector(connector_base):  # type: ignore[misc]
        """Attach/detach ATA-over-Ethernet volumes (aoetools)."""

        # Class attributes, like os-brick's LinuxFibreChannel paths.
        ETHERD = "/dev/etherd"
        # Seconds to wait after the n-th discovery before looking again:
        # an answer usually takes milliseconds, a busy switch longer.
        DISCOVER_DELAYS = (1.0, 2.0, 4.0, 8.0)

        def __init__(
            self,
            root_helper: str,
            driver: Any = None,
            device_scan_attempts: int = initiator.DEVICE_SCAN_ATTEMPTS_DEFAULT,
            **kwargs: Any,
        ) -> None:
            super().__init__(
                root_helper,
                driver=driver,
                device_scan_attempts=device_scan_attempts,
                **kwargs,
            )

        @staticmethod
        def get_connector_properties(
            root_helper: str, *args: Any, **kwargs: Any
        ) -> dict[str, Any]:
            """AoE needs nothing from the initiator: the MAC is implicit."""
            return {}

        def get_search_path(self) -> str:
            """Where the aoe driver's block devices appear."""
            return self.ETHERD

        def _device(self, props: dict[str, Any]) -> tuple[str, str]:
            try:
                name = aoe_device_name(props)
            except ValueError as e:
                raise exception.BrickException(message=str(e)) from None
            return name, os.path.join(self.ETHERD, name)

        def get_volume_paths(self, props: dict[str, Any]) -> list[str]:
            """The device path, when the driver currently has it."""
            _, path = self._device(props)
            return [path] if os.path.exists(path) else []

        def _run(self, *cmd: str) -> None:
            out, err = self._execute(
                *cmd,
                run_as_root=True,
                root_helper=self._root_helper,
                check_exit_code=0,
            )
            log.debug("%s: stdout=%r stderr=%r", " ".join(cmd), out, err)

        @base.synchronized("aoe_control", external=True)  # type: ignore[untyped-decorator]
        def connect_volume(self, props: dict[str, Any]) -> dict[str, Any]:
            """Discover the target; return its ``/dev/etherd`` device.

            A device already known to the driver is revalidated (its
            size may have changed); otherwise discovery runs, and again
            after each delay, up to ``device_scan_attempts`` times.
            """
            name, path = self._device(props)
            if os.path.exists(path):
                self._run("aoe-revalidate", name)
            else:
                self._run("aoe-discover")
            tries = 0
            while not os.path.exists(path):
                if tries >= self.device_scan_attempts:
                    raise exception.VolumeDeviceNotFound(device=path)
                delay = self.DISCOVER_DELAYS[
                    min(tries, len(self.DISCOVER_DELAYS) - 1)
                ]
                log.info(
                    "AoE device %s not there yet; discovering again in "
                    "%g s (try %d of %d)",
                    path,
                    delay,
                    tries + 1,
                    self.device_scan_attempts,
                )
                time.sleep(delay)
                self._run("aoe-discover")
                tries += 1
            return {"type": "block", "device": name, "path": path}

        @base.synchronized("aoe_control", external=True)  # type: ignore[untyped-decorator]
        def disconnect_volume(
            self,
            props: dict[str, Any],
            device_info: dict[str, Any] | None,
            force: bool = False,
            ignore_errors: bool = False,
        ) -> None:
            """Flush the target out of the driver (gone already: done)."""
            name, path = self._device(props)
            if not os.path.exists(path):
                return
            try:
                self._run("aoe-flush", name)
            except Exception:
                if not (force and ignore_errors):
                    raise
                log.warning("aoe-flush %s failed; ignored (forced)", name)

        def extend_volume(self, props: dict[str, Any]) -> int:
            """Revalidate the target and return its size in bytes."""
            name, path = self._device(props)
            if not os.path.exists(path):
                raise exception.VolumeDeviceNotFound(device=path)
            self._run("aoe-revalidate", name)
            size = utils.get_device_size(self, path)
            if size is None:
                raise exception.BrickException(
                    message=f"cannot read the size of {path}"
                )
            return int(size)

    return AoEConnector


def host_problems(options: Mapping[str, str]) -> list[str]:
    """The kernel's aoe driver must be loaded."""
    if not os.path.exists(AOE_DISCOVER):
        return [f"aoe driver not loaded (no {AOE_DISCOVER})"]
    return []


DRIVER = Driver(
    name="aoe",
    protocol="AOE",
    tools=("aoe-discover", "aoe-revalidate", "aoe-flush"),
    default=False,
    host_problems=host_problems,
    connector=connector_class,
)
