"""NFS: os-brick's remote-fs connector mounts the share, the agent
unmounts it once its last volume is detached (os-brick never does)."""

from hostagent.drivers.base import Driver

DRIVER = Driver(name="nfs", protocol="NFS", tools=("mount.nfs",), shares=True)
