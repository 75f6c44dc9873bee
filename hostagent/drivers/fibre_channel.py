"""Fibre Channel: os-brick's FC connector; needs an HBA on the host."""

from __future__ import annotations

import os
from collections.abc import Mapping

from hostagent.drivers.base import Driver

FC_HOST = "/sys/class/fc_host"


def host_problems(options: Mapping[str, str]) -> list[str]:
    """No HBA, no Fibre Channel."""
    try:
        hbas = sorted(os.listdir(FC_HOST))
    except OSError:
        hbas = []
    if not hbas:
        return [f"no Fibre Channel HBA ({FC_HOST} is empty)"]
    return []


DRIVER = Driver(
    name="fibre_channel",
    protocol="FIBRE_CHANNEL",
    multipath=True,
    host_problems=host_problems,
)
