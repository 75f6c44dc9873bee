"""vdsm's ManagedVolume semantics: sd_id, positional order, detach true.

Through the real daemon on real loop devices, with the params as
ovirt-engine sends them (``attach_volume(vol_id, connection_info,
sd_id)``, ``detach_volume(vol_id, sd_id)``).
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from typing import Any

import pytest
from conftest import Agent, Loops, attach_loop, local_info, new_vol_id

ATTACH = "ManagedVolume.attach_volume"
DETACH = "ManagedVolume.detach_volume"
INFO = "ManagedVolume.volumes_info"


def managed(agent: Agent) -> list[str]:
    """Names in ``run_dir/managedvolumes``."""
    d = agent.run_dir / "managedvolumes"
    return sorted(os.listdir(d)) if d.exists() else []


def stored_sd_id(agent: Agent, vid: str) -> Any:
    with sqlite3.connect(agent.db_path) as con:
        return con.execute(
            "SELECT sd_id FROM volume WHERE vol_id = ?", (vid,)
        ).fetchone()


def test_positional_attach_with_sd_id(agent: Agent, loops: Loops) -> None:
    dev = loops.create()
    vid, sd = new_vol_id(), new_vol_id()
    result = agent.call(ATTACH, [vid, local_info(dev), sd])
    link = agent.run_dir / "managedvolumes" / f"{sd}_{vid}"
    assert result == {
        "vol_id": vid,
        "path": dev,
        "attachment": {"type": "local", "path": dev},
        "managed_path": str(link),
    }
    assert os.readlink(link) == dev
    assert agent.links() == []
    assert stored_sd_id(agent, vid) == (sd,)
    (info,) = agent.call(INFO)
    assert info["sd_id"] == sd
    # Idempotent re-attach: same info, same sd_id, same answer; the
    # link comes back if /run lost it.
    os.unlink(link)
    assert agent.call(ATTACH, [vid, local_info(dev), sd]) == result
    assert os.readlink(link) == dev
    assert agent.call(DETACH, [vid, sd]) is True
    assert managed(agent) == []
    assert agent.call(INFO) == []


def test_named_params_and_without_sd_id(agent: Agent, loops: Loops) -> None:
    dev = loops.create()
    vid, sd = new_vol_id(), new_vol_id()
    params = {"vol_id": vid, "connection_info": local_info(dev), "sd_id": sd}
    result = agent.call(ATTACH, params)
    assert result["managed_path"].endswith(f"/managedvolumes/{sd}_{vid}")
    assert agent.call(DETACH, {"vol_id": vid, "sd_id": sd}) is True
    # Without sd_id: the link is <run_dir>/volumes/<vol_id>, as before.
    result = agent.call(
        ATTACH, {"vol_id": vid, "connection_info": local_info(dev)}
    )
    assert result["managed_path"] == str(agent.run_dir / "volumes" / vid)
    assert agent.call(INFO)[0]["sd_id"] is None
    assert agent.call(DETACH, [vid]) is True
    assert agent.links() == [] and managed(agent) == []


def test_detach_without_sd_id_finds_the_managed_link(
    agent: Agent, loops: Loops
) -> None:
    sd = new_vol_id()
    _, vid = attach_loop(agent, loops, sd)
    assert managed(agent) == [f"{sd}_{vid}"]
    assert agent.call(DETACH, [vid]) is True
    assert managed(agent) == []


def test_reattach_with_other_sd_id_is_929(agent: Agent, loops: Loops) -> None:
    sd = new_vol_id()
    dev, vid = attach_loop(agent, loops, sd)
    e = agent.error(ATTACH, [vid, local_info(dev), new_vol_id()])
    assert e.code == 929
    assert e.data == {"vol_id": vid, "sd_id": sd}
    e = agent.error(ATTACH, [vid, local_info(dev)])
    assert e.code == 929
    # Detach naming another storage domain is refused, nothing changes.
    e = agent.error(DETACH, [vid, new_vol_id()])
    assert e.code == -32602
    assert e.data == {"param": "sd_id", "sd_id": sd}
    assert [i["state"] for i in agent.call(INFO)] == ["attached"]
    assert agent.call(DETACH, [vid, sd]) is True


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-uuid",
        str(uuid.uuid4()).upper(),
        str(uuid.uuid4()).replace("-", ""),
        "../../etc",
        "",
        7,
        {"a": 1},
    ],
)
def test_bad_sd_id_is_32602(agent: Agent, loops: Loops, bad: Any) -> None:
    dev = loops.create()
    vid = new_vol_id()
    e = agent.error(ATTACH, [vid, local_info(dev), bad])
    assert e.code == -32602
    assert e.data["param"] == "sd_id"
    e = agent.error(DETACH, {"vol_id": vid, "sd_id": bad})
    assert e.code == -32602
    assert agent.call(INFO) == []
    assert managed(agent) == []


def test_backend_is_by_name_only(agent: Agent, loops: Loops) -> None:
    dev = loops.create()
    vid = new_vol_id()
    # A backend name in third place is an sd_id, and not a UUID.
    e = agent.error(ATTACH, [vid, local_info(dev), "gold"])
    assert e.code == -32602
    assert e.data["param"] == "sd_id"
    # Nor in fourth place.
    e = agent.error(ATTACH, [vid, local_info(dev), new_vol_id(), "gold"])
    assert e.code == -32602
    assert agent.call(INFO) == []


def test_managed_links_survive_restart_and_are_repaired(
    agent: Agent, loops: Loops
) -> None:
    sd = new_vol_id()
    dev, vid = attach_loop(agent, loops, sd)
    link = agent.run_dir / "managedvolumes" / f"{sd}_{vid}"
    stray = agent.run_dir / "managedvolumes" / f"{sd}_{new_vol_id()}"
    os.symlink(dev, stray)
    os.unlink(link)
    agent.restart()
    assert managed(agent) == [f"{sd}_{vid}"]
    assert os.readlink(link) == dev
    assert "link_created 1" in agent.log()
    assert "link_removed 1" in agent.log()
    assert agent.call(DETACH, [vid, sd]) is True


def test_discover_documents_sd_id(agent: Agent) -> None:
    doc = agent.call("rpc.discover")
    methods = {m["name"]: m for m in doc["methods"]}
    attach = [p["name"] for p in methods[ATTACH]["params"]]
    assert attach == ["vol_id", "connection_info", "sd_id", "backend"]
    detach = [p["name"] for p in methods[DETACH]["params"]]
    assert detach == ["vol_id", "sd_id", "force"]
    assert methods[DETACH]["result"]["schema"] == {"type": "boolean"}
