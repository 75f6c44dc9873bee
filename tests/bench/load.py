"""Clients that drive a server: one-at-a-time calls and pipelining."""

from __future__ import annotations

import json
import selectors
import socket
import time

from hostagent.client import Client


def round_trips(path: str, method: str, count: int) -> list[float]:
    """Seconds per call of ``count`` sequential calls on one connection.

    The client is :class:`hostagent.client.Client`, the one the CLI and
    the tests use, for the agent and the echo server alike.
    """
    with Client(path, timeout=30) as c:
        for _ in range(min(200, count)):  # warm up both ends
            c.call(method)
        samples = []
        clock = time.perf_counter
        for _ in range(count):
            t = clock()
            result = c.call(method)
            samples.append(clock() - t)
            if result is not True:
                raise RuntimeError(f"{method} answered {result!r}")
    return samples


def pipelined(
    path: str, method: str, connections: int, per_connection: int, window: int
) -> float:
    """Requests per second with ``connections`` pipelining connections.

    Each connection keeps ``window`` requests in flight: every response
    that comes back lets one more request go out.  Every response is
    parsed and checked (``result`` true), and each connection must get
    back exactly as many as it sent.
    """
    socks = []
    for _ in range(connections):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setblocking(False)
        socks.append(s)
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, list[int]] = {}
    buffers: dict[socket.socket, bytes] = {}

    def request(i: int) -> bytes:
        return b'{"jsonrpc":"2.0","method":"%s","id":%d}\n' % (
            method.encode(),
            i,
        )

    try:
        started = time.perf_counter()
        for s in socks:
            first = min(window, per_connection)
            s.sendall(b"".join(request(i) for i in range(first)))
            # [next id to send, responses received]
            state[s] = [first, 0]
            buffers[s] = b""
            sel.register(s, selectors.EVENT_READ, s)
        remaining = connections
        while remaining:
            events = sel.select(timeout=30)
            if not events:
                raise RuntimeError("no response for 30 s")
            for key, _ in events:
                s = key.data
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise RuntimeError("server closed a connection")
                lines = (buffers[s] + chunk).split(b"\n")
                buffers[s] = lines.pop()
                st = state[s]
                for line in lines:
                    if json.loads(line).get("result") is not True:
                        raise RuntimeError(f"bad response {line[:200]!r}")
                st[1] += len(lines)
                more = min(len(lines), per_connection - st[0])
                if more > 0:
                    s.sendall(
                        b"".join(request(st[0] + i) for i in range(more))
                    )
                    st[0] += more
                if st[1] == per_connection:
                    sel.unregister(s)
                    remaining -= 1
        elapsed = time.perf_counter() - started
    finally:
        sel.close()
        for s in socks:
            s.close()
    return connections * per_connection / elapsed
