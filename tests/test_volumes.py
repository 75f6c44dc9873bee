"""Attach/detach with the local connector on real loop devices."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Agent,
    Loops,
    brick_calls,
    local_info,
    new_vol_id,
    private_config,
)
from support import ATTACH, DETACH, INFO

from hostagent import db
from hostagent.brick import Brick
from hostagent.client import RpcError
from hostagent.db import Database
from hostagent.errors import AgentError
from hostagent.service import VolumeService
from hostagent.service.host import Host
from hostagent.udev import Udev


def attach(agent: Agent, vol_id: str, info: dict[str, Any]) -> Any:
    return agent.call(ATTACH, {"vol_id": vol_id, "connection_info": info})


def rows(agent: Agent) -> list[tuple[Any, ...]]:
    """The volume table, read with plain sqlite3."""
    with sqlite3.connect(agent.db_path) as con:
        return con.execute(
            "SELECT vol_id, state, path FROM volume ORDER BY vol_id"
        ).fetchall()


def test_attach_info_detach(agent: Agent, loops: Loops) -> None:
    dev = loops.create()
    vid = new_vol_id()
    result = attach(agent, vid, local_info(dev))
    assert result == {
        "vol_id": vid,
        "path": dev,
        "attachment": {"type": "local", "path": dev},
        "managed_path": str(agent.run_dir / "volumes" / vid),
    }
    assert os.readlink(result["managed_path"]) == dev
    (info,) = agent.call(INFO)
    assert info == {
        "vol_id": vid,
        "connection_info": local_info(dev),
        "path": dev,
        "attachment": {"type": "local", "path": dev},
        "exists": True,
        "state": "attached",
        "last_error": None,
        "backend": None,
        "sd_id": None,
        # The boot it was attached in (a reboot makes it stale).
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "this_boot": True,
        "attempts": 0,
    }
    assert rows(agent) == [(vid, "attached", dev)]
    assert agent.call(DETACH, {"vol_id": vid}) is True
    assert agent.call(INFO) == []
    assert rows(agent) == []
    assert agent.links() == []


def test_volumes_info_with_and_without_ids(agent: Agent, loops: Loops) -> None:
    vids = sorted(new_vol_id() for _ in range(3))
    for vid in vids:
        attach(agent, vid, local_info(loops.create()))
    assert [v["vol_id"] for v in agent.call(INFO)] == vids
    assert [v["vol_id"] for v in agent.call(INFO, {"vol_ids": []})] == vids
    picked = agent.call(INFO, {"vol_ids": [vids[2], vids[0]]})
    assert [v["vol_id"] for v in picked] == [vids[0], vids[2]]
    assert agent.call(INFO, {"vol_ids": [new_vol_id()]}) == []


def test_exists_turns_false_when_the_device_goes(
    agent: Agent, loops: Loops
) -> None:
    dev = loops.create()
    vid = new_vol_id()
    attach(agent, vid, local_info(dev))
    assert agent.call(INFO, [[vid]])[0]["exists"] is True
    loops.detach(dev)
    (info,) = agent.call(INFO, [[vid]])
    assert info["exists"] is False
    assert info["state"] == "attached"
    # Detaching a volume whose device is already gone is not an error.
    assert agent.call(DETACH, [vid]) is True
    assert rows(agent) == []


def test_reattach_same_info_is_idempotent(agent: Agent, loops: Loops) -> None:
    dev = loops.create()
    vid = new_vol_id()
    first = attach(agent, vid, local_info(dev))
    os.unlink(first["managed_path"])  # e.g. /run was emptied by a reboot
    assert attach(agent, vid, local_info(dev)) == first
    assert os.readlink(first["managed_path"]) == dev
    assert len(rows(agent)) == 1


def test_reattach_different_info_is_929(agent: Agent, loops: Loops) -> None:
    dev, other = loops.create(), loops.create()
    vid = new_vol_id()
    attach(agent, vid, local_info(dev))
    with pytest.raises(RpcError) as e:
        attach(agent, vid, local_info(other))
    assert e.value.code == 929
    assert vid in e.value.message
    assert rows(agent) == [(vid, "attached", dev)]


def test_same_device_as_two_volumes_is_refused(
    agent: Agent, loops: Loops
) -> None:
    dev = loops.create()
    first, second = new_vol_id(), new_vol_id()
    attach(agent, first, local_info(dev))
    with pytest.raises(RpcError) as e:
        attach(agent, second, local_info(dev))
    assert e.value.code == 927
    assert first in e.value.message
    assert [r[0] for r in rows(agent)] == [first]
    assert agent.links() == [first]


def test_detach_unknown_volume_succeeds(agent: Agent) -> None:
    assert agent.call(DETACH, {"vol_id": new_vol_id()}) is True


def test_data_survives_restart(agent: Agent, loops: Loops) -> None:
    dev = loops.create()
    vid = new_vol_id()
    attach(agent, vid, local_info(dev))
    before = agent.call(INFO)
    agent.restart()
    assert agent.call(INFO) == before
    agent.kill()
    agent.start()
    assert agent.call(INFO) == before
    agent.call(DETACH, [vid])
    assert agent.call(INFO) == []


def test_unknown_driver_is_2009(agent: Agent) -> None:
    err = agent.error(
        ATTACH,
        [new_vol_id(), {"driver_volume_type": "floppy", "data": {}}],
    )
    assert err.code == 2009
    assert "floppy" in err.message
    assert rows(agent) == []


def test_driver_not_allowed_by_config_is_2009(
    agent_factory: Any, loops: Loops
) -> None:
    a: Agent = agent_factory()
    a.configure(brick={"drivers": ["iscsi"]})
    a.start()
    err = a.error(ATTACH, [new_vol_id(), local_info(loops.create())])
    assert err.code == 2009
    assert "allowed: iscsi" in err.message


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        ("local", "connection_info must be an object"),
        ([], "connection_info must be an object"),
        ({"data": {}}, "connection_info.driver_volume_type is required"),
        ({"driver_volume_type": "local"}, "connection_info.data is required"),
        (
            {"driver_volume_type": "local", "data": "x"},
            "connection_info.data must be an object",
        ),
        (
            {"driver_volume_type": 3, "data": {}},
            "driver_volume_type must be a string",
        ),
    ],
)
def test_bad_connection_info_is_invalid_params(
    agent: Agent, info: Any, fragment: str
) -> None:
    err = agent.error(
        ATTACH, {"vol_id": new_vol_id(), "connection_info": info}
    )
    assert err.code == -32602
    assert fragment in err.message
    assert rows(agent) == []


def test_connector_error_is_926_with_class_and_leaves_nothing(
    agent: Agent,
) -> None:
    vid = new_vol_id()
    err = agent.error(
        ATTACH, [vid, {"driver_volume_type": "local", "data": {}}]
    )
    assert err.code == 926
    assert err.data["error_class"] == "ValueError"
    assert "device_path" in err.data["error"]
    assert rows(agent) == []
    assert agent.links() == []
    # The connector refused the data: it connected nothing, and there is
    # nothing to disconnect.
    assert brick_calls(agent, vid) == ["connect"]


def test_missing_device_is_926_and_leaves_nothing(
    agent: Agent, tmp_path: Path
) -> None:
    vid = new_vol_id()
    err = agent.error(ATTACH, [vid, local_info(str(tmp_path / "nothing"))])
    assert err.code == 926
    assert err.data["error_class"] == "VolumeDeviceNotFound"
    assert rows(agent) == []
    assert agent.links() == []
    # A connector error past the data: whatever it did is disconnected.
    assert brick_calls(agent, vid) == ["connect", "disconnect"]


def test_db_file_is_private_wal_and_versioned(agent: Agent) -> None:
    mode = stat.S_IMODE(agent.db_path.stat().st_mode)
    assert mode == 0o600
    with sqlite3.connect(agent.db_path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert con.execute(
            "SELECT version FROM schema_version"
        ).fetchall() == [(db.SCHEMA_VERSION,)]


def test_socket_is_group_only(agent: Agent) -> None:
    mode = stat.S_IMODE(os.stat(agent.socket).st_mode)
    assert mode == 0o660


def test_secrets_never_come_back(agent: Agent, loops: Loops) -> None:
    dev = loops.create()
    vid = new_vol_id()
    secret = "Sup3rS3cretCHAPvalue"
    info = local_info(dev, auth_password=secret, auth_username="chapuser1")
    attach(agent, vid, info)
    (got,) = agent.call(INFO)
    assert got["connection_info"]["data"]["auth_password"] == "***"
    assert got["connection_info"]["data"]["auth_username"] == "***"
    # Different info (here: another password) is still 929, and the
    # error does not echo what was sent.
    info2 = local_info(dev, auth_password="0therS3cret", auth_username="u")
    err = agent.error(ATTACH, [vid, info2])
    assert err.code == 929
    assert secret not in str(err.data) + err.message
    # The DB keeps the real values: detach needs them.
    with sqlite3.connect(agent.db_path) as con:
        (stored,) = con.execute("SELECT connection_info FROM volume")
    assert secret in stored[0] and "chapuser1" in stored[0]
    agent.call(DETACH, [vid])
    log = agent.log()
    assert secret not in log and "chapuser1" not in log
    assert "0therS3cret" not in log
    assert rows(agent) == []


# A target name of this run's own: node records are host-wide, and other
# runs on the same host may be trying dead portals at the same time.
DEAD_IQN = f"iqn.2026-11.test.hostagent:nothing-{uuid.uuid4().hex[:12]}"
DEAD_PORTAL = {
    "driver_volume_type": "iscsi",
    "data": {
        "target_portal": "127.0.0.1:3260",
        "target_iqn": DEAD_IQN,
        "target_lun": 0,
    },
}


def no_iscsi_leftovers() -> bool:
    """No node record of the dead portal's target remains."""
    return not (Path("/etc/iscsi/nodes") / DEAD_IQN).exists()


