"""Crash safety on the real daemon: SIGKILL at every flow step, restart,
reconcile; failing disconnects; concurrent clients on one volume.

Everything runs the real hostagentd with the real ``local`` os-brick
connector on real loop devices.  Fail points (``HOSTAGENT_FAILPOINTS``)
pick the instant of the crash; ``kill`` is a real SIGKILL of the daemon.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import re
import signal
import sqlite3
import stat
import sys
import threading
import time
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
from support import ATTACH, DETACH, FAILPOINTS, INFO

from hostagent import brick, db
from hostagent.client import RpcError
from hostagent.db import Database, VolumeRecord
from hostagent.redact import SCRUBBER
from hostagent.service import VolumeService, steps
from hostagent.service.host import Host
from hostagent.service.reconcile import completion_steps
from hostagent.udev import Udev


def db_rows(agent: Agent) -> dict[str, tuple[str, str | None, str | None]]:
    """vol_id -> (state, path, last_error), read with plain sqlite3."""
    with sqlite3.connect(agent.db_path) as con:
        return {
            r[0]: (r[1], r[2], r[3])
            for r in con.execute(
                "SELECT vol_id, state, path, last_error FROM volume"
            )
        }


def integrity(agent: Agent) -> str:
    """``PRAGMA integrity_check`` of the agent's database file."""
    with sqlite3.connect(agent.db_path) as con:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])


def is_live_block(path: str) -> bool:
    """A block device node whose device has media (size > 0)."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return False
    name = Path(path).name
    return int(Path(f"/sys/class/block/{name}/size").read_text()) > 0


def assert_consistent(agent: Agent) -> dict[str, str]:
    """The DB, the managed symlinks and the devices agree.

    Every row is ``attached`` with a path to a live device and a managed
    symlink to that path; no symlink (or temporary link) lacks a row; the
    database passes its integrity check.  Returns vol_id -> path.
    """
    assert integrity(agent) == "ok"
    rows = db_rows(agent)
    vdir = agent.run_dir / "volumes"
    names = sorted(os.listdir(vdir))
    assert names == sorted(rows), (names, rows)
    attached = {}
    for vid, (state, path, last_error) in rows.items():
        assert state == "attached", (vid, state, last_error)
        assert path is not None
        assert os.readlink(vdir / vid) == path
        assert is_live_block(path), path
        attached[vid] = path
    return attached


def set_failpoints(agent: Agent, points: str | None) -> None:
    """Fail points for the agent's next start (``None``: none)."""
    if points:
        agent.env[FAILPOINTS] = points
    else:
        agent.env.pop(FAILPOINTS, None)


def call_until_killed(agent: Agent, method: str, params: Any) -> None:
    """Make a call that a ``kill`` fail point ends; check it was SIGKILL."""
    with pytest.raises(OSError):  # ConnectionError: the daemon died
        agent.call(method, params)
    assert agent.proc is not None
    assert agent.proc.wait(30) == -signal.SIGKILL
    agent.proc = None


def crash(
    agent_factory: Any, loops: Loops, point: str, during: str = ATTACH
) -> tuple[Agent, str, str]:
    """A new agent SIGKILLed by the fail point ``point``.

    ``during`` the attach of a new volume on a new loop device, or of its
    detach (``DETACH``, after a clean attach).  Returns the agent (not
    running), the device and the volume id.
    """
    a: Agent = agent_factory()
    dev = loops.create()
    vid = new_vol_id()
    set_failpoints(a, f"{point}=kill")
    a.start()
    if during == DETACH:
        a.call(ATTACH, [vid, local_info(dev)])
        call_until_killed(a, DETACH, [vid])
    else:
        call_until_killed(a, ATTACH, [vid, local_info(dev)])
    assert f"fail point {point}: kill" in a.log()
    return a, dev, vid


def restart(agent: Agent, points: str | None = None) -> None:
    """Start again with other fail points (by default none)."""
    set_failpoints(agent, points)
    agent.start()


