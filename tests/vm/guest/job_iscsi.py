"""Guest job: iSCSI through os-brick against a LIO target.

Cases: iscsi_multipath (two portals, dm-multipath), iscsi_chap (right
credentials), iscsi_chap_wrong (wrong credentials: the connect fails and
nothing is left behind).
"""

from __future__ import annotations

import os
from typing import Any

import labguest as g

CHAP = ("lab-user", "lab-secret-0123")


def connector(multipath: bool) -> Any:
    """An os-brick iSCSI connector."""
    from os_brick.initiator import connector as brick

    return brick.InitiatorConnector.factory(
        "ISCSI", None, use_multipath=multipath, device_scan_attempts=5
    )


def case_multipath(initiator: str) -> None:
    """Two portals, multipath: /dev/mapper/<wwid> with two paths."""
    with g.Case("iscsi_multipath") as case:
        with case.step("target"):
            target = g.lab_lun("mpath")
        props = target.connection_data(multipath=True)
        conn = connector(multipath=True)
        with case.step("connect"):
            info = conn.connect_volume(props)
        case.data["attachment"] = info
        wwid = info.get("multipath_id") or info.get("scsi_wwn")
        case.data["wwid"] = wwid
        mapper = f"/dev/mapper/{wwid}"
        # os-brick returns /dev/dm-N once the map exists; the mapper link
        # is udev's, made from the map's uevent: let udevd catch up.
        g.sh("udevadm", "settle", "--timeout=60", check=False)
        case.data["mapper_exists"] = os.path.exists(mapper)
        case.data["path_realpath"] = os.path.realpath(info["path"])
        case.data["mapper_realpath"] = os.path.realpath(mapper)
        dm = g.dm_by_uuid(f"mpath-{wwid}")
        case.data["dm_name"] = dm
        case.data["dm_slaves"] = g.wait_slaves(dm, 2)
        case.data["sessions_attached"] = g.iscsi_sessions()
        case.data["multipath_ll"] = g.sh("multipath", "-ll").stdout
        with case.step("io"):
            case.data["io_sha256"] = g.io_check(mapper)
        with case.step("disconnect"):
            conn.disconnect_volume(props, info)
        case.data["after"] = g.iscsi_leftovers()
        case.data["mapper_exists_after"] = os.path.exists(mapper)


def case_chap(initiator: str) -> None:
    """One portal with CHAP: right credentials attach and detach."""
    with g.Case("iscsi_chap") as case:
        with case.step("target"):
            target = g.LioIscsiTarget(
                "iqn.2003-01.org.lab:chap",
                g.backing_file("chap.img"),
                ["127.0.0.2:3260"],
                acl=initiator,
                chap=CHAP,
                name="chap",
            )
        props = target.connection_data(multipath=False, chap=CHAP)
        conn = connector(multipath=False)
        with case.step("connect"):
            info = conn.connect_volume(props)
        case.data["attachment"] = info
        case.data["sessions_attached"] = g.iscsi_sessions()
        with case.step("io"):
            case.data["io_sha256"] = g.io_check(info["path"])
        with case.step("disconnect"):
            conn.disconnect_volume(props, info)
        case.data["after"] = g.iscsi_leftovers()

    with g.Case("iscsi_chap_wrong") as case:
        props = target.connection_data(
            multipath=False, chap=(CHAP[0], "wrong-secret-4567")
        )
        conn = connector(multipath=False)
        with case.step("connect"):
            try:
                info = conn.connect_volume(props)
            except Exception as exc:  # what os-brick raises is the result
                case.data["error_class"] = type(exc).__name__
                case.data["error"] = str(exc)
            else:
                case.data["attachment"] = info
                conn.disconnect_volume(props, info)
        case.data["after"] = g.iscsi_leftovers()
        case.data["node_records"] = g.sh(
            "iscsiadm", "-m", "node", check=False
        ).stdout.splitlines()


def main() -> None:
    """Start the initiator side, then run the cases one after another."""
    with g.Case("iscsi_services") as case:
        g.brick_init()
        with case.step("iscsid"):
            initiator = g.start_iscsid()
        with case.step("multipathd"):
            g.start_multipathd()
        case.data["initiator"] = initiator
        with case.step("nvme_host_ids"):
            case.data["hostnqn"] = g.nvme_host_ids()
    with g.Case("connector_properties") as case:
        # What the agent's Host.getCapabilities will report.
        from os_brick.initiator import connector as brick

        case.data["properties"] = brick.get_connector_properties(
            None, "127.0.0.1", True, False
        )
    case_multipath(initiator)
    case_chap(initiator)
    g.save_artifacts("/tmp/brick.log")


if __name__ == "__main__":
    main()