def test_iscsi_to_dead_portal_is_926_and_leaves_nothing(agent: Agent) -> None:
    vid = new_vol_id()
    started = time.monotonic()
    err = agent.error(ATTACH, [vid, DEAD_PORTAL])
    assert time.monotonic() - started < 60
    assert err.code == 926
    assert err.data["driver"] == "iscsi"
    assert err.data["error_class"] == "TargetPortalNotFound"
    assert rows(agent) == []
    assert agent.links() == []
    assert no_iscsi_leftovers()
    # os-brick's external locks live under state_dir, not /var/lib/cinder.
    locks = [p.name for p in (agent.state_dir / "locks").iterdir()]
    assert any("connect_volume" in name for name in locks), locks


def test_ping_is_fast_while_attach_runs_in_os_brick(
    agent_factory: Any, loops: Loops
) -> None:
    """Pings answer in < 100 ms while an attach is inside os-brick.

    The fail point pauses the worker thread inside ``Brick.connect``,
    after connect_volume and before it returns, as a slow iSCSI login
    would; the log shows every ping answered while it was there.
    """
    agent: Agent = agent_factory(
        env={"HOSTAGENT_FAILPOINTS": "brick.after_connect_volume=sleep:2"}
    )
    agent.start()
    dev = loops.create()
    vid = new_vol_id()
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["result"] = attach(agent, vid, local_info(dev))

    t = threading.Thread(target=run)
    t.start()
    agent.wait_log("fail point brick.after_connect_volume: sleep:2")
    latencies = []
    with agent.client() as c:
        for _ in range(10):
            started = time.monotonic()
            assert c.call("Host.ping") is True
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
    inside = t.is_alive()
    t.join(30)
    assert inside, "the attach left os-brick before the pings were done"
    assert max(latencies) < 0.1, latencies
    assert outcome["result"]["path"] == dev
    # In log order: into os-brick, the pings, then out of it.
    lines = agent.log().splitlines()
    entered = next(
        i for i, x in enumerate(lines) if "brick.after_connect_volume" in x
    )
    done = next(
        i for i, x in enumerate(lines) if f"attached volume {vid}" in x
    )
    pings = [i for i, x in enumerate(lines) if "Host.ping done" in x]
    assert len([i for i in pings if entered < i < done]) == len(latencies)
    assert agent.call(DETACH, [vid]) is True


