"""Power loss: only what was fsynced survives, and reconcile copes.

The hot path makes one record per operation durable, its intent
(``attaching`` / ``detaching``), before the host is touched; the records
after it are committed without an fsync (WAL, ``synchronous=NORMAL``).
A SIGKILL keeps them (they are in the page cache), a power loss may
not.  These tests take the database files as they were at the intent's
fsync (a ``sleep`` fail point right after the intent step holds the
daemon there while the files are copied), let the operation finish,
SIGKILL the daemon, put the copy back and start again: start-up
reconcile must end consistent, with no leaked link or device and no
attachment lost that was durable.  ``test_one_fsync_per_operation``
checks, with strace on the running daemon, that the copy is what a
power loss leaves: the intent's fsync is the only one of the operation.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from conftest import Agent, Loops, attach_loop, local_info, new_vol_id

ATTACH = "ManagedVolume.attach_volume"
DETACH = "ManagedVolume.detach_volume"
INFO = "ManagedVolume.volumes_info"
FAILPOINTS = "HOSTAGENT_FAILPOINTS"
# The intent steps (hostagent's attach and detach flows).
ATTACH_INTENT = "attach.after_record"
DETACH_INTENT = "detach.after_mark"
HOLD = 3.0  # seconds a fail point holds the daemon after the intent
DB_FILES = ("", "-wal")


def hits(agent: Agent, point: str) -> int:
    """How often the fail point ``point`` fired so far."""
    return agent.log().count(f"fail point {point}:")


def wait_hits(agent: Agent, point: str, count: int) -> None:
    """Wait until ``point`` fired ``count`` times."""
    deadline = time.monotonic() + 20
    while hits(agent, point) < count:
        assert time.monotonic() < deadline, agent.log()
        time.sleep(0.01)


def in_background(agent: Agent, method: str, params: Any) -> threading.Thread:
    """Make a call on a thread; its result lands in ``thread.result``."""

    def call() -> None:
        th.result = agent.call(method, params)  # type: ignore[attr-defined]

    th = threading.Thread(target=call)
    th.start()
    return th


def snapshot(agent: Agent, dest: Path) -> None:
    """Copy the database and its WAL as they are now."""
    dest.mkdir()
    for suffix in DB_FILES:
        src = Path(f"{agent.db_path}{suffix}")
        if src.exists():
            shutil.copyfile(src, dest / f"db{suffix}")


def power_loss(agent: Agent, copy: Path) -> None:
    """SIGKILL, then put back the database files of ``copy``.

    The shared-memory index goes too: SQLite rebuilds it from the WAL,
    as it does after a reboot.
    """
    agent.kill()
    for suffix in (*DB_FILES, "-shm"):
        Path(f"{agent.db_path}{suffix}").unlink(missing_ok=True)
    for suffix in DB_FILES:
        src = copy / f"db{suffix}"
        if src.exists():
            shutil.copyfile(src, f"{agent.db_path}{suffix}")


def rows(agent: Agent) -> dict[str, tuple[str, str | None]]:
    """vol_id -> (state, path), with plain sqlite3."""
    with sqlite3.connect(agent.db_path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {
            r[0]: (r[1], r[2])
            for r in con.execute("SELECT vol_id, state, path FROM volume")
        }


def reconcile_summary(agent: Agent) -> str:
    """The last start-up reconcile summary line."""
    lines = [
        line for line in agent.log().splitlines() if "reconciled " in line
    ]
    assert lines, agent.log()
    return lines[-1]


def test_power_loss_after_an_attach_intent(
    agent_factory: Any, loops: Loops, tmp_path: Path
) -> None:
    """A's completion made durable by B's intent; B's own lost.

    A was attached before B's intent was fsynced, so A survives, though
    its completion record was committed without an fsync of its own.
    B's connect and completion are lost: B is ``attaching`` with no
    os-brick answer, and reconcile rolls it back (its link goes).
    """
    a: Agent = agent_factory()
    a.env[FAILPOINTS] = f"{ATTACH_INTENT}=sleep:{HOLD}"
    a.start()
    dev_a, dev_b = loops.create(), loops.create()
    vid_a, vid_b = new_vol_id(), new_vol_id()
    a.call(ATTACH, [vid_a, local_info(dev_a)])
    th = in_background(a, ATTACH, [vid_b, local_info(dev_b)])
    wait_hits(a, ATTACH_INTENT, 2)
    snapshot(a, tmp_path / "at-b-intent")
    th.join()
    assert th.result["path"] == dev_b  # type: ignore[attr-defined]
    assert a.links() == sorted([vid_a, vid_b])

    power_loss(a, tmp_path / "at-b-intent")
    assert rows(a) == {
        vid_a: ("attached", dev_a),
        vid_b: ("attaching", None),
    }
    a.env.pop(FAILPOINTS)
    a.start()
    assert "rolled_back 1" in reconcile_summary(a)
    assert rows(a) == {vid_a: ("attached", dev_a)}
    assert a.links() == [vid_a]
    assert os.readlink(a.run_dir / "volumes" / vid_a) == dev_a
    info = a.call(INFO)
    assert [(v["vol_id"], v["exists"]) for v in info] == [(vid_a, True)]
    # B can be attached again and detached; nothing is left of either.
    assert a.call(ATTACH, [vid_b, local_info(dev_b)])["path"] == dev_b
    a.call(DETACH, [vid_b])
    a.call(DETACH, [vid_a])
    assert a.call(INFO) == []
    assert a.links() == []


def test_power_loss_after_a_detach_intent(
    agent_factory: Any, loops: Loops, tmp_path: Path
) -> None:
    """The detach's delete is lost: reconcile finishes the detach."""
    a: Agent = agent_factory()
    a.env[FAILPOINTS] = f"{DETACH_INTENT}=sleep:{HOLD}"
    a.start()
    dev, vid = attach_loop(a, loops)
    th = in_background(a, DETACH, [vid])
    wait_hits(a, DETACH_INTENT, 1)
    snapshot(a, tmp_path / "at-detach-intent")
    th.join()
    assert a.links() == []

    power_loss(a, tmp_path / "at-detach-intent")
    assert rows(a) == {vid: ("detaching", dev)}
    a.env.pop(FAILPOINTS)
    a.start()
    assert "finished_detach 1" in reconcile_summary(a)
    assert rows(a) == {}
    assert a.links() == []
    assert a.call(ATTACH, [vid, local_info(dev)])["path"] == dev
    a.call(DETACH, [vid])


