"""The bad-input catalogue: each gets a clear error, nothing changes.

One daemon with one attached volume (a real loop device) answers every
case; after each, the daemon must be alive, answer a ping, the database
must hold exactly the rows it held before and pass its integrity check,
and the managed symlink must still be there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Agent, agent_with_loops, local_info, release
from support import ATTACH, DETACH, EXTEND, INFO, notification, req

SEEDED = "7f0e4c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"


@dataclass
class Seeded:
    """The daemon under test and what it holds."""

    agent: Agent
    device: str


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A daemon with one volume attached (module-wide: cases only read)."""
    agent, loops = agent_with_loops(tmp_path_factory.mktemp("badinput"))
    agent.start()
    try:
        dev = loops.create()
        info = local_info(dev, auth_password="catalogue-pw")
        agent.call(ATTACH, {"vol_id": SEEDED, "connection_info": info})
        yield Seeded(agent, dev)
    finally:
        release(agent, loops, [SEEDED])


def snapshot(agent: Agent) -> list[Any]:
    """Every row of every table, and the integrity check's verdict."""
    with sqlite3.connect(agent.db_path) as con:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type='table' "
                "ORDER BY name"
            )
        ]
        out: list[Any] = [con.execute("PRAGMA integrity_check").fetchall()]
        for t in tables:
            out.append((t, con.execute(f"SELECT * FROM {t}").fetchall()))
    return out


def msg(method: str, params: Any = None, rid: Any = 1) -> dict[str, Any]:
    """A request; a notification when ``rid`` is None."""
    if rid is None:
        return notification(method, params)
    return req(method, rid, params)


def line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def envelope(params_json: bytes, method: str = INFO) -> bytes:
    """A request whose params are given as raw JSON text."""
    return (
        b'{"jsonrpc":"2.0","id":1,"method":"'
        + method.encode()
        + b'","params":'
        + params_json
        + b"}\n"
    )


def uuids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i)) for i in range(1, n + 1)]


DEEP = 100_000
OTHER_DEV = "/dev/null"  # only used where validation must stop first
NEW = "0d6c4c53-51b7-4f0e-9d8e-6b1f0f7e3a21"  # a volume never attached
FORGED = "2026-12-07 13:00:00,000 CRITICAL hostagent: FORGED root pwned"