# What os-brick's iSCSI connector answers for a multipath attach: the
# WWID as multipath_id (the dm map is /dev/mapper/<WWID>).  This kernel
# has no device-mapper, so the map never appears.
MPATH_WWID = "36001405deadbeefdeadbeefdeadbeef0"


def wait_for_device_error(
    tmp_path: Path, enforce: bool, info: dict[str, Any]
) -> AgentError:
    """The error of VolumeService.wait_for_device for os-brick's ``info``."""
    cfg = private_config(
        tmp_path,
        f"multipath = true\nenforce_multipath = {str(enforce).lower()}",
    )
    brick = Brick(cfg.brick, cfg.lock_dir, tmp_path / "mnt")
    service = VolumeService(Host(cfg, Database(cfg.db_path), brick, Udev()))
    service.device_wait = 0.3

    async def wait() -> str:
        return await service.wait_for_device("iscsi", info)

    try:
        with pytest.raises(AgentError) as e:
            asyncio.run(wait())
    finally:
        service.host.workers.shutdown()
    return e.value


def test_enforced_multipath_map_that_never_appears_is_928(
    tmp_path: Path, loops: Loops
) -> None:
    """os-brick named a multipath map that never showed up: 928.

    The single-path device (a loop device standing for the SCSI disk) is
    there, but multipath is required and there is no multipath device.
    """
    err = wait_for_device_error(
        tmp_path, True, {"path": loops.create(), "multipath_id": MPATH_WWID}
    )
    assert err.code == 928
    assert "no multipath device appeared" in err.message
    assert f"mpath-{MPATH_WWID}" in err.message
    assert err.data == {"driver": "iscsi", "multipath_id": MPATH_WWID}


def test_unenforced_multipath_map_that_never_appears_is_926(
    tmp_path: Path,
) -> None:
    err = wait_for_device_error(
        tmp_path,
        False,
        {"path": "/dev/disk/by-id/nothing", "multipath_id": MPATH_WWID},
    )
    assert err.code == 926
    assert f"/dev/mapper/{MPATH_WWID} did not appear" in err.message
