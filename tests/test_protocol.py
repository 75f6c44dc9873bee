"""The wire protocol, against a real daemon over its real socket."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from typing import Any

import pytest
from conftest import Agent, need, new_vol_id
from support import ATTACH, DETACH, INFO, line, notification, req

from hostagent import schema


def test_ping(agent: Agent) -> None:
    assert agent.call("Host.ping") is True


def test_ping_with_socat(agent: Agent) -> None:
    need("socat")
    out = subprocess.run(
        ["socat", "-", f"UNIX-CONNECT:{agent.socket}"],
        input=b'{"jsonrpc":"2.0","id":1,"method":"Host.ping"}\n',
        capture_output=True,
        timeout=10,
        check=True,
    ).stdout
    assert json.loads(out) == {"jsonrpc": "2.0", "result": True, "id": 1}


def test_rpc_discover_lists_every_method(agent: Agent) -> None:
    doc = agent.call("rpc.discover")
    names = [m["name"] for m in doc["methods"]]
    assert names == [m.name for m in schema.METHODS]
    attach = next(m for m in doc["methods"] if m["name"] == ATTACH)
    assert [p["name"] for p in attach["params"]] == [
        "vol_id",
        "connection_info",
        "sd_id",
        "backend",
    ]
    assert [p["required"] for p in attach["params"]] == [
        True,
        True,
        False,
        False,
    ]


def test_persistent_connection_many_calls(agent: Agent) -> None:
    with agent.client() as c:
        for _ in range(50):
            assert c.call("Host.ping") is True


def test_pipelined_requests_are_all_answered_by_id(agent: Agent) -> None:
    messages = [req("Host.ping", i) for i in range(20)]
    messages.append(req(INFO, "info", []))
    responses = agent.exchange(line(*messages))
    assert sorted(map(str, (r["id"] for r in responses))) == sorted(
        map(str, [*range(20), "info"])
    )


def test_slow_request_does_not_hold_up_a_later_one(agent: Agent) -> None:
    """getCapabilities runs os-brick tools; a ping behind it returns first."""
    with agent.client() as c:
        c.send(req("Host.getCapabilities", "caps"))
        c.send(req("Host.ping", "ping"))
        first = c.recv()
        second = c.recv()
    assert first["id"] == "ping"
    assert second["id"] == "caps"


def test_batch(agent: Agent) -> None:
    batch = [
        req("Host.ping", 1),
        notification("Host.ping"),
        5,
        req("No.such", "x"),
    ]
    (responses,) = agent.exchange(line(batch))
    by_id = {json.dumps(r["id"]): r for r in responses}
    assert len(responses) == 3
    assert by_id["1"]["result"] is True
    assert by_id["null"]["error"]["code"] == -32600
    assert by_id['"x"']["error"]["code"] == -32601


def test_batch_mixing_plain_and_waiting_methods(agent: Agent) -> None:
    """A batch with a ping and a method that waits: both run, in order."""
    batch = [
        req("Host.ping", 1),
        req("Host.getCapabilities", 2),
        req("ManagedVolume.volumes_info", 3, {"vol_ids": []}),
        req("Host.ping", 4, ["extra"]),
    ]
    (responses,) = agent.exchange(line(batch))
    assert [r["id"] for r in responses] == [1, 2, 3, 4]
    assert responses[0]["result"] is True
    assert "version" in responses[1]["result"], responses[1]
    assert responses[2]["result"] == []
    assert responses[3]["error"]["code"] == -32602
    assert "bad params for Host.ping" in responses[3]["error"]["message"]


def test_batch_of_notifications_gets_no_answer(agent: Agent) -> None:
    batch = [notification("Host.ping")] * 3
    assert agent.exchange(line(batch, req("Host.ping", 9))) == [
        {"jsonrpc": "2.0", "result": True, "id": 9}
    ]


def test_notification_gets_no_answer(agent: Agent) -> None:
    out = agent.exchange(
        line(
            notification("Host.ping"),
            notification("No.such"),
            req("Host.ping", 2),
        ),
    )
    assert out == [{"jsonrpc": "2.0", "result": True, "id": 2}]


def test_last_line_without_newline_is_answered(agent: Agent) -> None:
    out = agent.exchange(b'{"jsonrpc":"2.0","id":3,"method":"Host.ping"}')
    assert out == [{"jsonrpc": "2.0", "result": True, "id": 3}]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{bad\n", -32700),
        (b"\xff\xfe\n", -32700),
        (b"[]\n", -32600),
        (b'"a string"\n', -32600),
        (b'{"jsonrpc":"1.0","id":1,"method":"Host.ping"}\n', -32600),
        (b'{"jsonrpc":"2.0","id":1}\n', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":5}\n', -32600),
        (b'{"jsonrpc":"2.0","id":{},"method":"Host.ping"}\n', -32600),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"Host.ping","params":3}\n',
            -32600,
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"Host.ping","x":1}\n', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"Host.nope"}\n', -32601),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"Host.ping","params":[1]}\n',
            -32602,
        ),
        (b'{"jsonrpc":"2.0","id":1e999,"method":"Host.ping"}\n', -32700),
        (b'{"jsonrpc":"2.0","id":NaN,"method":"Host.ping"}\n', -32700),
    ],
)
def test_bad_messages_get_clear_errors(
    agent: Agent, data: bytes, code: int
) -> None:
    (response,) = agent.exchange(data)
    assert response["error"]["code"] == code
    assert response["error"]["message"]
    assert response["jsonrpc"] == "2.0"
    assert agent.call("Host.ping") is True


def test_params_by_name_and_by_position(agent: Agent) -> None:
    vid = new_vol_id()
    assert agent.call(INFO, {"vol_ids": [vid]}) == []
    assert agent.call(INFO, [[vid]]) == []
    assert agent.call(INFO, []) == []
    assert agent.call(INFO, {}) == []


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"vol_id": "../../etc/passwd"}, "vol_id must be a UUID"),
        ({"vol_id": ""}, "vol_id must be a UUID"),
        ({"vol_id": "A" * 10240}, "vol_id is longer than 36"),
        ({"vol_id": 5}, "vol_id must be a string"),
        (
            {"vol_id": "01713ADE-9688-43FF-A46C-0E2E35974DCE"},
            "vol_id must be a UUID",
        ),
        ({"vol_id": "01713ade-9688-43ff-a46c-0e2e35974dce\n"}, "vol_id"),
        ({}, "missing a required argument: 'vol_id'"),
        # force is detach_volume's (issue 19); anything else is not.
        ({"vol_id": new_vol_id(), "forced": True}, "unexpected keyword"),
    ],
)
def test_bad_vol_id_is_invalid_params(
    agent: Agent, params: dict[str, Any], fragment: str
) -> None:
    err = agent.error(DETACH, params)
    assert err.code == -32602
    assert fragment in err.message


def test_message_over_the_limit_closes_only_that_connection(
    agent: Agent,
) -> None:
    big = b'{"jsonrpc":"2.0","id":1,"method":"Host.ping","params":["'
    big += b"x" * (1024 * 1024 + 10) + b'"]}\n'
    with agent.client() as other, socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(agent.socket)
        # Our end stays open both ways, so the EOF below is the agent's
        # doing (and a recv timeout, if it kept the connection, fails).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(big)  # the agent may hang up before the last bytes
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        (response,) = [json.loads(x) for x in data.splitlines()]
        assert response["error"]["code"] == -32600
        assert "max_message_bytes" in response["error"]["message"]
        # Closed, not just shut for writing: nothing more goes in.
        with pytest.raises(BrokenPipeError):
            s.sendall(line(req("Host.ping")))
        assert other.call("Host.ping") is True


def test_daemon_survives_client_vanishing_mid_request(agent: Agent) -> None:
    for _ in range(5):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(agent.socket)
            s.sendall(line(req("Host.getCapabilities")))
    time.sleep(0.2)
    assert agent.call("Host.ping") is True