def outcome_links(outcome: str, vid: str, dev: str) -> dict[str, str]:
    """What :func:`assert_consistent` returns for ``outcome``."""
    return {vid: dev} if outcome == "attached" else {}


def reconcile_lines(agent: Agent) -> list[str]:
    """The daemon's reconciliation summary lines so far."""
    return re.findall(r"reconciled \d+ volume record\(s\).*", agent.log())


def assert_no_double_connect(seq: list[str]) -> None:
    """Never a second connect of a volume before a disconnect.

    Repeated disconnects are allowed: after a crash nothing tells whether
    the last one finished, so it runs again (os-brick's is idempotent).
    """
    connected = False
    for e in seq:
        assert not (connected and e == "connect"), seq
        connected = e == "connect"


def check_reusable(agent: Agent, vid: str, dev: str) -> None:
    """The next detach / attach / detach of ``vid`` work."""
    if vid in db_rows(agent):
        assert agent.call(DETACH, [vid]) is True
        assert_consistent(agent)
        assert vid not in db_rows(agent)
    result = agent.call(ATTACH, [vid, local_info(dev)])
    assert result["path"] == dev
    assert assert_consistent(agent) == {vid: dev}
    assert agent.call(DETACH, [vid]) is True
    assert assert_consistent(agent) == {}


# -- SIGKILL at every step --------------------------------------------------

# (fail point, outcome after reconciliation) for a killed attach.
# "gone": rolled back, "attached": completed or already recorded.
ATTACH_KILLS = [
    ("attach.before_record", "gone"),
    ("attach.after_record", "gone"),
    ("attach.before_connect", "gone"),
    ("brick.before_connect_volume", "gone"),
    # connect_volume has done its work but not returned: nothing knows
    # the device, so it is disconnected from the connection info alone.
    ("brick.after_connect_volume", "gone"),
    ("attach.after_connect", "gone"),
    ("attach.before_connected", "gone"),
    # From here the row holds os-brick's answer and the device is there:
    # reconciliation completes the attach.
    ("attach.after_connected", "attached"),
    ("attach.before_wait", "attached"),
    ("attach.after_wait", "attached"),
    ("attach.before_own", "attached"),
    ("attach.after_own", "attached"),
    ("attach.before_owned", "attached"),
    ("attach.after_owned", "attached"),
    ("attach.before_admit", "attached"),
    ("attach.after_admit", "attached"),
    ("attach.before_attached", "attached"),
    ("attach.after_attached", "attached"),
    ("attach.before_link", "attached"),
    ("attach.after_link", "attached"),
]

DETACH_KILLS = [
    ("detach.before_mark", "attached"),
    ("detach.after_mark", "gone"),
    ("detach.before_unlink", "gone"),
    ("detach.after_unlink", "gone"),
    ("detach.before_disown", "gone"),
    ("detach.after_disown", "gone"),
    ("detach.before_release", "gone"),
    ("detach.after_release", "gone"),
    ("detach.before_disconnect", "gone"),
    ("brick.before_disconnect_volume", "gone"),
    ("brick.after_disconnect_volume", "gone"),
    ("detach.after_disconnect", "gone"),
    ("detach.before_forget", "gone"),
    ("detach.after_forget", "gone"),
]
DISCONNECT_STARTED = {
    "brick.before_disconnect_volume",
    "brick.after_disconnect_volume",
    "detach.after_disconnect",
    "detach.before_forget",
}


def flow_points(flow: str, steps: list[Any]) -> set[str]:
    """The before/after fail points of ``steps`` run as flow ``flow``."""
    return {f"{flow}.{w}_{s.name}" for s in steps for w in ("before", "after")}


