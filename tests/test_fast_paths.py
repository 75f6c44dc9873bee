"""The code paths that exist for speed give the same answers as the slow
ones: orjson with its fallbacks, the client's buffer, answers of one read
sent together, requests answered inline (no task) like every other,
the database Lane, reads on the event loop, the cached
table of volumes_info, and owner checks folded into database writes,
``exists`` of many volumes from one /proc/partitions read."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent, Loops, local_info, new_vol_id
from dbfiles import opened_connections
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ATTACH, DETACH, INFO

from hostagent import api, db, jsoncodec
from hostagent.client import Client, decode
from hostagent.db import ATTACHED, Database, DatabaseBusy, VolumeRecord
from hostagent.service.lane import Lane
from hostagent.udev import devices_with_media


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


# -- the client's decoder ----------------------------------------------------

big_ints = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from(
        [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]
    ),
)
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        big_ints,
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
        # digit runs inside strings look like numbers to a byte scan
        st.from_regex(r"[:,\[][0-9]{17,22}", fullmatch=True),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(values, st.sampled_from([None, 0, 2]), st.booleans())
def test_decode_is_json_loads(
    value: Any, indent: int | None, ascii_only: bool
) -> None:
    """Big integers stay exact; lone surrogates and odd spacing parse."""
    line = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode(
        "utf-8", "surrogatepass"
    )
    try:
        expected = json.loads(line)
    except ValueError:  # raw lone surrogates: not UTF-8 at all
        with pytest.raises(ValueError):
            decode(line)
        return
    assert same(decode(line), expected)
    assert same(decode(bytearray(line)), expected)


def test_decode_what_orjson_refuses() -> None:
    assert decode(b'{"id":"\\ud800"}') == {"id": "\ud800"}
    assert same(decode(b"[18446744073709551616]"), [2**64])
    assert same(decode(b"99999999999999999999"), 99999999999999999999)
    assert same(decode(b"[1.5e300, -0.0]"), [1.5e300, -0.0])
    with pytest.raises(ValueError):
        decode(b'{"a":')


# -- the daemon's encoder ----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(values)
def test_dumps_is_one_valid_line(value: Any) -> None:
    line = api.dumps({"jsonrpc": "2.0", "result": value, "id": 1})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert same(json.loads(line)["result"], value)


def test_dumps_falls_back_for_what_orjson_refuses() -> None:
    for value in (2**64, -(2**63) - 1, "\ud800", {1: "a"}):
        line = api.dumps({"id": value})
        assert line.endswith(b"\n")
        assert json.loads(line) == json.loads(json.dumps({"id": value}))


def test_dumps_refuses_what_the_standard_encoder_refuses() -> None:
    @dataclasses.dataclass
    class Secretive:
        password: str

    with pytest.raises(TypeError):
        api.dumps({"result": Secretive("x")})


def test_big_integer_id_comes_back_exact(agent: Agent) -> None:
    """The daemon's fallback encoder and the client's fallback parser."""
    rid = 2**70 + 1
    with agent.client() as c:
        c.send({"jsonrpc": "2.0", "id": rid, "method": "Host.ping"})
        answer = c.recv()
    assert same(answer, {"jsonrpc": "2.0", "result": True, "id": rid})


def test_encoded_values_are_written_as_the_values_themselves() -> None:
    """An Encoded entry reads back as its value, with either encoder."""
    entry = {"vol_id": "v", "data": {"lun": 3, "portal": "x:1"}, "ok": True}
    piece = jsoncodec.encoded(entry)
    assert isinstance(piece, jsoncodec.Encoded)
    for rid in (1, 2**70 + 1):  # orjson, then the standard encoder
        line = api.dumps({"id": rid, "result": [piece, piece]})
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert same(json.loads(line), {"id": rid, "result": [entry, entry]})
    big = {"lun": 2**70}
    assert jsoncodec.encoded(big) is big  # orjson refuses: left plain


def test_volumes_info_with_an_integer_orjson_refuses(
    agent: Agent, loops: Loops
) -> None:
    """A client's 70-bit integer in connection info comes back exact."""
    vid = new_vol_id()
    info = local_info(loops.create())
    info["data"]["cookie"] = 2**70 + 3
    agent.call(ATTACH, [vid, info])
    try:
        for _ in range(2):  # built, then from the kept entries
            with agent.client() as c:
                c.send({"jsonrpc": "2.0", "id": 1, "method": INFO})
                (volume,) = c.recv()["result"]
            assert volume["connection_info"]["data"]["cookie"] == 2**70 + 3
    finally:
        agent.call(DETACH, [vid])


