"""Host.getCapabilities and life without os-brick."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import Agent, Loops, local_info, new_vol_id

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
        "ManagedVolume.attach_volume",
        [new_vol_id(), local_info(loops.create())],
    )
    assert err.code == 925
    assert "os_brick" in err.data["reason"]
    assert a.call("ManagedVolume.volumes_info") == []
    assert a.call("ManagedVolume.detach_volume", [new_vol_id()]) is None
    log = a.log()
    assert "os-brick is not usable" in log
    assert "connector_info left out" in log