def code_fail_points() -> dict[str, set[str]]:
    """Every fail point the code has, by flow, from the code itself.

    The steps are those the flows really run (built, not run, on a
    record that needs nothing); the os-brick points are read from
    brick.py's source.
    """
    rec = VolumeRecord(
        vol_id=new_vol_id(),
        connection_info=local_info("/dev/null"),
        path=None,
        attachment={},
        multipath_id=None,
        state=db.ATTACHING,
        last_error=None,
        created=0.0,
        updated=0.0,
        backend=None,
    )
    # No host: building the steps touches none, only running them.
    host: Any = None
    attempt = steps.Attempt(rec.vol_id, "local", rec.connection_info)
    teardown = steps.teardown_steps(host, steps.Teardown(rec, None))
    completion = completion_steps(host, rec, "/dev/null")
    return {
        "attach": flow_points("attach", steps.attach_steps(host, attempt)),
        "detach": flow_points("detach", teardown),
        "reconcile": flow_points("reconcile", teardown + completion),
        "brick": set(
            re.findall(r'_failpoint\("([^"]+)"\)', inspect.getsource(brick))
        ),
    }


def test_every_flow_step_is_covered() -> None:
    """The kill tables name every fail point the flows and brick.py have.

    A step (or os-brick fail point) added without a kill test fails this.
    """
    points = code_fail_points()
    assert len(points["brick"]) == 4, points["brick"]
    attach = {p for p, _ in ATTACH_KILLS if not p.startswith("brick.")}
    detach = {p for p, _ in DETACH_KILLS if not p.startswith("brick.")}
    reconcile = {p for _, p, _ in RECONCILE_KILLS if p.startswith("rec")}
    brick_points = {
        p for p, _ in ATTACH_KILLS + DETACH_KILLS if p.startswith("brick.")
    }
    assert attach == points["attach"]
    assert detach == points["detach"]
    assert reconcile == points["reconcile"]
    assert brick_points == points["brick"]


@pytest.mark.parametrize(("point", "outcome"), ATTACH_KILLS)
def test_kill_during_attach(
    agent_factory: Any, loops: Loops, point: str, outcome: str
) -> None:
    a, dev, vid = crash(agent_factory, loops, point)
    restart(a)
    assert assert_consistent(a) == outcome_links(outcome, vid, dev)
    (summary,) = reconcile_lines(a)[-1:]
    if point in ("attach.before_record", "attach.after_link"):
        assert "nothing to do" in summary
    elif outcome == "gone":
        assert "rolled_back 1" in summary
    elif point in ("attach.after_attached", "attach.before_link"):
        assert "link_created 1" in summary
    else:
        assert "completed 1" in summary
    info = a.call(INFO)
    assert [(i["vol_id"], i["state"], i["exists"]) for i in info] == (
        [(vid, "attached", True)] if outcome == "attached" else []
    )
    # A rollback disconnects even when the crash came before connect:
    # from the row alone nothing tells whether os-brick had started.
    if point == "attach.before_record":
        expected = []
    elif point in ("attach.after_record", "attach.before_connect"):
        expected = ["disconnect"]
    elif outcome == "attached":
        expected = ["connect"]
    else:
        expected = ["connect", "disconnect"]
    assert brick_calls(a, vid) == expected
    check_reusable(a, vid, dev)
    assert_no_double_connect(brick_calls(a, vid))


@pytest.mark.parametrize(("point", "outcome"), DETACH_KILLS)
def test_kill_during_detach(
    agent_factory: Any, loops: Loops, point: str, outcome: str
) -> None:
    a, dev, vid = crash(agent_factory, loops, point, DETACH)
    restart(a)
    assert assert_consistent(a) == outcome_links(outcome, vid, dev)
    (summary,) = reconcile_lines(a)[-1:]
    if point in ("detach.before_mark", "detach.after_forget"):
        assert "nothing to do" in summary
    else:
        assert "finished_detach 1" in summary
    # A disconnect that may have run before the crash runs again.
    if outcome == "attached":
        expected = ["connect"]
    elif point in DISCONNECT_STARTED:
        expected = ["connect", "disconnect", "disconnect"]
    else:
        expected = ["connect", "disconnect"]
    assert brick_calls(a, vid) == expected
    check_reusable(a, vid, dev)
    assert_no_double_connect(brick_calls(a, vid))


