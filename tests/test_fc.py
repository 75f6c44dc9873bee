"""Fibre Channel through os-brick's FC connector, on a fake FC host.

There is no HBA here.  ``fakehost.py`` runs the real daemon in a private
mount namespace whose /sys/class has two fake HBAs (one Online, one
Linkdown) and a fake kernel that answers scan-file writes by making the
LUN appear under /dev/disk/by-path (backed by a real loop device).  The
tests check what os-brick, driven by the agent, wrote to the scan files,
what it reported and how the agent answered.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent, Loops, need, new_vol_id

FAKEHOST = str(Path(__file__).with_name("fakehost.py"))
ATTACH = "ManagedVolume.attach_volume"
DETACH = "ManagedVolume.detach_volume"
INFO = "ManagedVolume.volumes_info"

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


def fc_spec(device: str) -> dict[str, Any]:
    return {
        "scsi_id": True,
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
    agent_factory: Any, loops: Loops, env: dict[str, str] | None = None
) -> FakeHostAgent:
    """An agent on a host with the two HBAs of :func:`fc_spec`."""
    need("unshare")
    a: FakeHostAgent = agent_factory(
        "fc", env, cls=FakeHostAgent, spec=fc_spec(loops.create())
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
    assert fc_agent.call(DETACH, [vid]) is None
    assert fc_agent.call(INFO) == []


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


def test_enforced_multipath_with_no_map_is_928_and_undone(
    agent_factory: Any, tmp_path: Path, loops: Loops
) -> None:
    """multipathd runs, but no dm map appears for the LUN: 928, undone."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "multipath.log"
    for name, text in (("multipathd", MULTIPATHD), ("multipath", MULTIPATH)):
        (bin_dir / name).write_text(text.replace("{log}", str(log)))
        (bin_dir / name).chmod(0o755)
    a = start_fc_agent(
        agent_factory, loops, {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    )
    vid = new_vol_id()
    err = a.error(
        ATTACH,
        {"vol_id": vid, "connection_info": fc_info(), "backend": "san-mp"},
    )
    assert err.code == 928
    assert "no multipath device" in err.message
    # The LUN was scanned in and found, then the attach was undone.
    assert a.scans() == ["host5: 0 3 1"]
    assert "multipathd show status" in log.read_text()
    assert "disconnecting" in a.log()
    assert a.call(INFO) == []
