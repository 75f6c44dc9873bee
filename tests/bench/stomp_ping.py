"""``Host.ping`` over TLS: STOMP (as vdsm's client frames it) vs NDJSON.

One agent, one TLS listener, two connections with the same client
certificate: one speaks NDJSON, the other STOMP (a batch of one per
SEND, answered as a MESSAGE).  Both clients are the same few lines of
blocking socket code, so the difference is the agent's framing.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.bench import procs
from tests.bench.ping import BLOCKS, placed
from tests.bench.stats import Row, percentile

REPO = Path(__file__).resolve().parents[2]
MAKE_CERTS = REPO / "contrib" / "make-certs.sh"
CLIENT_CN = "hostagent-engine"


class _Conn:
    """A blocking TLS connection reading up to a terminator."""

    def __init__(self, ctx: ssl.SSLContext, port: int) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""

    def until(self, end: bytes) -> bytes:
        """Bytes up to ``end`` (dropped), reading as needed."""
        while True:
            i = self.buf.find(end)
            if i >= 0:
                out, self.buf = self.buf[:i], self.buf[i + len(end) :]
                return out
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the agent closed the connection")
            self.buf += chunk


def _ndjson_pings(c: _Conn, count: int) -> list[float]:
    line = b'{"jsonrpc":"2.0","id":1,"method":"Host.ping"}\n'
    samples = []
    clock = time.perf_counter
    for _ in range(count):
        t = clock()
        c.sock.sendall(line)
        answer = json.loads(c.until(b"\n"))
        samples.append(clock() - t)
        if answer.get("result") is not True:
            raise RuntimeError(f"NDJSON ping answered {answer!r}")
    return samples


def _stomp_connect(c: _Conn) -> None:
    c.sock.sendall(
        b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\0"
        b"SUBSCRIBE\nid:1\ndestination:replies\n\n\0"
    )
    if not c.until(b"\0").lstrip(b"\n").startswith(b"CONNECTED\n"):
        raise RuntimeError("no CONNECTED frame")


def _stomp_pings(c: _Conn, count: int) -> list[float]:
    body = b'[{"jsonrpc":"2.0","id":1,"method":"Host.ping"}]'
    frame = (
        b"SEND\ndestination:jms.topic.vdsm_requests\nreply-to:replies\n"
        b"content-type:application/json\n"
        + b"content-length:%d\n\n" % len(body)
        + body
        + b"\0"
    )
    samples = []
    clock = time.perf_counter
    for _ in range(count):
        t = clock()
        c.sock.sendall(frame)
        message = c.until(b"\0")
        samples.append(clock() - t)
        head, _, answer = message.partition(b"\n\n")
        if not head.lstrip(b"\n").startswith(b"MESSAGE\n"):
            raise RuntimeError(f"STOMP ping answered {message[:200]!r}")
        if json.loads(answer)[0].get("result") is not True:
            raise RuntimeError(f"STOMP ping answered {answer!r}")
    return samples


@contextlib.contextmanager
def _tls_agent(root: Path) -> Iterator[tuple[procs.AgentProcess, int]]:
    pki = root / "stomp-pki"
    subprocess.run(
        ["sh", str(MAKE_CERTS), "-o", str(pki), "localhost", "127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    srv = pki / "server" / "localhost"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = {
        "tls_listen": f"127.0.0.1:{port}",
        "tls_cert": str(srv / "cert.pem"),
        "tls_key": str(srv / "key.pem"),
        "tls_ca": str(srv / "ca.pem"),
    }
    with procs.agent(root, "stomp-ping-agent", server=server) as agent:
        yield agent, port


def run(root: Path, calls: int) -> list[Row]:
    """STOMP vs NDJSON ``Host.ping`` round trip p50 over TLS."""
    ndjson_rt: list[float] = []
    stomp_rt: list[float] = []
    pki = root / "stomp-pki"
    with placed() as (client, where), _tls_agent(root) as (_, port):
        cli = pki / "client" / CLIENT_CN
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        ctx.load_cert_chain(str(cli / "cert.pem"), str(cli / "key.pem"))
        with client:
            nd, st = _Conn(ctx, port), _Conn(ctx, port)
            try:
                _stomp_connect(st)
                warm = min(200, calls)
                _ndjson_pings(nd, warm)
                _stomp_pings(st, warm)
                block = max(1, calls // BLOCKS)
                for _ in range(BLOCKS):
                    ndjson_rt += _ndjson_pings(nd, block)
                    stomp_rt += _stomp_pings(st, block)
            finally:
                nd.sock.close()
                st.sock.close()
    us = 1e6
    p50 = percentile(stomp_rt, 50) * us
    p50_ref = percentile(ndjson_rt, 50) * us
    return [
        Row.compare(
            "STOMP ping p50 over TLS, vs NDJSON",
            p50,
            p50_ref,
            "us",
            target="<= 2.0x NDJSON",
            passed=p50 <= 2.0 * p50_ref,
            note=f"batch of one per SEND; {BLOCKS} alternating blocks; "
            + where,
        ),
        Row.compare(
            "STOMP ping p99 over TLS, vs NDJSON",
            percentile(stomp_rt, 99) * us,
            percentile(ndjson_rt, 99) * us,
            "us",
        ),
    ]
