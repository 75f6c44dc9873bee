"""The drivers: one module each, and the registry the rest asks.

Each module declares a :class:`~.base.Driver` (os-brick protocol, host
tools, config keys, connection data checks, multipath); config, host
tools, the service and brick.py ask this registry instead of naming
drivers.  Adding a driver: a module here, its line below, its tests.
"""

from __future__ import annotations

from hostagent.drivers import (
    aoe,
    fibre_channel,
    iscsi,
    lightos,
    local,
    nfs,
    nvmeof,
    rbd,
    storpool,
)
from hostagent.drivers.base import Driver

# In the order config errors and the default [brick].drivers list them.
REGISTRY: dict[str, Driver] = {
    d.name: d
    for d in (
        iscsi.DRIVER,
        fibre_channel.DRIVER,
        nvmeof.DRIVER,
        rbd.DRIVER,
        nfs.DRIVER,
        local.DRIVER,
        aoe.DRIVER,
        storpool.DRIVER,
        lightos.DRIVER,
    )
}


def get(name: str) -> Driver:
    """The driver ``name`` (KeyError when there is none)."""
    return REGISTRY[name]


def known() -> tuple[str, ...]:
    """The drivers a config may allow (declared-only ones are not)."""
    return tuple(n for n, d in REGISTRY.items() if d.implemented)


def defaults() -> tuple[str, ...]:
    """The drivers allowed when ``[brick].drivers`` is not given."""
    return tuple(n for n in known() if REGISTRY[n].default)


def uses_multipath(name: str) -> bool:
    """Whether ``name``'s devices may be multipathed (False if unknown)."""
    d = REGISTRY.get(name)
    return d is not None and d.multipath


def driver_options() -> dict[str, str]:
    """``[backend.NAME]`` keys that apply to one driver only -> driver."""
    return {o: n for n, d in REGISTRY.items() for o in d.options}
