"""LightOS (NVMe/TCP with LightOS's discovery client): declared only.

Not implemented yet, so not accepted in ``[brick].drivers``; finishing
it means filling in this declaration (tools, checks) and its tests.
"""

from hostagent.drivers.base import Driver

DRIVER = Driver(
    name="lightos",
    protocol="LIGHTOS",
    default=False,
    implemented=False,
)