# A second crash while reconciling the first, at every reconcile point:
# the next start finishes.  Rollbacks and finished detaches run the
# detach flow's steps as "reconcile"; completions run attached and link.
RECONCILE_KILLS = [
    ("attach.after_record", "reconcile.before_mark", "gone"),
    ("attach.after_record", "reconcile.after_mark", "gone"),
    ("attach.after_connect", "reconcile.before_unlink", "gone"),
    ("detach.after_mark", "reconcile.after_unlink", "gone"),
    ("detach.after_mark", "reconcile.before_disown", "gone"),
    ("attach.after_connect", "reconcile.after_disown", "gone"),
    ("detach.after_unlink", "reconcile.before_release", "gone"),
    ("attach.after_connect", "reconcile.after_release", "gone"),
    ("attach.after_connect", "reconcile.before_disconnect", "gone"),
    ("attach.after_connect", "brick.after_disconnect_volume", "gone"),
    ("detach.after_unlink", "reconcile.after_disconnect", "gone"),
    ("detach.after_mark", "reconcile.before_forget", "gone"),
    ("attach.after_record", "reconcile.after_forget", "gone"),
    ("attach.after_connected", "reconcile.before_own", "attached"),
    ("attach.after_wait", "reconcile.after_own", "attached"),
    ("attach.after_connected", "reconcile.before_owned", "attached"),
    ("attach.after_wait", "reconcile.after_owned", "attached"),
    ("attach.after_connected", "reconcile.before_attached", "attached"),
    ("attach.after_connected", "reconcile.after_attached", "attached"),
    ("attach.after_connected", "reconcile.before_link", "attached"),
    ("attach.after_wait", "reconcile.after_link", "attached"),
]


@pytest.mark.parametrize(("first", "second", "outcome"), RECONCILE_KILLS)
def test_kill_during_reconciliation(
    agent_factory: Any, loops: Loops, first: str, second: str, outcome: str
) -> None:
    during = DETACH if first.startswith("detach.") else ATTACH
    a, dev, vid = crash(agent_factory, loops, first, during)

    set_failpoints(a, f"{second}=kill")
    a.start(wait=False)
    assert a.proc is not None
    assert a.proc.wait(30) == -signal.SIGKILL
    assert f"fail point {second}: kill" in a.log()
    a.proc = None

    restart(a)
    assert assert_consistent(a) == outcome_links(outcome, vid, dev)
    check_reusable(a, vid, dev)
    assert_no_double_connect(brick_calls(a, vid))


# -- failing disconnect ------------------------------------------------------


def test_failing_disconnect_keeps_the_row_and_a_retry_finishes(
    agent_factory: Any, loops: Loops
) -> None:
    """Detach whose os-brick disconnect fails: 926, row kept, retried.

    The local connector's disconnect cannot fail, so the fail point makes
    the call inside ``Brick.disconnect`` raise what os-brick lets through
    when ``iscsiadm`` or ``multipath -f`` fails (ProcessExecutionError);
    the error then takes the agent's real path.  ``1*`` fails only once.
    """
    a: Agent = agent_factory()
    dev = loops.create()
    vid = new_vol_id()
    set_failpoints(a, "brick.before_disconnect_volume=1*raise")
    a.start()
    a.call(ATTACH, [vid, local_info(dev)])
    err = a.error(DETACH, [vid])
    assert err.code == 926
    assert err.data["error_class"] == "ProcessExecutionError"
    assert err.data["operation"] == "disconnect_volume"
    assert err.data["driver"] == "local"
    (info,) = a.call(INFO)
    assert info["state"] == "detaching"
    assert "disconnect_volume failed" in info["last_error"]
    assert info["exists"] is True
    assert a.links() == []
    # Neither a new attach nor anything else forgets the row.
    busy = a.error(ATTACH, [vid, local_info(dev)])
    assert busy.code == 927
    assert "detaching" in busy.message
    assert "disconnect_volume failed" in busy.message
    # The retry runs the disconnect again and finishes.
    assert a.call(DETACH, [vid]) is True
    assert a.call(INFO) == []
    assert brick_calls(a, vid) == ["connect", "disconnect", "disconnect"]
    assert_consistent(a)