FSYNC = re.compile(r"\b(fsync|fdatasync)\((\d+)<([^>]*)>")


def fsyncs(trace: Path) -> list[str]:
    """The files fsynced so far, in order, from strace's output."""
    text = trace.read_text() if trace.exists() else ""
    return [m.group(3) for m in FSYNC.finditer(text)]


def test_one_fsync_per_operation(
    agent_factory: Any, loops: Loops, tmp_path: Path
) -> None:
    """Attach and detach fsync once each: the intent, before the host.

    strace follows the running daemon's threads and names each fsynced
    file; the fail point after each intent holds the daemon while the
    trace is read, so the fsync is shown to come before the rest.
    """
    a: Agent = agent_factory()
    a.env[FAILPOINTS] = (
        f"{ATTACH_INTENT}=sleep:{HOLD},{DETACH_INTENT}=sleep:{HOLD}"
    )
    a.start()
    dev = loops.create()
    warm = new_vol_id()  # the WAL and the tables exist before tracing
    a.call(ATTACH, [warm, local_info(dev)])
    a.call(DETACH, [warm])
    assert a.proc is not None
    trace = tmp_path / "strace.out"
    tracer = subprocess.Popen(
        [
            "strace",
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
            str(trace),
            "-p",
            str(a.proc.pid),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # strace has attached to every thread
        wal = f"{a.db_path}-wal"
        vid = new_vol_id()
        before = len(fsyncs(trace))
        th = in_background(a, ATTACH, [vid, local_info(dev)])
        wait_hits(a, ATTACH_INTENT, 2)
        at_intent = fsyncs(trace)[before:]
        th.join()
        attach = fsyncs(trace)[before:]
        th = in_background(a, DETACH, [vid])
        wait_hits(a, DETACH_INTENT, 2)
        at_detach_intent = fsyncs(trace)[before + len(attach) :]
        th.join()
        time.sleep(0.2)
        detach = fsyncs(trace)[before + len(attach) :]
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    assert at_intent == [wal], at_intent
    assert attach == [wal], attach
    assert at_detach_intent == [wal], at_detach_intent
    assert detach == [wal], detach
