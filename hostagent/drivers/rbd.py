"""RBD (Ceph): os-brick's RBD connector maps the image with krbd.

The agent always maps on this host (``do_local_attach``): a librados
handle in the agent's process would be useless to a VM.
"""

from __future__ import annotations

from pathlib import Path

from hostagent.drivers.base import Driver

# The kernel lists every image it maps (krbd) here, one directory each.
RBD_SYSFS = Path("/sys/bus/rbd/devices")


def rbd_kernel_maps(sysfs: Path = RBD_SYSFS) -> set[str]:
    """``pool/image`` of every image the rbd kernel module maps.

    Empty without the module (no directory).  An image in a namespace
    counts as ``pool/image`` too: os-brick cannot name one, and treating
    it as this image errs on the side of keeping the row.
    """
    maps: set[str] = set()
    try:
        entries = list(sysfs.iterdir())
    except FileNotFoundError:
        return maps
    for d in entries:
        try:
            pool = (d / "pool").read_text().strip()
            name = (d / "name").read_text().strip()
        except FileNotFoundError:
            continue  # unmapped while this read the directory
        maps.add(f"{pool}/{name}")
    return maps


DRIVER = Driver(
    name="rbd",
    protocol="RBD",
    tools=("rbd",),
    # The ceph.conf the rbd tool uses (CEPH_CONF) instead of the default.
    options=("ceph_conf",),
)