def test_failing_disconnect_at_start_up_keeps_the_row(
    agent_factory: Any, loops: Loops
) -> None:
    """Reconciliation that cannot disconnect keeps the row, then serves."""
    a, dev, vid = crash(agent_factory, loops, "attach.after_connected")
    # Make completion impossible: the device goes while the agent is down.
    loops.detach(dev)
    # No background retry (tests/test_detach.py has those) may rewrite
    # last_error before this test reads reconciliation's.
    a.configure(
        storage={"detach_retry_initial": 600.0, "detach_retry_max": 600.0}
    )

    restart(a, "brick.before_disconnect_volume=raise")
    assert "failed 1" in reconcile_lines(a)[-1]
    (info,) = a.call(INFO)
    assert info["state"] == "detaching"
    assert info["exists"] is False
    assert info["last_error"].startswith(
        "rolling back an attach interrupted by a restart: "
        "local disconnect_volume failed: ProcessExecutionError"
    )
    err = a.error(DETACH, [vid])
    assert err.code == 926
    assert db_rows(a)[vid][0] == "detaching"

    # Next start, with a working disconnect, finishes the detach.
    a.stop()
    restart(a)
    assert "finished_detach 1" in reconcile_lines(a)[-1]
    assert a.call(INFO) == []
    assert a.links() == []
    assert_no_double_connect(brick_calls(a, vid))


# -- failed connect ----------------------------------------------------------


def test_failed_connect_is_disconnected(
    agent_factory: Any, loops: Loops
) -> None:
    """connect_volume raising after it connected: undone, nothing left.

    ``brick.after_connect_volume=raise`` is os-brick raising when the
    connection is up (a StorPool reassign done, an iSCSI login made):
    the attach disconnects from the connection info before it forgets.
    """
    a: Agent = agent_factory()
    dev = loops.create()
    vid = new_vol_id()
    set_failpoints(a, "brick.after_connect_volume=raise")
    a.start()
    err = a.error(ATTACH, [vid, local_info(dev)])
    assert err.code == 926
    assert err.data["operation"] == "connect_volume"
    assert err.data["error_class"] == "ProcessExecutionError"
    assert a.call(INFO) == []
    assert db_rows(a) == {}
    assert a.links() == []
    assert brick_calls(a, vid) == ["connect", "disconnect"]
    log = a.log()
    assert f"volume {vid}: connect failed; disconnecting" in log
    assert f"volume {vid}: disconnecting device unknown (local)" in log
    # os-brick's own trace (debug): its disconnect_volume ran for this
    # volume's device, with no device info, and returned.
    (call,) = re.findall(r"==> disconnect_volume: call .*", log)
    assert f"'connection_properties': {{'device_path': '{dev}'}}" in call
    assert "'device_info': {}" in call
    assert "<== disconnect_volume: return" in log
    assert "undoing step" not in log


def test_failed_connect_whose_disconnect_fails_keeps_the_row(
    agent_factory: Any, loops: Loops
) -> None:
    """connect and its clean-up both fail: 926, the row stays detaching.

    Nothing is forgotten while it may still be connected: volumes_info
    shows the row with the error, a new attach is 927, and a detach
    retries the disconnect and removes the row.
    """
    a: Agent = agent_factory()
    dev = loops.create()
    vid = new_vol_id()
    set_failpoints(
        a,
        "brick.after_connect_volume=raise,"
        "brick.before_disconnect_volume=1*raise",
    )
    a.start()
    err = a.error(ATTACH, [vid, local_info(dev)])
    assert err.code == 926
    assert err.data["operation"] == "connect_volume"
    (info,) = a.call(INFO)
    assert info["vol_id"] == vid
    assert info["state"] == "detaching"
    assert info["attachment"] is None
    assert info["last_error"].startswith("attach failed (local connect_volume")
    assert (
        "undoing connect failed (local disconnect_volume failed"
        in (info["last_error"])
    )
    assert info["last_error"].endswith("run detach_volume to clean up")
    assert db_rows(a)[vid][0] == "detaching"
    assert a.links() == []
    assert a.error(ATTACH, [vid, local_info(dev)]).code == 927
    assert brick_calls(a, vid) == ["connect", "disconnect"]

    assert a.call(DETACH, [vid]) is True
    assert a.call(INFO) == []
    assert brick_calls(a, vid) == ["connect", "disconnect", "disconnect"]
    assert_consistent(a)
    # The volume can be used again once the connector works.
    a.stop()
    restart(a)
    check_reusable(a, vid, dev)