# (name, payload, expected): expected is a list of (code, fragment) for
# each answer, [] when no answer may come at all.
CASES: list[tuple[str, bytes, list[tuple[int, str]]]] = [
    # -- bytes that are not JSON --------------------------------------
    (
        "invalid utf-8",
        envelope(b'["\xff\xfe"]'),
        [(-32700, "not valid UTF-8")],
    ),
    (
        "overlong utf-8",
        envelope(b'["\xc0\xaf"]'),
        [(-32700, "not valid UTF-8")],
    ),
    (
        "utf-8 encoded surrogate",
        envelope(b'["\xed\xa0\x80"]'),
        [(-32700, "not valid UTF-8")],
    ),
    ("truncated", b'{"jsonrpc":"2.0","id":1,"meth\n', [(-32700, "parse")]),
    ("nul byte", b"\x00\n", [(-32700, "parse error")]),
    # -- sizes and depths ---------------------------------------------
    (
        # Refused whole: the DB shows that no detach in it ran.
        "batch of 10,000 requests",
        line(
            [msg(DETACH, [SEEDED], i) for i in range(1_000)]
            + [msg("Host.ping", rid=None)] * 9_000
        ),
        [(-32600, "batch of 10000 requests; at most 100 are allowed")],
    ),
    (
        "array of 10,000 numbers",
        line(list(range(10_000))),
        [(-32600, "batch of 10000 requests")],
    ),
    (
        "10,000 positional params",
        line(msg("Host.ping", list(range(10_000)))),
        [(-32602, "bad params for Host.ping: too many positional")],
    ),
    (
        "10,000 vol_ids, the last bad",
        line(msg(INFO, {"vol_ids": [*uuids(9_999), "../x"]})),
        [(-32602, "vol_ids[9999] must be a UUID")],
    ),
    (
        f"arrays nested {DEEP} deep",
        b"[" * DEEP + b"]" * DEEP + b"\n",
        [(-32700, "nested too deeply")],
    ),
    (
        f"objects nested {DEEP} deep",
        b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"\n",
        [(-32700, "nested too deeply")],
    ),
    (
        f"unclosed nesting {DEEP} deep",
        b"[" * DEEP + b"\n",
        [(-32700, "parse error")],
    ),
    (
        "params nested 200 deep",
        envelope(b'{"vol_ids":' + b"[" * 200 + b"]" * 200 + b"}"),
        [(-32700, "nested more than 64 levels")],
    ),
    (
        "connection_info nested 500 deep",
        envelope(
            b'{"vol_id":"'
            + str(uuid.uuid4()).encode()
            + b'","connection_info":{"driver_volume_type":"local","data":'
            + b'{"x":' * 500
            + b"1"
            + b"}" * 501
            + b"}",
            ATTACH,
        ),
        [(-32700, "nested more than 64 levels")],
    ),
    # -- numbers JSON cannot carry ------------------------------------
    ("1e999 as a param", envelope(b"[[1e999]]"), [(-32700, "out of range")]),
    ("-1e999 as an id", b'{"id":-1e999}\n', [(-32700, "out of range")]),
    ("NaN", envelope(b"[NaN]"), [(-32700, "NaN is not valid JSON")]),
    ("Infinity", envelope(b"[Infinity]"), [(-32700, "Infinity")]),
    # -- not a request ------------------------------------------------
    ("a string", b'"ManagedVolume.detach_volume"\n', [(-32600, "object")]),
    ("a number", b"42\n", [(-32600, "expected a JSON object")]),
    ("null", b"null\n", [(-32600, "expected a JSON object")]),
    ("empty batch", b"[]\n", [(-32600, "empty batch")]),
    (
        "no jsonrpc member",
        b'{"id":1,"method":"Host.ping"}\n',
        [(-32600, '"jsonrpc" must be "2.0"')],
    ),
    (
        "params a string",
        b'{"jsonrpc":"2.0","id":1,"method":"Host.ping","params":"x"}\n',
        [(-32600, '"params" must be an array or an object')],
    ),
    (
        "id an object",
        b'{"jsonrpc":"2.0","id":{"a":1},"method":"Host.ping"}\n',
        [(-32600, '"id" must be a string, an integer or null')],
    ),
    ("unknown method", line(msg("Host.reboot")), [(-32601, "no such method")]),
    # -- params: missing, extra, wrongly typed ------------------------
    (
        "attach without connection_info",
        line(msg(ATTACH, {"vol_id": str(uuid.uuid4())})),
        [(-32602, "missing a required argument: 'connection_info'")],
    ),
    (
        "attach without params",
        line(msg(ATTACH)),
        [(-32602, "missing a required argument: 'vol_id'")],
    ),
    (
        "attach with an extra param",
        line(
            msg(
                ATTACH,
                {
                    "vol_id": str(uuid.uuid4()),
                    "connection_info": local_info(OTHER_DEV),
                    "force": True,
                },
            )
        ),
        [(-32602, "unexpected keyword argument 'force'")],
    ),
    (
        "attach with four positional params",
        line(msg(ATTACH, [str(uuid.uuid4()), local_info(OTHER_DEV), None, 1])),
        [(-32602, "too many positional arguments")],
    ),
    (
        "vol_id a number",
        line(msg(DETACH, {"vol_id": 5})),
        [(-32602, "vol_id must be a string")],
    ),
    (
        "vol_ids not an array",
        line(msg(INFO, {"vol_ids": SEEDED})),
        [(-32602, "vol_ids must be an array or null")],
    ),
    (
        "connection_info a string",
        line(msg(ATTACH, [str(uuid.uuid4()), "local"])),
        [(-32602, "connection_info must be an object")],
    ),
    (
        "connection_info an array",
        line(msg(ATTACH, [str(uuid.uuid4()), [local_info(OTHER_DEV)]])),
        [(-32602, "connection_info must be an object")],
    ),
    (
        "connection_info without data",
        line(msg(ATTACH, [str(uuid.uuid4()), {"driver_volume_type": "x"}])),
        [(-32602, "connection_info.data is required")],
    ),
    (
        "data not an object",
        line(
            msg(
                ATTACH,
                [
                    str(uuid.uuid4()),
                    {"driver_volume_type": "local", "data": [1]},
                ],
            )
        ),
        [(-32602, "connection_info.data must be an object")],
    ),
    (
        "unknown driver",
        line(
            msg(
                ATTACH,
                [str(uuid.uuid4()), {"driver_volume_type": "zip", "data": {}}],
            )
        ),
        [(2009, "zip")],
    ),
    # -- vol_id not a UUID --------------------------------------------
    (
        "vol_id path traversal",
        line(msg(DETACH, ["../../../etc/passwd"])),
        [(-32602, "vol_id must be a UUID")],
    ),
    (
        "vol_id traversal on attach",
        line(msg(ATTACH, ["../../" + SEEDED[6:], local_info(OTHER_DEV)])),
        [(-32602, "vol_id must be a UUID")],
    ),
    ("vol_id empty", line(msg(DETACH, [""])), [(-32602, "must be a UUID")]),
    (
        "vol_id 10 KB",
        line(msg(DETACH, ["a" * 10240])),
        [(-32602, "vol_id is longer than 36 characters")],
    ),
    (
        "vol_id upper case",
        line(msg(DETACH, [SEEDED.upper()])),
        [(-32602, "vol_id must be a UUID")],
    ),
    (
        "vol_id with a newline escape",
        line(msg(DETACH, [SEEDED + "\n"])),
        [(-32602, "vol_id")],
    ),
    # -- control characters in any string param (issue 17) -----------
    (
        "NUL in device_path",
        line(msg(ATTACH, [NEW, local_info("/dev/loop0\x00/etc/passwd")])),
        [
            (
                -32602,
                "connection_info.data.device_path holds control "
                "character U+0000 at offset 10",
            )
        ],
    ),
    (
        "newline in device_path",
        line(msg(ATTACH, [NEW, local_info(f"/dev/x\n{FORGED}")])),
        [(-32602, "device_path holds control character U+000A")],
    ),
    (
        "C1 control character deep in connection info",
        line(
            msg(
                ATTACH,
                [NEW, local_info(OTHER_DEV, extra={"list": ["ok", "a\x85b"]})],
            )
        ),
        [
            (
                -32602,
                "connection_info.data.extra.list[1] holds control "
                "character U+0085",
            )
        ],
    ),
    (
        "DEL in the driver name",
        line(
            msg(
                ATTACH,
                [NEW, {"driver_volume_type": "local\x7f", "data": {}}],
            )
        ),
        [(-32602, "connection_info.driver_volume_type holds control")],
    ),
    (
        "control character in a key",
        line(msg(ATTACH, [NEW, local_info(OTHER_DEV, **{"a\tb": 1})])),
        [(-32602, "a key in connection_info.data holds a control")],
    ),
    (
        "tab in a detach's vol_id",
        line(msg(DETACH, {"vol_id": SEEDED + "\t"})),
        [(-32602, "vol_id")],
    ),
    # -- one key twice in an object (issue 17) -------------------------
    (
        "duplicate method: the later one must not run",
        b'{"jsonrpc":"2.0","id":1,"method":"Host.ping","method":"'
        + DETACH.encode()
        + b'","params":["'
        + SEEDED.encode()
        + b'"]}\n',
        [(-32600, "key 'method' appears twice in one JSON object")],
    ),
    (
        "duplicate method: the earlier one must not run",
        b'{"jsonrpc":"2.0","id":1,"method":"'
        + DETACH.encode()
        + b'", "method" : "Host.ping","params":["'
        + SEEDED.encode()
        + b'"]}\n',
        [(-32600, "key 'method' appears twice")],
    ),
    (
        "duplicate key spelled with an escape",
        b'{"jsonrpc":"2.0","id":1,"method":"Host.ping",'
        b'"\\u006dethod":"No.such"}\n',
        [(-32600, "key 'method' appears twice")],
    ),
    (
        "duplicate params",
        b'{"jsonrpc":"2.0","id":1,"method":"'
        + DETACH.encode()
        + b'","params":["'
        + SEEDED.encode()
        + b'"],"params":[]}\n',
        [(-32600, "key 'params' appears twice")],
    ),
    (
        "duplicate key deep in connection info",
        envelope(
            b'["' + NEW.encode() + b'",{"driver_volume_type":"local",'
            b'"data":{"device_path":"/dev/null","x":{"a":[{"k":1,"k":2}]}}}]',
            ATTACH,
        ),
        [(-32600, "key 'k' appears twice")],
    ),
    (
        "duplicate id in a batch member",
        b'[{"jsonrpc":"2.0","id":1,"id":2,"method":"Host.ping"}]\n',
        [(-32600, "key 'id' appears twice")],
    ),
    (
        "duplicate keys in a notification",
        b'{"jsonrpc":"2.0","method":"' + DETACH.encode() + b'",'
        b'"params":{"vol_id":"' + SEEDED.encode() + b'","vol_id":"x"}}\n',
        [(-32600, "key 'vol_id' appears twice")],
    ),
    # -- the seeded volume itself -------------------------------------
    (
        "attach the seeded volume with other info",
        line(msg(ATTACH, [SEEDED, local_info(OTHER_DEV)])),
        [(929, "already attached with different connection info")],
    ),
    # -- notifications: never an answer -------------------------------
    ("notification ping", line(msg("Host.ping", rid=None)), []),
    ("notification unknown method", line(msg("No.such", rid=None)), []),
    (
        "notification with bad params",
        line(msg(DETACH, ["../x"], rid=None)),
        [],
    ),
    (
        "notification detach of an unknown volume",
        line(msg(DETACH, [str(uuid.uuid4())], rid=None)),
        [],
    ),
    (
        "batch of notifications",
        line([msg("Host.ping", rid=None), msg(DETACH, [""], rid=None)]),
        [],
    ),
]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [pytest.param(p, e, id=n) for n, p, e in CASES],
)
def test_bad_input(
    seeded: Seeded, payload: bytes, expected: list[tuple[int, str]]
) -> None:
    agent = seeded.agent
    before = snapshot(agent)
    assert before[0] == [("ok",)]
    answers = agent.exchange(payload)
    assert len(answers) == len(expected), answers
    for answer, (code, fragment) in zip(answers, expected, strict=True):
        assert answer["jsonrpc"] == "2.0"
        assert "result" not in answer
        assert answer["error"]["code"] == code, answer
        assert fragment in answer["error"]["message"], answer
        assert len(answer["error"]["message"]) < 500
        assert "catalogue-pw" not in json.dumps(answer)
    assert agent.alive()
    assert agent.call("Host.ping") is True
    assert snapshot(agent) == before
    assert agent.links() == [SEEDED]
    (info,) = agent.call(INFO)
    assert info["vol_id"] == SEEDED and info["exists"] is True


