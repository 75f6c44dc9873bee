"""Guest job: AoE (ATA over Ethernet) with vblade and the aoe driver.

Case: aoe (vblade exports a file on a veth pair; the aoe driver shows
it as /dev/etherd/e<shelf>.<slot>; I/O through it reaches the file).
"""

from __future__ import annotations

import hashlib
import os

import labguest as g

SHELF, SLOT = 1, 1


def main() -> None:
    """Export a file with vblade and use it through /dev/etherd."""
    with g.Case("aoe") as case:
        backing = g.backing_file("aoe.img")
        device = f"/dev/etherd/e{SHELF}.{SLOT}"
        case.data["device"] = device
        with case.step("target"):
            vblade = g.start_vblade(backing, SHELF, SLOT)
        try:
            with case.step("discover"):
                g.sh("aoe-discover")
                g.wait_for(
                    lambda: os.path.exists(device),
                    timeout=30,
                    what=f"{device} to appear",
                )
            case.data["aoe_stat"] = g.sh("aoe-stat").stdout
            case.data["sysfs"] = os.path.realpath(
                f"/sys/block/etherd!e{SHELF}.{SLOT}"
            )
            with case.step("io"):
                digest = g.io_check(device)
            case.data["io_sha256"] = digest
            with open(backing, "rb") as f:
                f.seek(1 << 20)
                case.data["backing_sha256"] = hashlib.sha256(
                    f.read(1 << 20)
                ).hexdigest()
        finally:
            vblade.terminate()
            vblade.wait(timeout=10)
        with case.step("flush"):
            # The target is gone: aoe-flush drops the device.
            g.sh("aoe-flush", "-a", check=False)
            g.wait_for(
                lambda: not os.path.exists(device),
                timeout=30,
                what=f"{device} to go",
            )
        case.data["device_exists_after"] = os.path.exists(device)


if __name__ == "__main__":
    main()