def test_rows_rolled_back_at_start_up_let_go_of_their_secrets(
    tmp_path: Path, loops: Loops
) -> None:
    """The scrubber holds the secrets of rows only while they exist.

    In-process (the scrubber is the daemon's memory): open() holds every
    row's secrets; reconciliation deletes a rolled-back row and must let
    go of its, not of an attached row's.
    """
    cfg = private_config(tmp_path, 'drivers = ["local"]')
    dev = loops.create()
    gone, kept = new_vol_id(), new_vol_id()
    gone_secret, kept_secret = f"gone-{gone}", f"kept-{kept}"
    seed = Database(cfg.db_path)
    seed.open()
    # Killed before os-brick returned: rolled back at start-up.
    seed.insert(gone, local_info(dev, auth_password=gone_secret))
    seed.insert(kept, local_info(dev, auth_password=kept_secret))
    seed.set_attached(kept, dev, {"path": dev}, None)
    seed.close()

    service = VolumeService(
        Host(
            cfg,
            Database(cfg.db_path),
            brick.Brick(cfg.brick, cfg.lock_dir, tmp_path / "mnt"),
            Udev(),
        )
    )

    async def start() -> dict[str, int]:
        await service.open()
        assert {gone_secret, kept_secret} <= SCRUBBER.known()
        try:
            return await service.reconcile()
        finally:
            await service.close()

    try:
        stats = asyncio.run(start())
        assert stats["rolled_back"] == 1
        assert gone_secret not in SCRUBBER.known()
        assert kept_secret in SCRUBBER.known()
    finally:
        SCRUBBER.release(gone)
        SCRUBBER.release(kept)


# The daemon, with its shutdown wait shortened so a test can outlast it.
SHORT_SHUTDOWN = (
    "import sys; from hostagent import daemon; "
    "daemon.SHUTDOWN_TIMEOUT = 0.3; "
    "sys.exit(daemon.main(sys.argv[2:]))"
)


def test_shutdown_leaves_a_running_attach_to_reconciliation(
    agent_factory: Any, loops: Loops
) -> None:
    """SIGTERM while os-brick connects, longer than the shutdown waits.

    The cancelled attach is not reverted (its worker thread is still in
    connect_volume): the row stays ``attaching`` and the next start
    rolls it back, disconnecting.
    """
    a: Agent = agent_factory()
    dev = loops.create()
    vid = new_vol_id()
    set_failpoints(a, "brick.after_connect_volume=sleep:1.5")
    a.start(prefix=[sys.executable, "-c", SHORT_SHUTDOWN])
    outcome: dict[str, Any] = {}

    def attach() -> None:
        try:
            outcome["result"] = a.call(ATTACH, [vid, local_info(dev)])
        except (OSError, RpcError) as e:
            outcome["error"] = e

    t = threading.Thread(target=attach)
    t.start()
    a.wait_log("fail point brick.after_connect_volume: sleep")
    assert a.stop() == 0
    t.join(30)
    assert isinstance(outcome.get("error"), OSError), outcome
    log = a.log()
    assert "1 request(s) still running at shutdown" in log
    assert (
        f"attach of volume {vid} interrupted (CancelledError) in step "
        "connect: not reverting"
    ) in log
    assert "undoing step" not in log
    assert db_rows(a) == {vid: ("attaching", None, None)}
    assert brick_calls(a, vid) == ["connect"]

    restart(a)
    assert "rolled_back 1" in reconcile_lines(a)[-1]
    assert brick_calls(a, vid) == ["connect", "disconnect"]
    assert_consistent(a)
    check_reusable(a, vid, dev)


