"""The host's LVM and managed volumes, through the real daemon.

The daemon is pointed at a sample /etc/lvm with LVM's own
``LVM_SYSTEM_DIR``; the real lvmconfig and lvmdevices read and change
it.  A multipath attach runs on fakehost.py's FC host (see test_fc).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent, Loops, new_vol_id
from test_fc import (
    ATTACH,
    BACKENDS,
    DETACH,
    LUN_WWN,
    MAPPER,
    fc_info,
    start_fc_agent,
)
from test_lvmcheck import (
    HOST_ENTRY,
    MPATH,
    MPATH_ENTRY,
    SAMPLES,
    devices,
    system_dir,
)

from hostagent import lvmcheck

CAPS = "Host.getCapabilities"
WARNING = "the host's LVM does not keep managed volumes out"
# MPATH_ENTRY's volume, as the FC host's LUN.
FC_ENTRY = MPATH_ENTRY.replace(MPATH, LUN_WWN)


@pytest.fixture(autouse=True)
def _need_lvm() -> None:
    if not lvmcheck.lvm_present():
        pytest.fail("LVM tests need lvm2 (contrib/install-deps.sh)")


def lvm_agent(agent_factory: Any, lvm_dir: str) -> Agent:
    a: Agent = agent_factory(env={"LVM_SYSTEM_DIR": lvm_dir})
    a.start()
    return a


def test_capabilities_say_the_filter_keeps_volumes_out(
    agent_factory: Any, tmp_path: Path
) -> None:
    a = lvm_agent(agent_factory, system_dir(tmp_path, SAMPLES["vdsm-filter"]))
    lvm = a.call(CAPS)["lvm"]
    assert lvm["keeps_managed_volumes_out"] is True, lvm
    assert lvm["filter"][-1] == "r|.*|"
    assert lvm["config_source"] == "lvmconfig"
    a.stop()
    assert WARNING not in a.log()


def test_default_lvm_is_reported_and_warned_at_start(
    agent_factory: Any, tmp_path: Path
) -> None:
    a = lvm_agent(
        agent_factory, system_dir(tmp_path, SAMPLES["debian-default"])
    )
    line = a.wait_log(WARNING)
    assert "WARNING" in line and "/dev/mapper/" in line
    lvm = a.call(CAPS)["lvm"]
    assert lvm["keeps_managed_volumes_out"] is False
    assert lvm["filter"] == ["a|.*|"]


def test_multipath_attach_drops_the_volume_from_the_devices_file(
    agent_factory: Any, loops: Loops, tmp_path: Path
) -> None:
    d = system_dir(tmp_path, SAMPLES["devicesfile"])
    path = devices(d, HOST_ENTRY, FC_ENTRY)
    a = start_fc_agent(
        agent_factory, loops, {"LVM_SYSTEM_DIR": d}, multipathd=True
    )
    listed = a.call(CAPS)["lvm"]
    assert listed["keeps_managed_volumes_out"] is True  # nothing attached
    vid = new_vol_id()
    res = a.call(
        ATTACH,
        {"vol_id": vid, "connection_info": fc_info(), "backend": "san-mp"},
    )
    assert res["attachment"]["multipath_id"] == LUN_WWN
    entries = lvmcheck.read_devices_file(str(path))
    assert entries is not None
    assert [e.idname for e in entries] == ["naa.600a0b80001234"]
    assert f"removed managed volume mpath-{LUN_WWN}" in a.log()
    lvm = a.call(CAPS)["lvm"]
    assert lvm["keeps_managed_volumes_out"] is True, lvm
    assert a.call(DETACH, [vid]) is True


def test_lvm_failure_does_not_fail_the_attach(
    agent_factory: Any, loops: Loops, tmp_path: Path
) -> None:
    d = system_dir(tmp_path, "devices {\n use_devicesfile = 1\n")
    a = start_fc_agent(
        agent_factory, loops, {"LVM_SYSTEM_DIR": d}, multipathd=True
    )
    vid = new_vol_id()
    res = a.call(
        ATTACH,
        {"vol_id": vid, "connection_info": fc_info(), "backend": "san-mp"},
    )
    assert res["path"] == MAPPER
    line = a.wait_log(f"volume {vid}: cannot keep the host's LVM off")
    assert "cannot read the LVM config" in line
    lvm = a.call(CAPS)["lvm"]
    assert lvm["keeps_managed_volumes_out"] is False
    assert "cannot read the LVM config" in lvm["why"]
    assert a.call(DETACH, [vid]) is True


def test_dm_node_gets_the_owner(
    agent_factory: Any, loops: Loops, tmp_path: Path
) -> None:
    """The node the VM uses, /dev/mapper/<wwid>, is the one owned."""
    d = system_dir(tmp_path, SAMPLES["vdsm-filter"])
    a = start_fc_agent(
        agent_factory, loops, {"LVM_SYSTEM_DIR": d}, multipathd=True
    )
    a.stop()
    rules = a.tmp / "rules"
    a.configure(
        storage={
            "device_owner": "nobody",
            "device_group": "65534",
            "udev_rules_dir": str(rules),
        },
        **BACKENDS,
    )
    a.start()
    vid, sd = new_vol_id(), new_vol_id()
    res = a.call(
        ATTACH,
        {
            "vol_id": vid,
            "connection_info": fc_info(),
            "sd_id": sd,
            "backend": "san-mp",
        },
    )
    node = a.sysfs.dev / "mapper" / LUN_WWN
    assert res["path"] == MAPPER
    st = os.stat(node)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        65534,
        65534,
        0o660,
    )
    assert os.listdir(rules) == [f"99-hostagent-managed_{sd}_{vid}.rules"]
    assert a.call(DETACH, [vid, sd]) is True
    assert os.listdir(rules) == []
