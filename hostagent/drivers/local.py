"""Local: a block device already on this host (os-brick's LOCAL)."""

from hostagent.drivers.base import Driver

DRIVER = Driver(name="local", protocol="LOCAL")