# -- symlinks and devices at start-up ----------------------------------------


def test_start_up_repairs_symlinks_and_keeps_missing_devices(
    agent_factory: Any, loops: Loops
) -> None:
    a: Agent = agent_factory()
    a.start()
    kept, relinked, repaired, gone = (new_vol_id() for _ in range(4))
    devs = {v: loops.create() for v in (kept, relinked, repaired, gone)}
    for vid, dev in devs.items():
        a.call(ATTACH, [vid, local_info(dev)])
    a.kill()

    vdir = a.run_dir / "volumes"
    orphan = new_vol_id()
    os.symlink(devs[kept], vdir / orphan)  # a link without a row
    os.symlink("/dev/null", vdir / f".{orphan}.tmp")  # crash in make_link
    (vdir / relinked).unlink()  # e.g. /run emptied
    (vdir / repaired).unlink()
    os.symlink("/dev/null", vdir / repaired)  # pointing elsewhere
    (vdir / "README").write_text("not ours\n")  # not a symlink: left alone
    loops.detach(devs[gone])

    a.start()
    summary = reconcile_lines(a)[-1]
    for part in (
        # The orphan's, and gone's: never a link to a missing device
        # (issue 17; a re-attach makes it again once the device is back).
        "link_removed 2",
        "link_created 1",
        "link_repaired 1",
        "device_missing 1",
    ):
        assert part in summary, summary
    assert sorted(os.listdir(vdir)) == sorted(
        [kept, relinked, repaired, "README"]
    )
    for vid, dev in devs.items():
        if vid != gone:
            assert os.readlink(vdir / vid) == dev
    info = {i["vol_id"]: i for i in a.call(INFO)}
    assert {v: (i["state"], i["exists"]) for v, i in info.items()} == {
        kept: ("attached", True),
        relinked: ("attached", True),
        repaired: ("attached", True),
        gone: ("attached", False),
    }
    assert f"volume {gone} is attached but its device" in a.log()
    assert a.call(DETACH, [gone]) is True


# -- random-kill soak --------------------------------------------------------


