"""Guest job: NVMe/TCP through os-brick's nvmeof connector and nvmet.

Case: nvme_tcp (attach a file-backed namespace, I/O, detach, no
controller left).
"""

from __future__ import annotations

import os
from typing import Any

import labguest as g


def main() -> None:
    """Export a namespace with nvmet-tcp and attach it with os-brick."""
    with g.Case("nvme_tcp") as case:
        g.brick_init()
        from os_brick.initiator import connector as brick

        with case.step("target"):
            case.data["hostnqn"] = g.nvme_host_ids()
            target = g.NvmetTcpTarget(
                "nqn.2014-08.org.lab:nvme", g.backing_file("nvme.img")
            )
        props: dict[str, Any] = target.connection_data()
        case.data["props"] = props
        conn = brick.InitiatorConnector.factory(
            "NVMEOF", None, use_multipath=False, device_scan_attempts=5
        )
        with case.step("connect"):
            info = conn.connect_volume(props)
        case.data["attachment"] = info
        path = info["path"]
        case.data["path_realpath"] = os.path.realpath(path)
        case.data["controllers"] = g.nvme_controllers()
        block = os.path.basename(case.data["path_realpath"])
        uuid_file = f"/sys/block/{block}/uuid"
        if os.path.exists(uuid_file):
            with open(uuid_file) as f:
                case.data["ns_uuid"] = f.read().strip()
        case.data["ns_uuid_expected"] = target.ns_uuid
        case.data["list_subsys"] = g.sh("nvme", "list-subsys").stdout
        with case.step("io"):
            case.data["io_sha256"] = g.io_check(path)
        with case.step("disconnect"):
            conn.disconnect_volume(props, info)
        case.data["controllers_after"] = g.nvme_controllers()
        case.data["path_exists_after"] = os.path.exists(path)
    g.save_artifacts("/tmp/brick.log")


if __name__ == "__main__":
    main()
