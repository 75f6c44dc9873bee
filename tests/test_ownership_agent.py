"""Device ownership through the real daemon, on real loop devices.

``[storage] device_owner``/``device_group``/``device_mode``: the node
gets them on attach (with a udev rule in ``udev_rules_dir``) and its
old owner, group and mode back on detach, also when a crash came
between the change and its record in the database.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ODD_NODE,
    Agent,
    attach_local,
    load_config,
    local_info,
    new_vol_id,
    node_state,
)
from support import ATTACH, DETACH, INFO

from hostagent.config import ConfigError
from hostagent.failpoints import FAILPOINTS_ENV

NOBODY = 65534  # nobody / nogroup on Debian and Fedora alike


def owning_agent(agent_factory: Any, **storage: Any) -> Agent:
    a: Agent = agent_factory()
    a.configure(
        storage={
            "device_owner": "nobody",
            "device_group": NOBODY,
            "device_mode": "0640",
            "udev_rules_dir": str(a.tmp / "rules"),
            **storage,
        }
    )
    return a


def rules(a: Agent) -> list[str]:
    d = a.tmp / "rules"
    return sorted(os.listdir(d)) if d.exists() else []


def owner_prev(a: Agent, vid: str) -> Any:
    with sqlite3.connect(a.db_path) as con:
        row = con.execute(
            "SELECT owner_prev FROM volume WHERE vol_id = ?", (vid,)
        ).fetchone()
    return None if row is None or row[0] is None else json.loads(row[0])


def assert_detach_gives_back(a: Agent, node: str, params: list[Any]) -> None:
    """The detach of ``params`` answers True, ``node`` is back in its
    ODD_NODE state, and no rule of the agent is left."""
    assert a.call(DETACH, params) is True
    assert node_state(node) == ODD_NODE
    assert rules(a) == []


def killed_at(a: Agent, point: str, params: list[Any]) -> None:
    """Start with ``point=kill`` and make the attach it ends."""
    a.env[FAILPOINTS_ENV] = f"{point}=kill"
    a.start()
    with pytest.raises(OSError):
        a.call(ATTACH, params)
    assert a.proc is not None
    assert a.proc.wait(30) == -signal.SIGKILL
    a.proc = None


def test_attach_sets_and_detach_restores(
    agent_factory: Any, odd_loop: str
) -> None:
    a = owning_agent(agent_factory)
    a.start()
    vid, sd = new_vol_id(), new_vol_id()
    result = a.call(ATTACH, [vid, local_info(odd_loop), sd])
    assert node_state(odd_loop) == (NOBODY, NOBODY, 0o640)
    assert rules(a) == [f"99-hostagent-managed_{sd}_{vid}.rules"]
    text = (a.tmp / "rules" / rules(a)[0]).read_text()
    assert f"chown {NOBODY}:{NOBODY} $env{{DEVNAME}}" in text
    assert "chmod 0640 $env{DEVNAME}" in text
    prev = owner_prev(a, vid)
    assert (prev["uid"], prev["gid"], prev["mode"]) == ODD_NODE
    assert prev["path"] == odd_loop
    # A repeated attach changes nothing, and keeps the first owner.
    assert a.call(ATTACH, [vid, local_info(odd_loop), sd]) == result
    assert owner_prev(a, vid) == prev
    assert_detach_gives_back(a, odd_loop, [vid, sd])


def test_without_sd_id_the_rule_is_named_by_vol_id(
    agent_factory: Any, odd_loop: str
) -> None:
    a = owning_agent(agent_factory, device_group="", device_mode="600")
    a.start()
    vid = attach_local(a, odd_loop)
    # Only the owner set: the group stays what the node had.
    assert node_state(odd_loop) == (NOBODY, ODD_NODE[1], 0o600)
    assert rules(a) == [f"99-hostagent-managed_{vid}.rules"]
    assert_detach_gives_back(a, odd_loop, [vid])


def test_unset_owner_and_group_change_nothing(
    agent_factory: Any, odd_loop: str
) -> None:
    a = owning_agent(agent_factory, device_owner="", device_group="")
    a.start()
    vid = attach_local(a, odd_loop, new_vol_id())
    assert node_state(odd_loop) == ODD_NODE
    assert rules(a) == []
    assert owner_prev(a, vid) is None
    assert a.call(DETACH, [vid]) is True
    assert node_state(odd_loop) == ODD_NODE


def test_failed_attach_gives_the_node_back(
    agent_factory: Any, odd_loop: str
) -> None:
    a = owning_agent(agent_factory)
    a.env[FAILPOINTS_ENV] = "attach.before_link=raise"
    a.start()
    vid = new_vol_id()
    e = a.error(ATTACH, [vid, local_info(odd_loop), new_vol_id()])
    # The fail point's own error: the agent has no number for it.
    assert e.code == 100
    assert node_state(odd_loop) == ODD_NODE
    assert rules(a) == []
    assert a.call(INFO) == []


def test_kill_between_grant_and_record_is_completed(
    agent_factory: Any, odd_loop: str
) -> None:
    """Killed after the chown, before owner_prev was written: the
    restart completes the attach with the state the rule recorded, and
    detach gives that back."""
    a = owning_agent(agent_factory)
    vid, sd = new_vol_id(), new_vol_id()
    killed_at(a, "attach.after_own", [vid, local_info(odd_loop), sd])
    assert node_state(odd_loop) == (NOBODY, NOBODY, 0o640)
    assert owner_prev(a, vid) is None
    a.env.pop(FAILPOINTS_ENV)
    a.start()
    assert "completed 1" in a.log()
    (info,) = a.call(INFO)
    assert (info["state"], info["sd_id"]) == ("attached", sd)
    prev = owner_prev(a, vid)
    assert (prev["uid"], prev["gid"], prev["mode"]) == ODD_NODE
    assert node_state(odd_loop) == (NOBODY, NOBODY, 0o640)
    assert_detach_gives_back(a, odd_loop, [vid, sd])


def test_kill_between_grant_and_record_is_rolled_back(
    agent_factory: Any, odd_loop: str
) -> None:
    """The same crash, and the restart cannot complete the attach: the
    roll-back gives the node back the state recorded in the rule."""
    a = owning_agent(agent_factory)
    vid, sd = new_vol_id(), new_vol_id()
    killed_at(a, "attach.after_own", [vid, local_info(odd_loop), sd])
    a.env[FAILPOINTS_ENV] = "reconcile.before_own=raise"
    a.start()
    assert "rolled_back 1" in a.log()
    assert a.call(INFO) == []
    assert node_state(odd_loop) == ODD_NODE
    assert rules(a) == []


def test_detach_after_a_config_change_still_restores(
    agent_factory: Any, odd_loop: str
) -> None:
    a = owning_agent(agent_factory)
    a.start()
    vid = attach_local(a, odd_loop)
    a.stop()
    a.configure(storage={"udev_rules_dir": str(a.tmp / "rules")})
    a.start()
    assert_detach_gives_back(a, odd_loop, [vid])


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ('device_owner = "no-such-user-here"', "no such user"),
        ('device_group = "no-such-group-here"', "no such group"),
        ('device_mode = "0999"', "not an octal mode"),
        ('device_mode = "4755"', "outside 0000..0777"),
        ('udev_rules_dir = "rules"', "absolute path"),
    ],
)
def test_bad_ownership_config(
    tmp_path: Path, storage: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path, f"[storage]\n{storage}\n")


def test_config_takes_names_and_numbers(tmp_path: Path) -> None:
    c = load_config(
        tmp_path,
        '[storage]\ndevice_owner = 0\ndevice_group = "nogroup"\n'
        "device_mode = 0o640\n",
    )
    assert c.storage.device_owner == "0"
    assert c.storage.device_group == "nogroup"
    assert c.storage.device_mode == "0640"
    assert c.owns_devices
