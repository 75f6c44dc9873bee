"""Requests answered inline (no task) behave like every other request."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from conftest import Agent


def exchange(agent: Agent, data: bytes, expect: int) -> list[Any]:
    """Send ``data`` at once; read ``expect`` response lines."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(agent.socket)
        s.sendall(data)
        buf = b""
        while buf.count(b"\n") < expect:
            chunk = s.recv(65536)
            assert chunk, "connection closed early"
            buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


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
    data = b"".join(
        b'{"jsonrpc":"2.0","id":%d,"method":"Host.ping"}\n' % i
        for i in range(n)
    )
    responses = exchange(agent, data, n)
    assert [r["id"] for r in responses] == list(range(n))
    assert all(r["result"] is True for r in responses)


def test_ping_does_not_wait_for_an_in_flight_slot(
    agent_factory: Any,
) -> None:
    """With one slot taken by a slow request, a ping still gets through."""
    agent = agent_factory()
    agent.configure(server={"max_in_flight": 1})
    agent.start()
    responses = exchange(
        agent,
        b'{"jsonrpc":"2.0","id":"caps","method":"Host.getCapabilities"}\n'
        b'{"jsonrpc":"2.0","id":"ping","method":"Host.ping"}\n',
        2,
    )
    assert [r["id"] for r in responses] == ["ping", "caps"]
