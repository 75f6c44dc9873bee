"""Load: 1,000 clients connected at once, each pinging several times.

Below ``max_connections`` (1024 by default) none may be refused and
every ping must be answered; over TLS the 1,000 handshakes also queue
behind ``max_handshakes`` (64 by default) and must all get through.
The figures are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import resource
import ssl
import time
from typing import Any

import pytest
from conftest import Agent
from pki import Pki, start_tls_agent

CLIENTS = 1000
PINGS = 5


def raise_own_fd_limit(needed: int) -> None:
    """This process holds every client socket: it needs the descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"open-file hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _run(
    connect: Any,
) -> tuple[int, int, float, float, list[str]]:
    """Connect every client, then ping from all at once."""
    started = time.monotonic()
    conns = await asyncio.gather(
        *(connect() for _ in range(CLIENTS)), return_exceptions=True
    )
    connected = time.monotonic() - started
    errors = [repr(c) for c in conns if isinstance(c, BaseException)]
    pairs = [c for c in conns if not isinstance(c, BaseException)]

    async def pings(i: int, reader: Any, writer: Any) -> int:
        ok = 0
        for n in range(PINGS):
            rid = i * PINGS + n
            writer.write(
                b'{"jsonrpc":"2.0","method":"Host.ping","id":%d}\n' % rid
            )
            answer = json.loads(await reader.readline())
            if answer == {"jsonrpc": "2.0", "result": True, "id": rid}:
                ok += 1
            else:
                errors.append(repr(answer))
        return ok

    started = time.monotonic()
    answered = await asyncio.gather(
        *(pings(i, r, w) for i, (r, w) in enumerate(pairs)),
        return_exceptions=True,
    )
    pinged = time.monotonic() - started
    errors += [repr(a) for a in answered if isinstance(a, BaseException)]
    for _, w in pairs:
        w.close()
    ok = sum(a for a in answered if isinstance(a, int))
    return len(pairs), ok, connected, pinged, errors


def _report(
    capsys: pytest.CaptureFixture[str], what: str, result: Any
) -> None:
    conns, ok, connected, pinged, _ = result
    with capsys.disabled():
        print(
            f"\nload ({what}): {conns} connections open in {connected:.2f} s; "
            f"{ok} pings in {pinged:.2f} s = {ok / pinged:.0f} pings/s"
        )


def _check(agent: Agent, result: Any) -> None:
    conns, ok, _, _, errors = result
    assert errors == []
    assert conns == CLIENTS
    assert ok == CLIENTS * PINGS
    assert "refusing a connection" not in agent.log()  # before TLS too
    assert "TLS handshake with" not in agent.log()
    assert agent.call("Host.ping") is True


@pytest.mark.slow
def test_1000_unix_clients(
    agent_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    raise_own_fd_limit(CLIENTS + 256)
    agent: Agent = agent_factory()
    agent.configure(log={"level": "info"})  # a debug line per ping is noise
    agent.start()

    async def connect() -> Any:
        return await asyncio.open_unix_connection(agent.socket)

    result = asyncio.run(_run(connect))
    _report(capsys, "unix", result)
    _check(agent, result)


@pytest.mark.slow
def test_1000_tls_clients(
    agent_factory: Any, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    raise_own_fd_limit(CLIENTS + 256)
    tls = start_tls_agent(agent_factory, pki, log_level="info")
    creds = pki.client()
    ctx = ssl.create_default_context(cafile=creds.ca)
    ctx.load_cert_chain(creds.cert, creds.key)

    async def connect() -> Any:
        return await asyncio.open_connection(
            "127.0.0.1", tls.port, ssl=ctx, server_hostname="localhost"
        )

    result = asyncio.run(_run(connect))
    _report(capsys, "tls", result)
    _check(tls.agent, result)
