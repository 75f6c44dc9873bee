"""What a driver declares: the one place that knows a driver type."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


def no_check(data: dict[str, Any]) -> None:
    """Connection data that os-brick's connector checks itself."""


def no_problems(options: Mapping[str, str]) -> list[str]:
    """A driver whose host needs nothing but its tools."""
    return []


@dataclass(frozen=True)
class Driver:
    """One ``driver_volume_type`` and what the agent needs to know of it."""

    # The connection_info's driver_volume_type, and [brick].drivers' name.
    name: str
    # os-brick's connector protocol (InitiatorConnector.factory's name).
    protocol: str
    # Commands its connector runs, looked for on PATH (getCapabilities).
    tools: tuple[str, ...] = ()
    # [backend.NAME] keys that apply to this driver only (absolute paths).
    options: tuple[str, ...] = ()
    # Whether its devices may be multipathed through dm-multipath.
    multipath: bool = False
    # Whether it is in [brick].drivers when the config does not say.
    default: bool = True
    # Whether its volumes sit on a mounted share, unmounted after the
    # last volume on it is detached.
    shares: bool = False
    # False while only declared: the config refuses it.
    implemented: bool = True
    # Raises ValueError for connection data the connector must not get:
    # a ValueError tells the service that nothing was connected.
    check_data: Callable[[dict[str, Any]], None] = no_check
    # Checks the device the connection data names before anything is
    # recorded or connected; returns its identity key (see
    # hostagent.service.identity) when it is known before connecting.
    # Raises hostagent.devices.DeviceError; DeviceNotFound means "not
    # there yet": the service lets the connector try and checks again
    # once the device is there.  Its second argument is the [brick]
    # config (hostagent.config.BrickConfig: config imports the drivers,
    # so it is not named here).
    admit: Callable[[dict[str, Any], Any], str | None] | None = None
    # What the host lacks for it, given its driver-only options (empty
    # strings when not set); cheap checks only (getCapabilities).
    host_problems: Callable[[Mapping[str, str]], list[str]] = no_problems
    # For a driver os-brick has no connector for: builds ours from the
    # os-brick parts brick.py passes (brick.OsBrickParts).
    connector: Callable[[Any], type[Any]] | None = None
    # [brick] keys that apply to this driver only (given to host_problems
    # for the driver's own status, and to configure).
    brick_options: tuple[str, ...] = ()
    # Raises ValueError for connection data refused before anything
    # runs: the attach answers -32602 with the message.
    check_params: Callable[[dict[str, Any]], None] = no_check
    # Gives an os-brick connector the [brick] options (the BrickConfig)
    # it would read from os-brick's own config.
    configure: Callable[[Any, Any], None] | None = None
