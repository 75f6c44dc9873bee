"""930 (state directory full) and 931 (not a link at the managed path).

The state directory is a real small tmpfs, filled up for real; the
managed path gets a real directory or file.  Each refusal must leave
the host and the database as they were.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent, Loops, brick_calls, local_info, new_vol_id
from support import ATTACH, DETACH, INFO

from hostagent.client import RpcError


def rows(agent: Agent) -> list[tuple[Any, ...]]:
    """vol_id, state of every row (sqlite3)."""
    # Closed at once: an open file keeps the tmpfs from unmounting.
    with contextlib.closing(sqlite3.connect(agent.db_path)) as con:
        return con.execute(
            "SELECT vol_id, state FROM volume ORDER BY vol_id"
        ).fetchall()


@pytest.fixture
def small_state(agent_factory: Any) -> Iterator[Agent]:
    """An agent (not started) whose state_dir is a 2 MiB tmpfs."""
    a: Agent = agent_factory()
    a.state_dir.mkdir()
    where = str(a.state_dir)
    options = "size=2m,mode=0700"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", where], check=True
    )
    try:
        yield a
    finally:
        if a.alive():
            a.stop()
        subprocess.run(["umount", str(a.state_dir)], check=True)


def fill(directory: Path) -> Path:
    """Fill ``directory``'s file system; the file that fills it."""
    f = directory / "filler"
    with open(f, "wb") as out:
        chunk = b"\0" * 65536
        while True:
            try:
                out.write(chunk)
                out.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
    # Smaller writes until not even one block fits.
    with open(f, "ab", buffering=0) as out:
        while True:
            try:
                out.write(b"\0" * 512)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                return f


def is_930(err: RpcError, agent: Agent) -> None:
    assert err.code == 930, err
    assert str(agent.state_dir) in err.message
    assert err.data == {"state_dir": str(agent.state_dir), "reason": "full"}


def test_full_state_dir_attach_and_detach_are_930(
    small_state: Agent, loops: Loops
) -> None:
    a = small_state
    a.start()
    kept = new_vol_id()
    dev = loops.create()
    a.call(ATTACH, {"vol_id": kept, "connection_info": local_info(dev)})
    filler = fill(a.state_dir)

    # Attach: the intent is not written, so nothing is connected.
    vid = new_vol_id()
    err = a.error(
        ATTACH,
        {"vol_id": vid, "connection_info": local_info(loops.create())},
    )
    is_930(err, a)
    assert brick_calls(a, vid) == []
    assert a.links() == [kept]
    # Detach: the mark is not written, so nothing is torn down.
    err = a.error(DETACH, [kept])
    is_930(err, a)
    assert brick_calls(a, kept) == ["connect"]
    assert a.links() == [kept]
    assert rows(a) == [(kept, "attached")]
    assert "internal error" not in a.log()

    filler.unlink()
    assert a.call(DETACH, [kept]) is True
    assert rows(a) == [] and a.links() == []


def test_state_dir_full_after_connect(
    small_state: Agent, loops: Loops
) -> None:
    """The completion write fails after connect: 930, and the row is
    left for start-up reconciliation, which finishes it consistently."""
    a = small_state
    a.env["HOSTAGENT_FAILPOINTS"] = "attach.before_attached=sleep:1.5"
    a.start()
    dev = loops.create()
    vid = new_vol_id()
    out: dict[str, Any] = {}

    def attach() -> None:
        try:
            a.call(ATTACH, {"vol_id": vid, "connection_info": local_info(dev)})
        except RpcError as e:
            out["error"] = e

    worker = threading.Thread(target=attach)
    worker.start()
    # The row holds os-brick's answer by then (the "connected" step).
    a.wait_log("fail point attach.before_attached: sleep")
    filler = fill(a.state_dir)
    worker.join(30)
    is_930(out["error"], a)
    assert a.links() == []
    # The connect was undone; the row (still "attaching") could not be
    # forgotten on a full disk: it stays for reconciliation.
    assert brick_calls(a, vid) == ["connect", "disconnect"]
    assert rows(a) == [(vid, "attaching")]
    filler.unlink()
    a.stop()
    del a.env["HOSTAGENT_FAILPOINTS"]
    a.start()
    # The device is there: the interrupted attach is completed.
    [shown] = a.call(INFO)
    assert (shown["state"], shown["exists"]) == ("attached", True)
    assert os.readlink(a.run_dir / "volumes" / vid) == dev
    a.call(DETACH, [vid])


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_not_a_link_at_the_managed_path_is_931(
    agent: Agent, loops: Loops, kind: str
) -> None:
    vid = new_vol_id()
    where = agent.run_dir / "volumes" / vid

    def put() -> None:
        if kind == "directory":
            where.mkdir()
            (where / "keep").write_text("mine")
        else:
            where.write_text("mine")

    def still_there() -> None:
        inside = where / "keep" if kind == "directory" else where
        assert inside.read_text() == "mine"

    dev = loops.create()
    put()
    err = agent.error(
        ATTACH, {"vol_id": vid, "connection_info": local_info(dev)}
    )
    assert err.code == 931, err
    assert str(where) in err.message
    assert err.data == {"vol_id": vid, "managed_path": str(where)}
    assert rows(agent) == []
    assert brick_calls(agent, vid) == []
    still_there()

    # Attached, then something else takes the link's place.
    subprocess.run(["rm", "-rf", str(where)], check=True)
    agent.call(ATTACH, {"vol_id": vid, "connection_info": local_info(dev)})
    where.unlink()
    put()
    # A same-info re-attach does not replace it ...
    err = agent.error(
        ATTACH, {"vol_id": vid, "connection_info": local_info(dev)}
    )
    assert err.code == 931
    # ... nor does a detach remove it; the row stays attached.
    err = agent.error(DETACH, [vid])
    assert err.code == 931
    assert rows(agent) == [(vid, "attached")]
    assert brick_calls(agent, vid) == ["connect"]
    still_there()
    # Start-up reconciliation leaves it alone too (and starts).
    agent.restart()
    still_there()
    assert "is not a symlink; leaving it alone" in agent.log()
    subprocess.run(["rm", "-rf", str(where)], check=True)
    assert agent.call(DETACH, [vid]) is True
    assert rows(agent) == []
