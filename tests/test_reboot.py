"""Re-attach after a reboot or a fence, with real loop devices.

The case vdsm users hit (oVirt/vdsm issue 433): the database outlives
/run, the device goes away (or comes back under the same name), and the
engine attaches the volume again with the same connection info.  The
agent must never answer success with a dead path, and must succeed with
a live link once the device is back.  The connection info names the
device through a symlink, as /dev/disk/by-id names a LUN: after the
"reboot" it points at whatever loop device the file got this time.

While the device is gone, the name points at a block node the kernel
has no device for, not at the detached loop device: on a machine where
other tests run ``losetup --find`` a freed loop number is soon someone
else's disk, and the test would see that one.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import uuid
from pathlib import Path
from typing import Any

from conftest import Agent, Loops, local_info, new_vol_id
from support import ATTACH, DETACH, INFO, create_loop

BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def row(agent: Agent, vid: str) -> tuple[Any, ...]:
    """state, path, last_error, boot_id of ``vid``'s row (sqlite3)."""
    with sqlite3.connect(agent.db_path) as con:
        return con.execute(
            "SELECT state, path, last_error, boot_id FROM volume "
            "WHERE vol_id = ?",
            (vid,),
        ).fetchone()


def by_id(tmp_path: Path, dev: str) -> Path:
    """A stable name for ``dev``, like /dev/disk/by-id/..."""
    d = tmp_path / "by-id"
    d.mkdir(exist_ok=True)
    link = d / "disk-1"
    tmp = d / ".disk-1"
    tmp.symlink_to(dev)
    os.replace(tmp, link)
    return link


def gone(tmp_path: Path, loops: Loops, dev: str) -> None:
    """The device goes (loop detached); its name leads to no device."""
    dead = tmp_path / "dead-node"
    if not dead.exists():
        os.mknod(dead, 0o600 | stat.S_IFBLK, os.makedev(7, 1048510))
    by_id(tmp_path, str(dead))
    loops.detach(dev)


def back(loops: Loops, dev: str) -> str:
    """The device comes back: its file on whatever loop device is free."""
    backing = loops.backing(dev)
    again = create_loop(backing)
    loops.devices.append(again)
    loops.files[again] = backing
    return again


def reboot(agent: Agent) -> None:
    """Stop the agent and empty run_dir, as a reboot empties /run."""
    agent.stop()
    shutil.rmtree(agent.run_dir)


def test_reattach_after_reboot_device_gone_then_back(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    dev = loops.create()
    name = by_id(tmp_path, dev)
    info = local_info(str(name))
    vid = new_vol_id()
    agent.call(ATTACH, {"vol_id": vid, "connection_info": info})
    managed = agent.run_dir / "volumes" / vid
    assert os.readlink(managed) == str(name)
    assert row(agent, vid) == ("attached", str(name), None, BOOT_ID)

    reboot(agent)
    gone(tmp_path, loops, dev)
    agent.start()
    # Reconcile keeps the row but never links to a missing device.
    assert agent.links() == []
    assert "device_missing 1" in agent.wait_log("reconciled 1 volume")
    [shown] = agent.call(INFO)
    assert (shown["exists"], shown["state"]) == (False, "attached")

    # The same-info re-attach runs the attach again: the device is dead,
    # so it fails (926), and the row says why.
    err = agent.error(ATTACH, {"vol_id": vid, "connection_info": info})
    assert err.code == 926, err
    assert err.data["reason"] == "no_media"
    state, path, last_error, boot = row(agent, vid)
    assert (state, path, boot) == ("attached", str(name), BOOT_ID)
    assert last_error.startswith("re-attach failed: ")
    assert "no media" in last_error
    assert agent.links() == []
    [shown] = agent.call(INFO)
    assert shown["exists"] is False
    assert shown["last_error"] == last_error

    # The storage brings the device back (here: the same file on
    # whatever loop device is free; the stable name follows it).
    again = back(loops, dev)
    by_id(tmp_path, again)
    result = agent.call(ATTACH, {"vol_id": vid, "connection_info": info})
    assert result["path"] == str(name)
    assert os.readlink(managed) == str(name)
    assert os.path.realpath(managed) == again
    [shown] = agent.call(INFO)
    assert (shown["exists"], shown["last_error"]) == (True, None)
    assert (shown["boot_id"], shown["this_boot"]) == (BOOT_ID, True)
    # Live now: the next same-info re-attach is idempotent.
    assert agent.call(ATTACH, {"vol_id": vid, "connection_info": info}) == (
        result
    )
    assert "attaching it again" in agent.log()
    agent.call(DETACH, [vid])
    assert agent.call(INFO) == []


def test_reconcile_removes_a_link_to_a_missing_device(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    """Without a reboot too: a link whose device went is removed."""
    dev = loops.create()
    name = by_id(tmp_path, dev)
    vid = new_vol_id()
    info = local_info(str(name))
    agent.call(ATTACH, {"vol_id": vid, "connection_info": info})
    agent.stop()
    gone(tmp_path, loops, dev)
    agent.start()
    assert agent.links() == []
    assert f"removed symlink {agent.run_dir / 'volumes' / vid}" in agent.log()
    by_id(tmp_path, back(loops, dev))
    agent.call(ATTACH, {"vol_id": vid, "connection_info": info})
    assert agent.links() == [vid]
    agent.call(DETACH, [vid])


def test_row_from_an_earlier_boot_is_attached_again(
    agent: Agent, loops: Loops
) -> None:
    """A device number of an earlier boot may name another device now:
    a same-info re-attach of such a row runs the attach again."""
    dev = loops.create()
    vid = new_vol_id()
    info = local_info(dev)
    agent.call(ATTACH, {"vol_id": vid, "connection_info": info})
    reboot(agent)
    earlier = str(uuid.uuid4())
    with sqlite3.connect(agent.db_path) as con:
        con.execute("UPDATE volume SET boot_id = ?", (earlier,))
    agent.start()
    [shown] = agent.call(INFO)
    assert (shown["boot_id"], shown["this_boot"]) == (earlier, False)
    # Reconcile links it (its device is there) ...
    assert agent.links() == [vid]
    result = agent.call(ATTACH, {"vol_id": vid, "connection_info": info})
    assert result["path"] == dev
    # ... and the re-attach ran the attach again, recording this boot.
    assert agent.log().count(f"volume {vid}: connecting") == 2
    assert row(agent, vid) == ("attached", dev, None, BOOT_ID)
    [shown] = agent.call(INFO)
    assert shown["this_boot"] is True
    agent.call(DETACH, [vid])