class Gate:
    """Lets client threads run only between restarts of the daemon."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.is_open = False
        self.stopped = False
        self.active = 0

    def enter(self) -> bool:
        """Wait until open; False once the soak is over."""
        with self.cond:
            while not self.is_open and not self.stopped:
                self.cond.wait(0.1)
            if self.stopped:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        """A client finished its round."""
        with self.cond:
            self.active -= 1
            self.cond.notify_all()

    def set(self, is_open: bool) -> None:
        """Open or close the gate."""
        with self.cond:
            self.is_open = is_open
            self.cond.notify_all()

    def drain(self) -> None:
        """Wait until no client is inside."""
        with self.cond:
            while self.active:
                self.cond.wait(0.1)

    def stop(self) -> None:
        """Release every client for good."""
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


SOAK_KILLS = 30
SOAK_VOLUMES = 3
SOAK_CLIENTS = 4
# Real iSCSI connects take seconds; these pauses stand for that, so that
# a random SIGKILL often lands inside a flow rather than between flows.
SOAK_SLOW = (
    "brick.after_connect_volume=sleep:0.01,"
    "attach.before_link=sleep:0.01,"
    "detach.after_unlink=sleep:0.01,"
    "brick.after_disconnect_volume=sleep:0.01"
)


def test_random_kill_soak(agent_factory: Any, loops: Loops) -> None:
    """Attach/detach from several clients, SIGKILL at random, restart.

    After every restart the state must be consistent (every row attached
    with a live symlink, or gone; nothing stuck; integrity ok), and at
    the end everything can be detached.
    """
    a: Agent = agent_factory()
    set_failpoints(a, SOAK_SLOW)
    rng = random.Random(5)
    vols = {new_vol_id(): loops.create() for _ in range(SOAK_VOLUMES)}
    gate = Gate()
    done = {"ok": 0, "cut": 0}
    unexpected: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        crng = random.Random(seed)
        while gate.enter():
            try:
                with a.client(timeout=30) as c:
                    for _ in range(20):
                        vid = crng.choice(list(vols))
                        if crng.random() < 0.5:
                            r = c.call(ATTACH, [vid, local_info(vols[vid])])
                            assert r["path"] == vols[vid]
                        else:
                            assert c.call(DETACH, [vid]) is True
                        with lock:
                            done["ok"] += 1
            except OSError:
                with lock:
                    done["cut"] += 1
            except (RpcError, AssertionError) as e:
                with lock:
                    unexpected.append(repr(e))
            finally:
                gate.leave()

    threads = [
        threading.Thread(target=client, args=(i,), daemon=True)
        for i in range(SOAK_CLIENTS)
    ]
    for t in threads:
        t.start()
    try:
        for _ in range(SOAK_KILLS):
            a.start()
            assert_consistent(a)
            # getCapabilities waits for os-brick's import (0.3-1 s, more
            # on a loaded machine), as every attach and detach does; a
            # kill before it lands would only ever hit calls still
            # waiting for it, and test nothing.
            assert "connector_info" in a.call("Host.getCapabilities")
            gate.set(True)
            time.sleep(rng.uniform(0.02, 0.4))
            gate.set(False)
            a.kill()
            gate.drain()
    finally:
        gate.stop()
        for t in threads:
            t.join(30)
    assert not unexpected, unexpected

    restart(a)
    assert set(assert_consistent(a)) <= set(vols)
    for vid in vols:
        assert_no_double_connect(brick_calls(a, vid))
        assert a.call(DETACH, [vid]) is True
    assert assert_consistent(a) == {}

    summaries = reconcile_lines(a)
    assert len(summaries) == SOAK_KILLS + 1
    work = [s for s in summaries if "nothing to do" not in s]
    decisions: dict[str, int] = {}
    for s in work:
        for name, n in re.findall(r"([a-z_]+) (\d+)", s.split(": ", 1)[1]):
            decisions[name] = decisions.get(name, 0) + int(n)
    print(
        f"\nsoak: {SOAK_KILLS} SIGKILLs, {done['ok']} calls answered, "
        f"{done['cut']} cut by a kill, {len(work)} restarts with "
        f"reconciliation work: {decisions}"
    )
    assert done["ok"] > SOAK_KILLS
    # The kills landed inside flows: reconciliation had work to do.
    assert work


def test_rows_wait_when_os_brick_is_missing(
    agent_factory: Any, loops: Loops, tmp_path: Path
) -> None:
    """Without os-brick nothing can be torn down: rows stay, clearly.

    The agent still starts (volumes_info works); the row says why it was
    not finished; the next start with os-brick finishes it.
    """
    a, dev, vid = crash(agent_factory, loops, "attach.after_record")

    # A host where os-brick cannot be imported.
    shadow = tmp_path / "no-os-brick" / "os_brick"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ImportError('os-brick is not installed here')\n"
    )
    a.env["PYTHONPATH"] = str(shadow.parent)
    restart(a)
    assert "failed 1" in reconcile_lines(a)[-1]
    (info,) = a.call(INFO)
    assert info["state"] == "detaching"
    assert "not finished at start-up" in info["last_error"]
    assert "os-brick is not installed here" in info["last_error"]
    err = a.error(DETACH, [vid])
    assert err.code == 925
    assert db_rows(a)[vid][0] == "detaching"

    a.stop()
    del a.env["PYTHONPATH"]
    a.start()
    assert "finished_detach 1" in reconcile_lines(a)[-1]
    assert a.call(INFO) == []
    check_reusable(a, vid, dev)
