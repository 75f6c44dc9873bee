"""``Host.ping`` against the echo server: one connection, then sixteen."""

from __future__ import annotations

from pathlib import Path

from bench import load, procs
from bench.stats import Row, percentile

PING = "Host.ping"
BLOCKS = 10


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
        procs.agent(root, "ping-agent") as agent,
        procs.echo_server(root) as echo,
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
            target="<= 2.0x echo",
            passed=p50 <= 2.0 * p50_ref,
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
