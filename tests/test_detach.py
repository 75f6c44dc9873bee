"""Detach that finishes safely: held devices, force, background retries.

The real daemon over its socket, real loop devices attached with the
``local`` connector: a child process holding the loop device open is
what a running VM holding its disk looks like to the agent.  Fail
points in the disconnect stand for a storage command that fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    HOSTAGENTD,
    Agent,
    Loops,
    attach_loop,
    new_vol_id,
    next_notification,
)
from support import DETACH, INFO

FAIL_ONCE = "brick.before_disconnect_volume=1*raise"


@pytest.fixture
def holder() -> Iterator[Any]:
    """Start processes that keep a device open; killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(dev: str, comm: str = "") -> subprocess.Popen[bytes]:
        # comm: the name the kernel shows (prctl PR_SET_NAME), as a
        # udev worker's "(udev-worker)".
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import ctypes, sys, time\n"
                "if sys.argv[2]:\n"
                "    ctypes.CDLL(None).prctl(15, sys.argv[2].encode())\n"
                "f = open(sys.argv[1], 'rb')\n"
                "print('open', flush=True)\n"
                "time.sleep(120)\n",
                dev,
                comm,
            ],
            stdout=subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"open\n"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_held_device_is_refused_with_its_holder(
    agent: Agent, loops: Loops, holder: Any
) -> None:
    """932 names the holder's pid; row, link and device stay."""
    dev, vid = attach_loop(agent, loops)
    proc = holder(dev)
    e = agent.error(DETACH, [vid])
    assert e.code == 932
    assert str(proc.pid) in e.message
    processes = e.data["holders"]["processes"]
    assert [(p["pid"], p["device"]) for p in processes] == [
        (proc.pid, os.path.basename(dev))
    ]
    assert processes[0]["comm"].startswith("python")
    assert e.data["vol_id"] == vid
    [info] = agent.call(INFO, [[vid]])
    assert info["state"] == "attached"
    assert info["exists"] is True
    assert info["attempts"] == 0
    assert agent.links() == [vid]


@pytest.mark.parametrize("prober", ["(udev-worker)", "multipath", "kpartx"])
def test_a_udev_worker_probing_the_device_is_no_holder(
    agent: Agent, loops: Loops, holder: Any, prober: str
) -> None:
    """udev's workers open a device for a moment to probe it (after the
    change event a closed written device raises), and so do the tools
    its rules run (multipath -u, kpartx): a detach goes on."""
    dev, vid = attach_loop(agent, loops)
    proc = holder(dev, prober)
    comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
    assert comm == prober
    assert agent.call(DETACH, [vid]) is True
    assert agent.call(INFO, [[vid]]) == []


def test_force_detaches_a_held_device(
    agent: Agent, loops: Loops, holder: Any
) -> None:
    """force: true detaches anyway, logged at warning with the holder."""
    dev, vid = attach_loop(agent, loops)
    proc = holder(dev)
    assert agent.call(DETACH, {"vol_id": vid, "force": True}) is True
    assert agent.call(INFO, [[vid]]) == []
    assert agent.links() == []
    line = agent.wait_log(f"forced detach of {dev}")
    assert "WARNING" in line and f"pid {proc.pid}" in line


def test_force_is_third_after_sd_id(
    agent: Agent, loops: Loops, holder: Any
) -> None:
    """By position: vdsm's (vol_id, sd_id), then force."""
    sd = new_vol_id()
    dev, vid = attach_loop(agent, loops, sd)
    holder(dev)
    e = agent.error(DETACH, [vid, sd])
    assert e.code == 932
    link = agent.run_dir / "managedvolumes" / f"{sd}_{vid}"
    assert link.is_symlink()
    assert agent.call(DETACH, [vid, sd, True]) is True
    assert agent.call(INFO, [[vid]]) == []
    assert not link.is_symlink()


def test_force_is_a_boolean(agent: Agent, loops: Loops) -> None:
    """A force that is not true/false is -32602, and nothing happens."""
    _, vid = attach_loop(agent, loops)
    e = agent.error(DETACH, {"vol_id": vid, "force": "yes"})
    assert e.code == -32602
    assert agent.call(INFO, [[vid]])[0]["state"] == "attached"


def test_holder_gone_then_detach_works(
    agent: Agent, loops: Loops, holder: Any
) -> None:
    """Once the holder closed the device, a plain detach goes through."""
    dev, vid = attach_loop(agent, loops)
    proc = holder(dev)
    assert agent.error(DETACH, [vid]).code == 932
    proc.kill()
    proc.wait()
    assert agent.call(DETACH, [vid]) is True
    assert agent.call(INFO, [[vid]]) == []