def test_large_valid_array_is_answered(seeded: Seeded) -> None:
    """10,000 well-formed vol_ids are a valid (if large) question."""
    ids = [*uuids(9_999), SEEDED]
    (answer,) = seeded.agent.exchange(line(msg(INFO, {"vol_ids": ids})))
    assert [v["vol_id"] for v in answer["result"]] == [SEEDED]


def test_batch_at_the_limit_runs_every_request(seeded: Seeded) -> None:
    (answer,) = seeded.agent.exchange(
        line([msg("Host.ping", rid=i) for i in range(100)])
    )
    assert sorted(a["id"] for a in answer) == list(range(100))
    assert all(a["result"] is True for a in answer)


def test_lone_surrogate_id_still_gets_its_answer(seeded: Seeded) -> None:
    """ "\\ud800" is legal JSON but not UTF-8: the echo must be escaped."""
    (answer,) = seeded.agent.exchange(
        b'{"jsonrpc":"2.0","id":"\\ud800","method":"No.x"}\n'
    )
    assert answer["id"] == "\ud800"
    assert answer["error"]["code"] == -32601


def test_refused_mutating_calls_are_logged_with_their_peer(
    seeded: Seeded,
) -> None:
    """Every attach, detach and extend leaves one line naming its caller,
    also when its params are wrong or do not fit the method; the bad
    values themselves (and secrets) never reach the log."""
    agent = seeded.agent
    marker = "mark-" + uuid.uuid4().hex[:12]
    password = "pw-" + marker  # long enough to be scrubbed anyway
    shown, fits = str(uuid.uuid4()), str(uuid.uuid4())
    calls: list[tuple[bytes, str]] = [
        (line(msg(DETACH, [f"../../etc/{marker}"])), "(invalid)\n"),
        (line(msg(DETACH, {"vol_id": 5})), "(invalid)\n"),
        (line(msg(EXTEND)), "vol_id=- (refused"),
        (
            line(
                msg(
                    ATTACH,
                    {
                        "vol_id": shown,
                        "connection_info": local_info(
                            OTHER_DEV, auth_password=password
                        ),
                        marker: True,
                    },
                )
            ),
            f"vol_id={shown} (refused",
        ),
        (
            line(msg(ATTACH, [fits, local_info(password), None, 1])),
            f"vol_id={fits} (refused",
        ),
        (line(msg(ATTACH, [fits, f"local {password}"])), f"vol_id={fits}\n"),
        (line(msg(DETACH, [marker], rid=None)), "(invalid)\n"),
        (
            line([msg(EXTEND, [marker]), msg(DETACH, [SEEDED + marker])]),
            "(invalid)\n",
        ),
    ]
    start = len(agent.log())
    for payload, _ in calls:
        agent.exchange(payload)
    assert agent.call("Host.ping") is True
    log = agent.log()[start:]
    peer = f" by unix uid=0 pid={os.getpid()} vol_id="
    audit = [x for x in log.splitlines(keepends=True) if peer in x]
    assert len(audit) == len(calls) + 1, log  # the batch held two
    for (_, expected), got in zip(calls, audit, strict=False):
        assert expected in got, (expected, got)
    assert audit[-1].endswith("vol_id=(invalid)\n")
    assert marker not in log
    assert password not in log


