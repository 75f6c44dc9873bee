"""ATA over Ethernet: the agent's own connector (os-brick dropped its).

Opt-in (not in the default [brick].drivers): it is unauthenticated
layer-2 traffic that any host on the segment can answer, and few sites
still run it.  The connector itself, built on os-brick's base class,
lives in brick.py and checks the connection data itself (with
:func:`aoe_device_name`, as os-brick's connectors do: a BrickException).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hostagent.drivers.base import Driver

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
)