def attached_with_failing_detach(
    agent_factory: Any, loops: Loops, first_retry: float, max_retry: float
) -> tuple[Agent, str, str]:
    """An agent whose next disconnect fails once, a loop attached to it."""
    agent: Agent = agent_factory(env={"HOSTAGENT_FAILPOINTS": FAIL_ONCE})
    agent.configure(
        storage={
            "detach_retry_initial": first_retry,
            "detach_retry_max": max_retry,
        }
    )
    agent.start()
    dev, vid = attach_loop(agent, loops)
    return agent, dev, vid


def test_failed_detach_is_retried_in_the_background(
    agent_factory: Any, loops: Loops
) -> None:
    """926, then the row is retried, cleared, and an event says so."""
    agent, dev, vid = attached_with_failing_detach(
        agent_factory, loops, first_retry=0.5, max_retry=1.0
    )
    with agent.client() as sub:
        assert sub.call("Host.subscribe") is True
        assert agent.error(DETACH, [vid]).code == 926
        [info] = agent.call(INFO, [[vid]])
        assert info["state"] == "detaching"
        assert info["attempts"] == 1
        assert "ProcessExecutionError" in info["last_error"]
        event = next_notification(sub, timeout=15)
    assert event["method"] == "ManagedVolume.changed"
    assert event["params"] == {
        "vol_id": vid,
        "exists": False,
        "path": dev,
        "detached": True,
    }
    assert agent.call(INFO, [[vid]]) == []
    assert "detached volume" in agent.wait_log("on retry")


def test_detaching_row_is_retried_after_a_restart(
    agent_factory: Any, loops: Loops
) -> None:
    """A row left detaching fails again at start-up, then is retried."""
    # No retry before the restart: the first wait is long.
    agent, _dev, vid = attached_with_failing_detach(
        agent_factory, loops, first_retry=60.0, max_retry=60.0
    )
    assert agent.error(DETACH, [vid]).code == 926
    assert agent.stop() == 0
    # The restarted agent's reconciliation fails once more (the fail
    # point is armed again); the retrier then clears the row.
    agent.configure(
        storage={"detach_retry_initial": 0.5, "detach_retry_max": 1.0}
    )
    agent.start()
    [info] = agent.call(INFO, [[vid]])
    assert info["state"] == "detaching"
    assert info["attempts"] == 2
    deadline = time.monotonic() + 20
    while agent.call(INFO, [[vid]]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent.call(INFO, [[vid]]) == []
    assert agent.links() == []


def test_retry_waits_for_a_holder_to_go(
    agent_factory: Any, loops: Loops, holder: Any
) -> None:
    """A background retry never tears down a device in use."""
    agent: Agent = agent_factory(env={"HOSTAGENT_FAILPOINTS": FAIL_ONCE})
    agent.configure(
        storage={"detach_retry_initial": 0.3, "detach_retry_max": 0.3}
    )
    agent.start()
    dev, vid = attach_loop(agent, loops)
    assert agent.error(DETACH, [vid]).code == 926
    proc = holder(dev)
    deadline = time.monotonic() + 10
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        [info] = agent.call(INFO, [[vid]])
        if info["attempts"] >= 3:
            break
        time.sleep(0.1)
    assert info["state"] == "detaching"
    assert info["attempts"] >= 3
    assert f"pid {proc.pid}" in info["last_error"]
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while agent.call(INFO, [[vid]]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent.call(INFO, [[vid]]) == []


def test_multipath_settings_reported(agent: Agent) -> None:
    """getCapabilities and --check-config report the host's multipath
    settings; what is wrong with them is also a start-up warning."""
    caps = agent.call("Host.getCapabilities")
    settings = caps["multipath_settings"]
    assert set(settings) == {
        "source",
        "user_friendly_names",
        "no_path_retry",
        "flush_on_last_del",
        "problems",
    }
    check = subprocess.run(
        [HOSTAGENTD, "--config", str(agent.config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    assert f"multipath settings ({settings['source']})" in check.stdout
    for problem in settings["problems"]:
        assert f"multipath WARNING: {problem}" in check.stdout
        assert problem in agent.wait_log(problem)
    if not settings["problems"]:
        agent.wait_log("multipath settings OK")


def test_no_multipath_no_settings(agent_factory: Any) -> None:
    """A host whose volumes never use multipath is not asked about it."""
    agent: Agent = agent_factory()
    agent.configure(brick={"multipath": False})
    agent.start()
    assert "multipath_settings" not in agent.call("Host.getCapabilities")
