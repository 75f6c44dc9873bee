"""``Host.ping`` against the echo server: one connection, then sixteen."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tests.bench import load, procs
from tests.bench.stats import Row, percentile

PING = "Host.ping"
BLOCKS = 10


@contextlib.contextmanager
def placed() -> Iterator[tuple[contextlib.AbstractContextManager[None], str]]:
    """Servers on one CPU, the client on another, the same for both.

    Left to the scheduler, a server sometimes runs on the client's CPU
    (a round trip is then two context switches) and sometimes on the
    other one (two wake-ups of an idle CPU, some 30 us more in this VM),
    and it does not pick the same for the agent and the echo server: the
    ratio then says where they landed, not what they cost.  Processes
    started inside the block inherit the servers' CPU; ``client()``
    moves this process to the other one.  Yields that and a note.
    """
    before = os.sched_getaffinity(0)
    cpus = sorted(before)
    if len(cpus) < 2:
        yield contextlib.nullcontext(), "one CPU"
        return
    server, client = cpus[-1], cpus[0]

    @contextlib.contextmanager
    def on_client() -> Iterator[None]:
        os.sched_setaffinity(0, {client})
        try:
            yield
        finally:
            os.sched_setaffinity(0, {server})

    os.sched_setaffinity(0, {server})
    try:
        yield on_client(), f"servers on CPU {server}, client on CPU {client}"
    finally:
        os.sched_setaffinity(0, before)


def run(
    root: Path, calls: int, connections: int, per_connection: int
) -> list[Row]:
    """Round trip p50/p99 and pipelined throughput, agent vs echo.

    Both servers run side by side and are measured in alternating blocks,
    so a noisy neighbour on the machine hits both alike.
    """
    agent_rt: list[float] = []
    echo_rt: list[float] = []
    agent_tp: list[float] = []
    echo_tp: list[float] = []
    with (
        placed() as (client, where),
        procs.agent(root, "ping-agent") as agent,
        procs.echo_server(root) as echo,
        client,
    ):
        block = max(1, calls // BLOCKS)
        for _ in range(BLOCKS):
            echo_rt += load.round_trips(echo, PING, block)
            agent_rt += load.round_trips(agent.socket, PING, block)
        for _ in range(3):
            echo_tp.append(
                load.pipelined(echo, PING, connections, per_connection, 8)
            )
            agent_tp.append(
                load.pipelined(
                    agent.socket, PING, connections, per_connection, 8
                )
            )
    us = 1e6
    p50 = percentile(agent_rt, 50) * us
    p50_ref = percentile(echo_rt, 50) * us
    tp, tp_ref = max(agent_tp), max(echo_tp)
    return [
        Row.compare(
            "Host.ping round trip p50, 1 connection",
            p50,
            p50_ref,
            "us",
            target="<= 1.5x echo",
            passed=p50 <= 1.5 * p50_ref,
            note=f"{BLOCKS} alternating blocks of each; {where}",
        ),
        Row.compare(
            "Host.ping round trip p99, 1 connection",
            percentile(agent_rt, 99) * us,
            percentile(echo_rt, 99) * us,
            "us",
        ),
        Row.compare(
            f"Host.ping throughput, {connections} connections pipelining",
            tp,
            tp_ref,
            "req/s",
            target=">= 0.5x echo",
            passed=tp >= 0.5 * tp_ref,
            note=f"best of 3 runs of {connections} x {per_connection} "
            "requests, 8 in flight per connection",
        ),
    ]
