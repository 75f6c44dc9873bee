"""Host.getCapabilities and life without os-brick."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from conftest import Agent, Loops, local_info, new_vol_id
from support import ATTACH, DETACH, INFO
from test_fc import FakeHostAgent

import hostagent


def test_capabilities_report_connector_info(agent: Agent) -> None:
    caps = agent.call("Host.getCapabilities")
    assert caps["version"] == hostagent.__version__
    assert caps["drivers"] == [
        "iscsi",
        "fibre_channel",
        "nvmeof",
        "rbd",
        "nfs",
        "local",
    ]
    info = caps["connector_info"]
    assert info["multipath"] is True
    assert info["enforce_multipath"] is False
    assert info["initiator"].startswith("iqn.")
    assert info["ip"]
    assert info["host"]


def test_multipath_flags_come_from_config(agent_factory: Any) -> None:
    a: Agent = agent_factory()
    a.configure(brick={"multipath": False, "my_ip": "192.0.2.77"})
    a.start()
    info = a.call("Host.getCapabilities")["connector_info"]
    assert info["multipath"] is False
    assert info["ip"] == "192.0.2.77"


def test_enforce_multipath_is_in_connector_info(agent_factory: Any) -> None:
    """[brick] enforce_multipath reaches the engine through connector_info.

    os-brick reports the flags as configured, whether or not multipathd
    runs (it does not here); driver_status says what that means.
    """
    a: Agent = agent_factory()
    a.configure(brick={"enforce_multipath": True})
    a.start()
    caps = a.call("Host.getCapabilities")
    info = caps["connector_info"]
    assert (info["multipath"], info["enforce_multipath"]) == (True, True)
    assert caps["driver_status"]["iscsi"]["problems"] == [
        "multipathd is not running and multipath is enforced"
    ]
    assert caps["driver_status"]["local"]["ready"] is True


# The first bytes of an ELF file, and no more: the kernel refuses to run
# it (ENOEXEC), as it refuses another architecture's binary.
UNRUNNABLE = b"\x7fELF\x02\x01\x01\x00"


def test_connector_info_left_out_when_os_brick_raises(
    agent_factory: Any, tmp_path: Path, loops: Loops
) -> None:
    """os-brick's get_connector_properties itself fails: the rest is served.

    On a host without DMI (hidden here) os-brick's NVMe-oF part asks
    ``dmidecode`` for the system uuid; it catches a missing or failing
    dmidecode, not one the kernel cannot execute, so the whole call
    raises OSError.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dmidecode").write_bytes(UNRUNNABLE)
    (bin_dir / "dmidecode").chmod(0o755)
    dev = loops.create()
    a: FakeHostAgent = agent_factory(
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
        cls=FakeHostAgent,
        spec={"hide": ["/sys/class/dmi"]},
    )
    a.start()
    caps = a.call("Host.getCapabilities")
    assert "connector_info" not in caps
    assert caps["version"] == hostagent.__version__
    assert caps["driver_status"]["local"]["ready"] is True
    line = a.wait_log("connector_info left out")
    assert "get_connector_properties failed: OSError" in line
    assert "Exec format error" in line
    # Connecting does not need it: attach and detach still work.
    vid = new_vol_id()
    assert a.call(ATTACH, [vid, local_info(dev)])["path"] == dev
    (info,) = a.call(INFO)
    assert info["exists"] is True
    assert a.call(DETACH, [vid]) is True
    # Once dmidecode can run (here: fails as on a host without DMI
    # tables), connector_info is back: nothing was cached.
    (bin_dir / "dmidecode").write_text(
        "#!/bin/sh\necho '/sys/firmware/dmi/tables/smbios_entry_point: "
        "No such file or directory' >&2\nexit 1\n"
    )
    assert "initiator" in a.call("Host.getCapabilities")["connector_info"]


def test_without_os_brick(
    agent_factory: Any, tmp_path: Path, loops: Loops
) -> None:
    """A host where os-brick cannot be imported still serves the rest."""
    broken = tmp_path / "site"
    (broken / "os_brick").mkdir(parents=True)
    (broken / "os_brick" / "__init__.py").write_text(
        "raise ImportError('No module named os_brick (test)')\n"
    )
    a: Agent = agent_factory(env={"PYTHONPATH": str(broken)})
    a.start()
    assert a.call("Host.ping") is True
    caps = a.call("Host.getCapabilities")
    assert "connector_info" not in caps
    err = a.error(
        ATTACH,
        [new_vol_id(), local_info(loops.create())],
    )
    assert err.code == 925
    assert "os_brick" in err.data["reason"]
    assert a.call(INFO) == []
    assert a.call(DETACH, [new_vol_id()]) is True
    log = a.log()
    assert "os-brick is not usable" in log
    assert "connector_info left out" in log
