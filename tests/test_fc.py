"""Fibre Channel through os-brick's FC connector, on a fake FC host.

There is no HBA and no device-mapper here.  ``fakehost.py`` runs the real
daemon in a private mount namespace whose /sys/class has two fake HBAs
(one Online, one Linkdown) and a fake kernel that answers scan-file
writes by making the LUN appear under /dev/disk/by-path (backed by a real
loop device) and ``delete`` writes by removing it; with ``multipathd`` it
also plays multipath-tools, making a dm map for the LUN.  The tests check
what os-brick, driven by the agent, wrote to the scan and delete files,
what it reported and how the agent answered.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import fakehost
import pytest
from conftest import Agent, Loops, need, new_vol_id
from support import ATTACH, DETACH, INFO

FAKEHOST = str(Path(__file__).with_name("fakehost.py"))

TARGET_WWPN = "500a0981891b8dc5"
LUN_WWN = "3600a098038303053753f4a6f5a4d6e31"
PCI = "0000:05:00.2"
BY_PATH = f"/dev/disk/by-path/pci-{PCI}-fc-0x{TARGET_WWPN}-lun-1"


class FakeHostAgent(Agent):
    """hostagentd inside fakehost.py's private mount namespace."""

    def __init__(
        self,
        tmp: Path,
        spec: dict[str, Any],
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(tmp, env)
        self.root = tmp / "host"
        self.spec_path = tmp / "fakehost.json"
        self.spec_path.write_text(json.dumps({"root": str(self.root), **spec}))

    def start(self, wait: bool = True) -> None:  # type: ignore[override]
        """Start the daemon in its namespace; wait for a ping."""
        super().start(
            wait,
            prefix=[
                *("unshare", "--mount", "--propagation", "private"),
                *(sys.executable, FAKEHOST, str(self.spec_path), "--"),
            ],
        )

    @property
    def sysfs(self) -> fakehost.Sysfs:
        """The fake kernel's files, seen from outside the namespace."""
        return fakehost.Sysfs.outside(self.root)

    def deleted(self, count: int, timeout: float = 30.0) -> list[str]:
        """The "H:C:T:L sdX" deletes, once there are ``count`` of them.

        The fake kernel acts when the writer (tee) has closed the file,
        possibly after os-brick returned: wait for it (generously).
        """
        p = self.root / "delete.log"
        deadline = time.monotonic() + timeout
        while True:
            now = p.read_text().splitlines() if p.exists() else []
            if len(now) >= count or time.monotonic() > deadline:
                return now
            time.sleep(0.05)

    def multipath_calls(self) -> list[str]:
        """Every multipath/multipathd command line the fake tools ran."""
        p = self.root / "multipath.log"
        return p.read_text().splitlines() if p.exists() else []

    def disk_name(self, link: str) -> str:
        """The sdX a /dev/disk/by-path link of the private /dev names."""
        return os.path.basename(os.readlink(self.sysfs.dev / link[5:]))

    def scans(self, settle: float = 0.3) -> list[str]:
        """Every "hostN: C T L" written to a scan file, in order.

        The fake kernel reads the scan files every 20 ms, as a separate
        thread; wait until the log stops growing.
        """
        p = self.root / "scan.log"
        last: list[str] | None = None
        while True:
            now = p.read_text().splitlines() if p.exists() else []
            if now == last:
                return now
            last = now
            time.sleep(settle)


def fc_spec(device: str, multipathd: bool = False) -> dict[str, Any]:
    return {
        "scsi_id": True,
        "multipathd": multipathd,
        "fc": {
            "hbas": [
                {
                    "host": "host5",
                    "pci": PCI,
                    "port_name": "0x10000090fa0d6754",
                    "node_name": "0x20000090fa0d6754",
                    "port_state": "Online",
                    "targets": [
                        {
                            "id": 3,
                            "wwpn": f"0x{TARGET_WWPN}",
                            "luns": [
                                {"lun": 1, "device": device, "wwn": LUN_WWN}
                            ],
                        }
                    ],
                },
                {
                    "host": "host6",
                    "pci": "0000:05:00.3",
                    "port_name": "0x10000090fa0d6755",
                    "node_name": "0x20000090fa0d6755",
                    "port_state": "Linkdown",
                },
            ]
        },
    }


def fc_info(wwpn: str = TARGET_WWPN, **extra: Any) -> dict[str, Any]:
    return {
        "driver_volume_type": "fibre_channel",
        "data": {
            "target_wwn": [wwpn.upper()],
            "target_lun": 1,
            "target_discovered": False,
            **extra,
        },
    }


BACKENDS = {
    "backend": {
        "san": {
            "driver": "fibre_channel",
            "multipath": False,
            "device_scan_attempts": 2,
        },
        "san-mp": {
            "driver": "fibre_channel",
            "multipath": True,
            "enforce_multipath": True,
            "device_scan_attempts": 1,
        },
    }
}


def start_fc_agent(
    agent_factory: Any,
    loops: Loops,
    env: dict[str, str] | None = None,
    multipathd: bool = False,
) -> FakeHostAgent:
    """An agent on a host with the two HBAs of :func:`fc_spec`."""
    need("unshare")
    a: FakeHostAgent = agent_factory(
        "fc",
        env,
        cls=FakeHostAgent,
        spec=fc_spec(loops.create(), multipathd),
    )
    a.configure(**BACKENDS)
    a.start()
    return a


@pytest.fixture
def fc_agent(agent_factory: Any, loops: Loops) -> FakeHostAgent:
    """A started agent on the fake FC host."""
    return start_fc_agent(agent_factory, loops)


def test_capabilities_show_online_hbas(fc_agent: FakeHostAgent) -> None:
    caps = fc_agent.call("Host.getCapabilities")
    # os-brick reports the ports that are Online, without "0x".
    assert caps["connector_info"]["wwpns"] == ["10000090fa0d6754"]
    assert caps["connector_info"]["wwnns"] == ["20000090fa0d6754"]
    assert caps["driver_status"]["fibre_channel"]["ready"] is True
    assert caps["backends"]["san"]["ready"] is True
    assert caps["backends"]["san"]["multipath"] is False
    # The tools are installed but multipathd does not run (it cannot
    # here): an enforced-multipath attach would be 928, so not ready.
    mp = caps["backends"]["san-mp"]
    assert mp["tools"] == {"multipath": True, "multipathd": True}
    assert mp["problems"] == [
        "multipathd is not running and multipath is enforced"
    ]
    assert mp["ready"] is False
    # Multipath only when it can be had: not a problem for the driver.
    assert caps["driver_status"]["fibre_channel"]["problems"] == []


def test_attach_scans_the_right_hba_target_and_lun(
    fc_agent: FakeHostAgent,
) -> None:
    vid = new_vol_id()
    res = fc_agent.call(
        ATTACH, {"vol_id": vid, "connection_info": fc_info(), "backend": "san"}
    )
    # os-brick found target 3 behind host5's transport and asked the
    # kernel for exactly channel 0, target 3, LUN 1 there; the Linkdown
    # HBA without that target was not scanned.
    assert fc_agent.scans() == ["host5: 0 3 1"]
    assert res["path"] == BY_PATH
    assert res["attachment"]["path"] == BY_PATH
    assert res["attachment"]["scsi_wwn"] == LUN_WWN
    assert res["attachment"]["type"] == "block"
    (info,) = fc_agent.call(INFO)
    assert info["exists"] is True
    assert info["backend"] == "san"
    sd = fc_agent.disk_name(BY_PATH)
    fs = fc_agent.sysfs
    assert (fs.block / sd / "device" / "delete").exists()
    assert fc_agent.call(DETACH, [vid]) is True
    assert fc_agent.call(INFO) == []
    # os-brick flushed and deleted the SCSI device; the kernel (and
    # udev) took away its node, sysfs entry and by-path link.
    assert fc_agent.deleted(1) == [f"5:0:3:1 {sd}"]
    assert not os.path.lexists(fs.dev / sd)
    assert not os.path.lexists(fs.block / sd)
    assert not os.path.lexists(fs.dev / BY_PATH[5:])
    # The LUN can be attached again: a new scan finds it.
    res = fc_agent.call(
        ATTACH, {"vol_id": vid, "connection_info": fc_info(), "backend": "san"}
    )
    assert res["path"] == BY_PATH
    assert fc_agent.call(DETACH, [vid]) is True
    assert len(fc_agent.deleted(2)) == 2


def test_unknown_target_is_wildcard_scanned_then_926(
    fc_agent: FakeHostAgent,
) -> None:
    vid = new_vol_id()
    err = fc_agent.error(
        ATTACH,
        {
            "vol_id": vid,
            "connection_info": fc_info("500a0981891b0000"),
            "backend": "san",
        },
    )
    assert err.code == 926
    assert err.data["error_class"] == "NoFibreChannelVolumeDeviceFound"
    # No HBA sees that target: os-brick falls back to a broad scan of
    # the LUN on every HBA, once per attempt (2).
    assert fc_agent.scans() == ["host5: - - 1", "host6: - - 1"] * 2
    assert fc_agent.call(INFO) == []


def test_no_wildcard_scan_when_the_array_forbids_it(
    fc_agent: FakeHostAgent,
) -> None:
    err = fc_agent.error(
        ATTACH,
        {
            "vol_id": new_vol_id(),
            "connection_info": fc_info(
                "500a0981891b0000", enable_wildcard_scan=False
            ),
            "backend": "san",
        },
    )
    assert err.code == 926
    assert fc_agent.scans() == []


def test_enforced_multipath_without_dm_device_is_928(
    fc_agent: FakeHostAgent,
) -> None:
    vid = new_vol_id()
    err = fc_agent.error(
        ATTACH,
        {"vol_id": vid, "connection_info": fc_info(), "backend": "san-mp"},
    )
    # multipathd does not run here (it cannot in this container), so no
    # dm device can ever appear: refused before anything is scanned.
    assert err.code == 928
    assert "multipathd is not running" in err.message
    assert "san-mp" in err.message
    assert fc_agent.scans() == []
    assert fc_agent.call(INFO) == []


def test_no_hba_is_a_clear_926(agent: Agent) -> None:
    """On this machine as it is: no /sys/class/fc_host at all."""
    caps = agent.call("Host.getCapabilities")
    fc = caps["driver_status"]["fibre_channel"]
    assert fc["ready"] is False
    assert any("no Fibre Channel HBA" in p for p in fc["problems"])
    err = agent.error(ATTACH, [new_vol_id(), fc_info()])
    assert err.code == 926
    assert err.data["error_class"] == "NoFibreChannelHostsFound"
    assert err.data["driver"] == "fibre_channel"
    assert agent.call(INFO) == []


MULTIPATHD = """#!/bin/sh
# multipathd as it answers when running: "show status" succeeds.
echo "multipathd $*" >> {log}
case "$*" in
"show status") echo "path checker states:"; echo "up 1" ;;
esac
exit 0
"""

MULTIPATH = """#!/bin/sh
# multipath with no map for the device (blacklisted, or not yet made).
echo "multipath $*" >> {log}
exit 0
"""


def multipath_without_maps(tmp_path: Path) -> tuple[str, Path]:
    """MULTIPATHD and MULTIPATH as the tools of those names, each call
    logged; (a PATH that finds them first, the log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "multipath.log"
    for name, text in (("multipathd", MULTIPATHD), ("multipath", MULTIPATH)):
        (bin_dir / name).write_text(text.replace("{log}", str(log)))
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}", log


def test_enforced_multipath_with_no_map_is_928_and_undone(
    agent_factory: Any, tmp_path: Path, loops: Loops
) -> None:
    """multipathd runs, but no dm map appears for the LUN: 928, undone."""
    path, log = multipath_without_maps(tmp_path)
    a = start_fc_agent(agent_factory, loops, {"PATH": path})
    vid = new_vol_id()
    err = a.error(
        ATTACH,
        {"vol_id": vid, "connection_info": fc_info(), "backend": "san-mp"},
    )
    assert err.code == 928
    assert "no multipath device" in err.message
    # The LUN was scanned in and found, then the attach was undone: the
    # SCSI device was deleted.
    assert a.scans() == ["host5: 0 3 1"]
    assert "multipathd show status" in log.read_text()
    assert "disconnecting" in a.log()
    assert a.call(INFO) == []
    assert [d.split()[0] for d in a.deleted(1)] == ["5:0:3:1"]
    assert not os.path.lexists(a.sysfs.dev / BY_PATH[5:])


OTHER_WWN = "3600a098038303053753f4a6f5a4d0000"
MAPPER = f"/dev/mapper/{LUN_WWN}"


def test_multipath_attach_exists_only_with_its_dm_device(
    agent_factory: Any, loops: Loops
) -> None:
    """exists follows the dm device's uuid in sysfs (no udev database)."""
    a = start_fc_agent(agent_factory, loops, multipathd=True)
    caps = a.call("Host.getCapabilities")
    assert caps["backends"]["san-mp"]["ready"] is True
    vid = new_vol_id()
    res = a.call(
        ATTACH,
        {"vol_id": vid, "connection_info": fc_info(), "backend": "san-mp"},
    )
    assert res["path"] == MAPPER
    assert res["attachment"]["multipath_id"] == LUN_WWN
    fs = a.sysfs
    sd = a.disk_name(BY_PATH)
    assert fakehost.maps(fs) == {LUN_WWN: "dm-0"}
    # os-brick checked the map it found through sdX's holders.
    assert "multipath -C dm-0" in a.multipath_calls()

    def exists() -> bool:
        (info,) = a.call(INFO)
        assert info["path"] == MAPPER
        return bool(info["exists"])

    assert exists() is True
    uuid = fs.virtual / "dm-0" / "dm" / "uuid"
    # A dm device at that node, but another LUN's map: not this volume.
    uuid.write_text(f"mpath-{OTHER_WWN}\n")
    assert exists() is False
    uuid.write_text(f"mpath-{LUN_WWN}\n")
    assert exists() is True
    # The map goes; /dev/mapper/<wwn> (a node with media) and the sd path
    # stay, as when udev did not see the removal: still not there.
    with fs.locked():
        fakehost.remove_map(fs, "dm-0", keep_nodes=True)
    assert os.path.exists(fs.dev / "mapper" / LUN_WWN)
    assert os.path.exists(fs.dev / sd)
    assert os.path.exists(fs.dev / BY_PATH[5:])
    assert exists() is False
    # multipathd makes the map again.
    with fs.locked():
        fakehost.add_map(fs, LUN_WWN, [sd])
    assert exists() is True
    # Kernel state outlives the daemon: the same after a restart.
    a.restart()
    assert exists() is True
    assert a.call(DETACH, [vid]) is True
    # os-brick flushed the map (multipath -f removed it), then deleted
    # the path; nothing of either is left.
    assert f"multipath -f /dev/disk/by-id/dm-uuid-mpath-{LUN_WWN}" in (
        a.multipath_calls()
    )
    assert a.deleted(1) == [f"5:0:3:1 {sd}"]
    assert fakehost.maps(fs) == {}
    for p in (f"mapper/{LUN_WWN}", "dm-0", sd, BY_PATH[5:]):
        assert not os.path.lexists(fs.dev / p), p
    assert not os.path.lexists(fs.block / "dm-0")
    assert a.call(INFO) == []


def test_attach_crashed_after_connect_rolls_back_if_multipath_now_enforced(
    agent_factory: Any, tmp_path: Path, loops: Loops
) -> None:
    """A crash after connect; the restart's backend enforces multipath.

    The attach was made through a single path (``multipath = false``)
    and killed once os-brick's answer was recorded.  The agent restarts
    with the backend's ``enforce_multipath = true`` ([brick] keeps its
    default, false): start-up must decide as a live attach would (928,
    no multipath device) and roll the attach back, not complete it.
    """
    path, _ = multipath_without_maps(tmp_path)
    a = start_fc_agent(
        agent_factory,
        loops,
        {
            "PATH": path,
            "HOSTAGENT_FAILPOINTS": "attach.after_connected=kill",
        },
    )
    vid = new_vol_id()
    with pytest.raises(OSError):  # the daemon died mid-call
        a.call(
            ATTACH,
            {"vol_id": vid, "connection_info": fc_info(), "backend": "san"},
        )
    assert a.proc is not None
    # fakehost.py passes the daemon's fate on as its exit status.
    assert a.proc.wait(30) in (-signal.SIGKILL, 256 - signal.SIGKILL)
    a.proc = None
    assert a.scans() == ["host5: 0 3 1"]
    sd = a.disk_name(BY_PATH)

    del a.env["HOSTAGENT_FAILPOINTS"]
    enforced = dict(BACKENDS["backend"])
    enforced["san"] = {
        **enforced["san"],
        "multipath": True,
        "enforce_multipath": True,
    }
    a.configure(backend=enforced)
    a.start()
    assert a.call(INFO) == []
    assert a.links() == []
    (summary,) = [x for x in a.log().splitlines() if "reconciled" in x][-1:]
    assert "rolled_back 1" in summary
    assert "completed" not in summary
    assert "multipath is enforced" in a.log()
    # The rollback disconnected the single path it found.
    assert a.deleted(1) == [f"5:0:3:1 {sd}"]