# -- the client's buffer -----------------------------------------------------


def serve_once(path: str, data: bytes, chunk: int) -> threading.Thread:
    """A peer that sends ``data`` in ``chunk``-byte writes, then closes."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)

    def run() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                for i in range(0, len(data), chunk):
                    conn.sendall(data[i : i + chunk])
                    time.sleep(0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_recv_splits_lines_whatever_the_chunks(
    tmp_path: Path, chunk: int
) -> None:
    big = {"result": ["x" * 1000] * 300, "id": 2}
    lines = [{"id": 1}, big, {"id": 3}, {"method": "Event", "params": {}}]
    data = b"".join(json.dumps(m).encode() + b"\n" for m in lines)
    path = str(tmp_path / "s")
    thread = serve_once(path, data, chunk)
    with Client(path, timeout=10) as c:
        assert [c.recv() for _ in lines] == lines
        with pytest.raises(ConnectionError):
            c.recv()
    thread.join(10)


# -- answers of one read, one write -----------------------------------------


def ping(i: int) -> bytes:
    return b'{"jsonrpc":"2.0","id":%d,"method":"Host.ping"}\n' % i


def test_inline_answers_around_a_waiting_request(agent: Agent) -> None:
    info = (
        b'{"jsonrpc":"2.0","id":"i","method":"ManagedVolume.volumes_info"}\n'
    )
    data = ping(1) + ping(2) + info + ping(3) + b"\n" + ping(4)
    got = {a["id"]: a.get("result") for a in agent.exchange(data)}
    assert got == {1: True, 2: True, 3: True, 4: True, "i": []}


def test_answers_held_for_one_write_go_before_a_too_large_error(
    agent: Agent,
) -> None:
    huge = b'{"jsonrpc":"2.0","id":9,"method":"Host.ping","params":["'
    huge += b"x" * (1024 * 1024 + 10) + b'"]}\n'
    got = agent.exchange(ping(1) + ping(2) + huge)
    assert [a.get("id") for a in got[:2]] == [1, 2]
    assert got[2]["error"]["code"] == -32600
    assert len(got) == 3


def test_inline_answers_of_a_last_read_without_newline(agent: Agent) -> None:
    got = agent.exchange(ping(1) + ping(2) + ping(3).rstrip(b"\n"))
    assert [a["id"] for a in got] == [1, 2, 3]


# -- requests answered inline (no task) --------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "fragment"),
    [
        ("Host.ping", {"x": 1}, "unexpected keyword argument 'x'"),
        ("Host.ping", [1, 2], "too many positional arguments"),
        ("rpc.discover", {"all": True}, "unexpected keyword argument"),
    ],
)
def test_bad_params_of_an_immediate_method(
    agent: Agent, method: str, params: Any, fragment: str
) -> None:
    err = agent.error(method, params)
    assert err.code == -32602
    assert err.message.startswith(f"bad params for {method}: ")
    assert fragment in err.message


def test_ping_params_may_be_empty_either_way(agent: Agent) -> None:
    assert agent.call("Host.ping", []) is True
    assert agent.call("Host.ping", {}) is True


def test_many_pipelined_pings_in_one_write(agent: Agent) -> None:
    n = 500
    data = b"".join(ping(i) for i in range(n))
    responses = agent.exchange(data, expect=n)
    assert [r["id"] for r in responses] == list(range(n))
    assert all(r["result"] is True for r in responses)


def test_ping_does_not_wait_for_an_in_flight_slot(
    agent_factory: Any,
) -> None:
    """With one slot taken by a slow request, a ping still gets through."""
    agent = agent_factory()
    agent.configure(server={"max_in_flight": 1})
    agent.start()
    responses = agent.exchange(
        b'{"jsonrpc":"2.0","id":"caps","method":"Host.getCapabilities"}\n'
        b'{"jsonrpc":"2.0","id":"ping","method":"Host.ping"}\n',
        expect=2,
    )
    assert [r["id"] for r in responses] == ["ping", "caps"]


# -- the Lane ----------------------------------------------------------------


def test_lane_runs_in_order_on_one_thread_and_raises() -> None:
    lane = Lane("t")

    async def scenario() -> list[Any]:
        seen: list[int] = []
        threads: set[str] = set()

        def work(i: int) -> int:
            seen.append(i)
            threads.add(threading.current_thread().name)
            return i * 2

        results = await asyncio.gather(
            *(lane.call(work, i) for i in range(50))
        )
        assert seen == list(range(50))
        assert threads == {"t_0"}

        def boom() -> None:
            raise KeyError("x")

        with pytest.raises(KeyError):
            await lane.call(boom)
        return list(results)

    assert asyncio.run(scenario()) == [i * 2 for i in range(50)]
    lane.shutdown()
    with pytest.raises(RuntimeError):
        asyncio.run(_call(lane))


async def _call(lane: Lane) -> None:
    await lane.call(lambda: None)


def test_lane_skips_cancelled_calls_and_drains_at_shutdown() -> None:
    lane = Lane("t")
    ran: list[str] = []
    gate = threading.Event()

    async def scenario() -> None:
        first = lane.call(gate.wait, 10)
        skipped = lane.call(ran.append, "cancelled")
        last = lane.call(ran.append, "last")
        skipped.cancel()
        gate.set()
        assert await first is True
        await last

    asyncio.run(scenario())
    assert ran == ["last"]

    async def queued() -> None:
        lane.call(time.sleep, 0.05)
        lane.call(ran.append, "after shutdown")

    asyncio.run(queued())  # the loop is gone before the calls finish
    lane.shutdown(wait=True)
    assert ran == ["last", "after shutdown"]


# -- the database ------------------------------------------------------------


def record(vol_id: str, path: str, mpath: str | None = None) -> VolumeRecord:
    return VolumeRecord(
        vol_id=vol_id,
        connection_info=local_info(path),
        path=path,
        attachment={"path": path, "type": "local"},
        multipath_id=mpath,
        state=ATTACHED,
        last_error=None,
        created=1.0,
        updated=1.0,
    )


@pytest.fixture
def database(tmp_path: Path) -> Any:
    d = Database(tmp_path / "hostagent.db")
    d.open()
    yield d
    d.close()


def test_peek_sees_every_committed_write(database: Database) -> None:
    assert database.peek("v1") is None
    database.insert("v1", local_info("/dev/x"))
    rec = database.peek("v1")
    assert rec is not None and rec.state == "attaching"
    database.set_attached("v1", "/dev/x", {"path": "/dev/x"}, None)
    assert database.peek("v1") == database.get("v1")
    database.delete("v1")
    assert database.peek("v1") is None


def test_peek_never_waits(database: Database, tmp_path: Path) -> None:
    """Another connection holds the file exclusively: peek says so at
    once instead of waiting (the service then asks the database thread),
    and reads again once the lock is gone."""
    database.insert("v1", local_info("/dev/x"))
    database.close()
    other = sqlite3.connect(tmp_path / "hostagent.db", isolation_level=None)
    other.execute("PRAGMA locking_mode = EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    reader = Database(tmp_path / "hostagent.db")
    started = time.monotonic()
    with pytest.raises(DatabaseBusy):
        reader.peek("v1")
    assert time.monotonic() - started < 1.0
    other.execute("COMMIT")
    other.close()
    rec = reader.peek("v1")
    assert rec is not None and rec.vol_id == "v1"
    reader.close()


def test_peek_is_query_only(database: Database) -> None:
    with opened_connections() as made:
        database.peek("v1")
    (reader,) = made
    with pytest.raises(sqlite3.OperationalError):
        reader.execute("DELETE FROM volume")


def test_stored_table_is_read_again_only_after_a_change(
    database: Database, tmp_path: Path
) -> None:
    db.insert_many(database, [record("v1", "/dev/a"), record("v2", "/dev/b")])
    first = database.stored()
    assert [r[0] for r in first] == ["v1", "v2"]
    assert database.stored() is first
    database.set_state("v1", "detaching")
    second = database.stored()
    assert second is not first and second[0][5] == "detaching"
    assert database.stored() is second
    # Another connection's commit (an operator's sqlite3) is seen too.
    with sqlite3.connect(tmp_path / "hostagent.db") as other:
        other.execute("DELETE FROM volume WHERE vol_id = 'v2'")
    assert [r[0] for r in database.stored()] == ["v1"]
    assert [r[0] for r in database.stored(["v1", "v1", "nope"])] == ["v1"]
    database.close()
    database.open()
    assert [r[0] for r in database.stored()] == ["v1"]


def test_set_attached_refuses_another_volumes_device(
    database: Database,
) -> None:
    db.insert_many(database, [record("v1", "/dev/a", "mp1")])
    database.insert("v2", local_info("/dev/a"))
    assert database.set_attached("v2", "/dev/a", {}, None) == "v1"
    assert database.set_attached("v2", "/dev/z", {}, "mp1") == "v1"
    rec = database.get("v2")
    assert rec is not None and rec.state == "attaching" and rec.path is None
    assert database.set_attached("v2", "/dev/b", {}, "mp2") is None
    rec = database.get("v2")
    assert rec is not None and rec.state == ATTACHED


# -- the service's folded owner checks ---------------------------------------


def test_detach_keeps_a_device_another_row_uses(
    agent: Agent, loops: Loops
) -> None:
    """Two rows on one device (written by hand): detaching one does not
    disconnect the device of the other."""
    dev = loops.create()
    first, second = sorted([new_vol_id(), new_vol_id()])
    agent.call(ATTACH, [first, local_info(dev)])
    agent.stop()
    with sqlite3.connect(agent.db_path) as con:
        con.execute(
            "INSERT INTO volume (vol_id, connection_info, path, attachment,"
            " state, created, updated) SELECT ?, connection_info, path,"
            " attachment, state, created, updated FROM volume"
            " WHERE vol_id = ?",
            (second, first),
        )
    agent.start()
    assert agent.call(DETACH, [first]) is True
    agent.wait_log(
        f"device {dev} is also volume {second}'s; not disconnecting"
    )
    info = agent.call(INFO)
    assert [(v["vol_id"], v["exists"]) for v in info] == [(second, True)]
    assert agent.links() == [second]


# -- exists of many volumes: one /proc/partitions read ---------------------


def test_devices_with_media_follows_the_loop_device(loops: Loops) -> None:
    dev = loops.create()
    number = os.stat(dev).st_rdev
    assert number in devices_with_media()
    loops.detach(dev)
    assert number not in devices_with_media()


def test_exists_of_several_volumes(agent: Agent, loops: Loops) -> None:
    devs = [loops.create() for _ in range(3)]
    vids = [new_vol_id() for _ in devs]
    for vid, dev in zip(vids, devs, strict=True):
        agent.call(
            ATTACH,
            {"vol_id": vid, "connection_info": local_info(dev)},
        )
    loops.detach(devs[1])
    exists = {v["vol_id"]: v["exists"] for v in agent.call(INFO)}
    assert exists == {vids[0]: True, vids[1]: False, vids[2]: True}


def test_another_volumes_secret_changes_no_entry(
    agent: Agent, loops: Loops
) -> None:
    """Results are masked by key alone: a string that one caller uses as
    a secret is shown as it is under another volume's plain keys (else a
    caller could rewrite everyone's volumes_info), also by the entries
    volumes_info keeps between calls."""
    first, second = new_vol_id(), new_vol_id()
    agent.call(
        ATTACH,
        {
            "vol_id": first,
            "connection_info": local_info(loops.create(), note="s3cret-xyz"),
        },
    )
    (info,) = agent.call(INFO)
    assert info["connection_info"]["data"]["note"] == "s3cret-xyz"
    agent.call(
        ATTACH,
        {
            "vol_id": second,
            "connection_info": local_info(
                loops.create(), auth_password="s3cret-xyz"
            ),
        },
    )
    for _ in range(2):  # the first answer builds entries, the next keeps
        shown = {
            v["vol_id"]: v["connection_info"]["data"] for v in agent.call(INFO)
        }
        assert shown[first]["note"] == "s3cret-xyz"
        assert shown[second]["auth_password"] == "***"
