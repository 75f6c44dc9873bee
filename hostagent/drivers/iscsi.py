"""iSCSI: os-brick's ISCSI connector, through open-iscsi's iscsiadm."""

from hostagent.drivers.base import Driver

DRIVER = Driver(
    name="iscsi",
    protocol="ISCSI",
    tools=("iscsiadm",),
    multipath=True,
)
