"""ManagedVolume.changed notifications and ManagedVolume.extend_volume.

Real kernel uevents: a loop device losing its backing file
(``losetup -d``) and getting it back (``losetup DEV FILE``) is what a
SAN LUN going away and coming back looks like to the agent.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import pytest
from conftest import (
    Agent,
    Loops,
    attach_loop,
    local_info,
    new_vol_id,
    next_notification,
)
from support import ATTACH, DETACH, EXTEND, INFO

MiB = 1024 * 1024


def test_device_gone_and_back_is_notified(agent: Agent, loops: Loops) -> None:
    dev, vid = attach_loop(agent, loops)
    with agent.client() as sub, agent.client() as other:
        assert sub.call("Host.subscribe") is True
        loops.detach(dev)
        assert next_notification(sub) == {
            "jsonrpc": "2.0",
            "method": "ManagedVolume.changed",
            "params": {"vol_id": vid, "exists": False, "path": dev},
        }
        assert agent.call(INFO, [[vid]])[0]["exists"] is False
        loops.reattach(dev)
        assert next_notification(sub)["params"] == {
            "vol_id": vid,
            "exists": True,
            "path": dev,
        }
        assert agent.call(INFO, [[vid]])[0]["exists"] is True
        # The connection that did not subscribe got nothing.
        assert other.call("Host.ping") is True
        assert other.notifications == []
        # Unsubscribed: no more notifications.
        assert sub.call("Host.unsubscribe") is True
        assert sub.call("Host.unsubscribe") is False
        loops.detach(dev)
        deadline = time.monotonic() + 10
        while agent.call(INFO, [[vid]])[0]["exists"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # any notification would be sent by now
        assert sub.call("Host.ping") is True
        assert sub.notifications == []
    assert "is gone" in agent.log()
    assert "is back" in agent.log()


def test_every_subscriber_is_told_and_closed_ones_are_dropped(
    agent: Agent, loops: Loops
) -> None:
    dev, vid = attach_loop(agent, loops)
    gone = agent.client()
    assert gone.call("Host.subscribe") is True
    gone.close()
    with agent.client() as a, agent.client() as b:
        assert a.call("Host.subscribe") is True
        assert b.call("Host.subscribe") is True
        loops.detach(dev)
        for c in (a, b):
            assert next_notification(c)["params"]["vol_id"] == vid
    assert agent.alive()
    assert agent.call("Host.ping") is True


def test_detached_volume_and_unmanaged_devices_are_quiet(
    agent: Agent, loops: Loops
) -> None:
    dev, stranger, kept = loops.create(), loops.create(), loops.create()
    vid, kept_id = new_vol_id(), new_vol_id()
    agent.call(ATTACH, [vid, local_info(dev)])
    agent.call(ATTACH, [kept_id, local_info(kept)])
    with agent.client() as sub:
        sub.call("Host.subscribe")
        agent.call(DETACH, [vid])
        loops.detach(dev)  # no longer managed
        loops.detach(stranger)  # never managed
        loops.detach(kept)  # managed: the only notification
        n = next_notification(sub)
        assert n["params"] == {
            "vol_id": kept_id,
            "exists": False,
            "path": kept,
        }
        time.sleep(0.3)
        assert sub.call("Host.ping") is True
        assert sub.notifications == []


def test_a_volume_gone_while_the_agent_was_down_is_reported_once_back(
    agent: Agent, loops: Loops
) -> None:
    """State is noted at start; a later return is news, the absence not."""
    dev, vid = attach_loop(agent, loops)
    agent.stop()
    loops.detach(dev)
    agent.start()
    with agent.client() as sub:
        sub.call("Host.subscribe")
        loops.reattach(dev)
        assert next_notification(sub)["params"] == {
            "vol_id": vid,
            "exists": True,
            "path": dev,
        }


def test_extend_returns_the_new_size(agent: Agent, loops: Loops) -> None:
    dev = loops.create(size_mb=16)
    vid = new_vol_id()
    agent.call(ATTACH, [vid, local_info(dev)])
    assert agent.call(EXTEND, [vid]) == 16 * MiB
    os.truncate(loops.backing(dev), 40 * MiB)
    # The file grew; the loop device keeps its size until told.
    assert agent.call(EXTEND, {"vol_id": vid}) == 16 * MiB
    subprocess.run(["losetup", "-c", dev], check=True)
    assert agent.call(EXTEND, {"vol_id": vid}) == 40 * MiB
    assert "extended: 41943040 bytes" in agent.log()


def test_extend_errors(agent: Agent, loops: Loops) -> None:
    err = agent.error(EXTEND, [new_vol_id()])
    assert err.code == -32602
    assert "not attached" in err.message
    assert agent.error(EXTEND, ["nope"]).code == -32602
    dev, vid = attach_loop(agent, loops)
    loops.detach(dev)
    err = agent.error(EXTEND, [vid])
    # No media: the connector would say 0 bytes; the agent says why.
    assert err.code == 926
    assert err.data["operation"] == "extend_volume"
    assert err.data["error_class"] == "VolumeDeviceNotFound"
    assert agent.call(INFO, [[vid]])[0]["state"] == "attached"


@pytest.mark.parametrize("method", ["Host.subscribe", "Host.unsubscribe"])
def test_subscribe_takes_no_params(agent: Agent, method: str) -> None:
    assert agent.error(method, {"topic": "all"}).code == -32602


def test_discover_describes_the_notification(agent: Agent) -> None:
    doc = agent.call("rpc.discover")
    (n,) = doc["x-notifications"]
    assert n["name"] == "ManagedVolume.changed"
    assert sorted(n["params"]["properties"]) == [
        "detached",
        "exists",
        "path",
        "vol_id",
    ]


class _Peer:
    """A connection as the transport gives it to the API (notify, describe)."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.notify: Any = self.got.append

    def describe(self) -> str:
        return "test peer"


def test_events_state_machine_in_process() -> None:
    """Transitions only; a change during a check gets its own check."""
    import asyncio

    from hostagent import events as ev

    state = {"v1": True}
    checking = asyncio.Event()
    release = asyncio.Event()

    async def lister() -> list[dict[str, Any]]:
        seen = dict(state)  # what the devices were when looked at
        if not checking.is_set():
            checking.set()
            await release.wait()
        return [
            {
                "vol_id": v,
                "exists": e,
                "path": f"/dev/{v}",
                "state": "attached",
            }
            for v, e in seen.items()
        ]

    async def scenario() -> list[dict[str, Any]]:
        e = ev.Events(lister)
        peer, closed = _Peer(), _Peer()
        e.subscribe(peer)
        e.subscribe(closed)
        closed.notify = None  # its connection ended
        e.track("v1", True, "/dev/v1")
        task = e.device_changed()
        await checking.wait()  # the first check is listing
        state["v1"] = False  # the device goes meanwhile...
        assert e.device_changed() is task  # ...its uevent: checked again
        release.set()
        await task
        assert e.subscribers == 1  # the closed one was dropped
        assert await e.check() == 0  # no change since: nothing sent
        return peer.got

    got = asyncio.run(scenario())
    assert [m["params"] for m in got] == [
        {"vol_id": "v1", "exists": False, "path": "/dev/v1"}
    ]
