"""NVMe over Fabrics: os-brick's NVMEOF connector (nvme-cli)."""

from hostagent.drivers.base import Driver

DRIVER = Driver(name="nvmeof", protocol="NVMEOF", tools=("nvme",))