def test_a_request_cannot_forge_a_log_line(seeded: Seeded) -> None:
    """Request values reach the log escaped: one request, its own lines.

    A newline or NUL in a param is refused before anything logs it; a
    Unicode line separator (not a control character, so a valid path)
    reaches the log, escaped; no line of the log starts with the forged
    text, whatever a reader counts as a line break.
    """
    agent = seeded.agent
    forged_paths = [
        f"/dev/x\n{FORGED}",
        f"/dev/x\r{FORGED}",
        f"/dev/x\x00\n{FORGED}",
        f"/dev/x\x85{FORGED}",
    ]
    for path in forged_paths:
        err = agent.error(ATTACH, [NEW, local_info(path)])
        assert err.code == -32602, err
    # Accepted as a path (no such device): logged, escaped.
    vid = str(uuid.uuid4())
    err = agent.error(ATTACH, [vid, local_info(f"/dev/x\u2028{FORGED}")])
    assert err.code not in (-32602, 100), err
    line_of_it = agent.wait_log(f"vol_id={vid}")  # the audit line
    assert "FORGED" not in line_of_it
    log = agent.log()
    assert "\\u2028" + FORGED in log  # the failing attach said where
    assert "\x00" not in log
    for text in log.splitlines():
        assert not text.startswith(FORGED[:30]), text
    assert agent.call(INFO, [[vid]]) == []
