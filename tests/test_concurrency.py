"""Many real clients on one volume of the real daemon at once.

Proof that one volume never gets two connects: the daemon logs
"volume <id>: connecting" right before os-brick's connect_volume and
"volume <id>: disconnecting" right before disconnect_volume; in one run
of the daemon these must strictly alternate, starting with a connect.
"""

from __future__ import annotations

import json
import random
import socket
import sqlite3
import threading
import time
from typing import Any

from conftest import Agent, Loops, brick_calls, local_info, new_vol_id
from support import ATTACH, DETACH, FAILPOINTS, INFO, line, req

from hostagent.client import RpcError


def db_rows(agent: Agent) -> list[tuple[str, str]]:
    """(vol_id, state) of every row, read with plain sqlite3."""
    with sqlite3.connect(agent.db_path) as con:
        return con.execute("SELECT vol_id, state FROM volume").fetchall()


def test_many_clients_attach_and_detach_one_volume(
    agent_factory: Any, loops: Loops
) -> None:
    clients, rounds = 12, 10
    a: Agent = agent_factory(
        env={
            # Stand-ins for slow storage, so that operations overlap.
            FAILPOINTS: "brick.after_connect_volume=sleep:0.01,"
            "detach.after_unlink=sleep:0.01"
        }
    )
    a.start()
    dev = loops.create()
    vid = new_vol_id()
    info = local_info(dev)
    start = threading.Barrier(clients)
    outcomes: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with a.client(timeout=60) as c:
            start.wait()
            for _ in range(rounds):
                op = rng.choice(("attach", "detach", "info"))
                try:
                    if op == "attach":
                        result = c.call(ATTACH, [vid, info])
                    elif op == "detach":
                        result = c.call(DETACH, [vid])
                    else:
                        result = c.call(INFO, [[vid]])
                except RpcError as e:
                    result = e
                with lock:
                    outcomes.append((op, result))

    threads = [
        threading.Thread(target=worker, args=(i,)) for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(outcomes) == clients * rounds
    errors = [r for _, r in outcomes if isinstance(r, RpcError)]
    assert not errors, errors
    for op, result in outcomes:
        if op == "attach":
            assert result["path"] == dev
            assert result["vol_id"] == vid
        elif op == "detach":
            assert result is True
        else:
            assert all(
                v["state"] in ("attaching", "attached", "detaching")
                for v in result
            )

    seq = brick_calls(a, vid)
    assert seq, "no attach ever connected"
    for i, e in enumerate(seq):
        assert e == ("connect" if i % 2 == 0 else "disconnect"), seq
    # The last event tells whether the volume must be attached now.
    attached = seq[-1] == "connect"
    assert db_rows(a) == ([(vid, "attached")] if attached else [])
    assert a.links() == ([vid] if attached else [])
    attaches = sum(1 for op, _ in outcomes if op == "attach")
    print(
        f"\n{clients} clients, {len(outcomes)} calls ({attaches} attaches):"
        f" {seq.count('connect')} connects,"
        f" {seq.count('disconnect')} disconnects"
    )


def test_busy_volume_waits_then_927(agent_factory: Any, loops: Loops) -> None:
    """A second operation waits ``storage.lock_timeout``, then gets 927.

    The first attach pauses (fail point, once) inside its flow, holding
    the volume's lock; another volume attaches meanwhile.
    """
    lock_timeout = 0.3
    a: Agent = agent_factory(
        env={FAILPOINTS: "attach.after_connect=1*sleep:3"}
    )
    a.configure(storage={"lock_timeout": lock_timeout})
    a.start()
    dev, other_dev = loops.create(), loops.create()
    vid, other = new_vol_id(), new_vol_id()
    first: dict[str, Any] = {}

    def slow_attach() -> None:
        first["result"] = a.call(ATTACH, [vid, local_info(dev)])

    t = threading.Thread(target=slow_attach)
    t.start()
    deadline = 200
    while "fail point attach.after_connect" not in a.log() and deadline:
        deadline -= 1
        t.join(0.05)
    assert deadline, "the first attach never reached its fail point"

    (row,) = a.call(INFO, [[vid]])
    assert row["state"] == "attaching"
    for method, params in ((ATTACH, [vid, local_info(dev)]), (DETACH, [vid])):
        started = time.monotonic()
        err = a.error(method, params)
        waited = time.monotonic() - started
        assert err.code == 927
        assert "in progress" in err.message
        # It waited for the lock before giving up (a generous bound).
        assert waited >= 0.8 * lock_timeout, (method, waited)
    # Other volumes are not held up by this one.
    assert a.call(ATTACH, [other, local_info(other_dev)])["path"] == other_dev
    assert t.is_alive(), "the first attach ended before the checks"

    t.join(30)
    assert first["result"]["path"] == dev
    assert brick_calls(a, vid) == ["connect"]
    # Now free: the same call that got 927 succeeds (idempotent).
    assert a.call(ATTACH, [vid, local_info(dev)]) == first["result"]
    assert brick_calls(a, vid) == ["connect"]
    assert a.call(DETACH, [vid]) is True
    assert a.call(DETACH, [other]) is True
    assert db_rows(a) == []


def test_later_request_on_one_connection_is_answered_first(
    agent_factory: Any, loops: Loops
) -> None:
    """On one connection, a slow attach does not hold up what follows.

    The attach waits inside os-brick's connect_volume (fail point); a
    volumes_info and a ping sent after it on the same connection are
    answered first, then the attach, each with its own id.
    """
    a: Agent = agent_factory(
        env={FAILPOINTS: "brick.after_connect_volume=sleep:1.5"}
    )
    a.start()
    dev = loops.create()
    vid = new_vol_id()

    answers: list[tuple[float, dict[str, Any]]] = []
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(a.socket)
        reader = s.makefile("rb")
        s.sendall(line(req(ATTACH, 1, [vid, local_info(dev)])))
        a.wait_log("fail point brick.after_connect_volume: sleep")
        sent = time.monotonic()
        s.sendall(line(req(INFO, 2, [[vid]]), req("Host.ping", 3)))
        for _ in range(3):
            answer = reader.readline()
            answers.append((time.monotonic() - sent, json.loads(answer)))
    # The ping is answered inline, the info from the database thread:
    # either may come first, both before the attach.
    by_id = {answer["id"]: answer for _, answer in answers}
    assert answers[2][1]["id"] == 1, answers
    info, ping, attach = by_id[2], by_id[3], by_id[1]
    (row,) = info["result"]
    assert (row["vol_id"], row["state"]) == (vid, "attaching")
    assert ping["result"] is True
    assert attach["result"]["path"] == dev
    assert attach["result"]["vol_id"] == vid
    assert brick_calls(a, vid) == ["connect"]
    assert a.call(DETACH, [vid]) is True
