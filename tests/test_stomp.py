"""STOMP 1.2 on the TLS port, driven by clients the agent did not write.

``stomp.py`` (PyPI) plays vdsm's client: CONNECT, SUBSCRIBE to a reply
destination, SEND a batch of one to ``jms.topic.vdsm_requests`` with
``reply-to``.  Frames no library would send (bad, oversized, out of
place) go over a raw TLS socket, read back by the small reader below,
which shares nothing with the agent's parser.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import stomp
from conftest import Loops, local_info, new_vol_id
from pki import ENGINE, TlsAgent, start_tls_agent
from support import ATTACH, DETACH, INFO

REQUESTS = "jms.topic.vdsm_requests"
EVENTS = "jms.queue.events"


@pytest.fixture
def tls(agent_factory: Any, pki: Any) -> TlsAgent:
    """An agent with its TLS listener (NDJSON and STOMP)."""
    return start_tls_agent(agent_factory, pki)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every stomp.py client a test made is closed after it."""
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def request(method: str, params: Any = None, rid: Any = 1) -> dict[str, Any]:
    """One JSON-RPC request object."""
    req: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        req["params"] = params
    return req


_CLIENTS: list[Vdsm] = []


class Vdsm(stomp.ConnectionListener):  # type: ignore[misc]
    """A stomp.py connection used the way vdsm's client uses STOMP."""

    def __init__(
        self,
        tls: TlsAgent,
        heartbeats: tuple[int, int] = (0, 0),
        reply_to: str | None = None,
        cn: str = ENGINE,
    ) -> None:
        super().__init__()
        hp = ("127.0.0.1", tls.port)
        creds = tls.pki.client(cn)
        self.conn = stomp.Connection12(
            [hp], heartbeats=heartbeats, reconnect_attempts_max=1
        )
        self.conn.set_ssl(
            for_hosts=[hp],
            key_file=creds.key,
            cert_file=creds.cert,
            ca_certs=creds.ca,
        )
        self.conn.set_listener("test", self)
        _CLIENTS.append(self)
        self.reply_to = reply_to or f"/queue/replies.{uuid.uuid4()}"
        self.sub_id = str(uuid.uuid4())
        self.messages: queue.Queue[Any] = queue.Queue()
        self.errors: queue.Queue[Any] = queue.Queue()
        self.receipts: queue.Queue[Any] = queue.Queue()
        self.connected_headers: dict[str, str] = {}
        self.beats = 0
        self.gone = threading.Event()
        self.ready = threading.Event()

    def on_connected(self, frame: Any) -> None:
        self.connected_headers = dict(frame.headers)
        self.ready.set()

    def on_message(self, frame: Any) -> None:
        self.messages.put(frame)

    def on_error(self, frame: Any) -> None:
        self.errors.put(frame)

    def on_receipt(self, frame: Any) -> None:
        self.receipts.put(frame)

    def on_heartbeat(self) -> None:
        self.beats += 1

    def on_disconnected(self) -> None:
        self.gone.set()

    def connect(self, with_connect_command: bool = True) -> Vdsm:
        """CONNECT (or STOMP), then subscribe to the reply destination."""
        self.conn.connect(wait=True, with_connect_command=with_connect_command)
        # stomp.py may return before its listeners heard of CONNECTED.
        assert self.ready.wait(10)
        self.conn.subscribe(self.reply_to, id=self.sub_id)
        return self

    def send(self, body: Any) -> None:
        """SEND a JSON-RPC text to the request destination."""
        self.conn.send(
            REQUESTS,
            json.dumps(body),
            content_type="application/json",
            headers={"reply-to": self.reply_to},
        )

    def message(self, timeout: float = 30) -> Any:
        """The next MESSAGE frame."""
        return self.messages.get(timeout=timeout)

    def call(self, method: str, params: Any = None, rid: Any = 1) -> Any:
        """A batch of one, as vdsm's client sends; the result."""
        self.send([request(method, params, rid)])
        (response,) = json.loads(self.message().body)
        assert response["id"] == rid, response
        assert "error" not in response, response
        return response["result"]

    def close(self) -> None:
        """DISCONNECT, if still connected; end stomp.py's thread."""
        if self.conn.is_connected():
            self.conn.disconnect()
        # stomp.py 9.0.0 reads again and again from a TLS socket the
        # agent closed (recv gives b"" and it takes that for "no data
        # yet"): stop its loop by hand.
        self.conn.transport.running = False

    def __enter__(self) -> Vdsm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_frame(reply_to: str, *messages: dict[str, Any]) -> bytes:
    """A SEND of ``messages`` (one JSON-RPC batch) to the requests
    topic, answered to ``reply_to``."""
    return (
        b"SEND\ndestination:jms.topic.vdsm_requests\nreply-to:"
        + reply_to.encode()
        + b"\n\n"
        + json.dumps(list(messages)).encode()
        + b"\0"
    )


class Raw:
    """A TLS socket writing STOMP bytes by hand and reading frames back."""

    def __init__(self, tls: TlsAgent, timeout: float = 30) -> None:
        creds = tls.pki.client()
        ctx = ssl.create_default_context(cafile=creds.ca)
        ctx.load_cert_chain(creds.cert, creds.key)
        sock = socket.create_connection(("127.0.0.1", tls.port), timeout)
        self.sock = ctx.wrap_socket(sock, server_hostname="localhost")
        self.buf = b""
        self.beats = 0

    def send(self, data: bytes) -> None:
        """Write raw bytes."""
        self.sock.sendall(data)

    def connect(self, heart_beat: str = "0,0") -> dict[str, str]:
        """CONNECT; the CONNECTED frame's headers."""
        self.send(
            b"CONNECT\naccept-version:1.2\nhost:localhost\n"
            + f"heart-beat:{heart_beat}\n\n\0".encode()
        )
        command, headers, _ = self.frame()
        assert command == "CONNECTED", (command, headers)
        return headers

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionError, ssl.SSLError):
            chunk = b""
        self.buf += chunk
        return bool(chunk)

    def frame(self) -> tuple[str, dict[str, str], bytes]:
        """The next frame (heart-beats counted and skipped)."""
        while True:
            stripped = self.buf.lstrip(b"\r\n")
            self.beats += self.buf.count(
                b"\n", 0, len(self.buf) - len(stripped)
            )
            self.buf = stripped
            head, sep, rest = self.buf.partition(b"\n\n")
            if sep:
                lines = head.decode().split("\n")
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers.setdefault(unescape(k), unescape(v))
                n = int(headers.get("content-length", -1))
                end = n if n >= 0 else rest.find(b"\0")
                if 0 <= end < len(rest):
                    assert rest[end] == 0
                    self.buf = rest[end + 1 :]
                    return lines[0], headers, rest[:end]
            if not self._fill():
                raise EOFError(f"connection closed; left: {self.buf!r}")

    def closed(self) -> bool:
        """True once the agent closed the connection (beats skipped)."""
        while True:
            if self.buf.strip(b"\r\n"):
                return False
            self.buf = b""
            if not self._fill():
                return True

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def unescape(text: str) -> str:
    """STOMP 1.2 header decoding, written apart from the agent's."""
    out, i = [], 0
    table = {"r": "\r", "n": "\n", "c": ":", "\\": "\\"}
    while i < len(text):
        if text[i] == "\\":
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def error_of(raw: Raw) -> tuple[dict[str, str], dict[str, Any]]:
    """The ERROR frame the agent sent, then the connection is closed."""
    command, headers, body = raw.frame()
    assert command == "ERROR", (command, headers, body)
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    answer = json.loads(body)
    assert answer["id"] is None
    assert answer["error"]["code"] == -32600
    assert raw.closed()
    return headers, answer["error"]


# -- connecting and calling -------------------------------------------------


def test_connect_and_a_batch_of_one(tls: TlsAgent) -> None:
    c = Vdsm(tls).connect()
    try:
        assert c.connected_headers["version"] == "1.2"
        assert c.connected_headers["heart-beat"] == "0,0"
        c.send([request("Host.ping", rid="a1")])
        frame = c.message()
        body = json.loads(frame.body)
        assert body == [{"jsonrpc": "2.0", "result": True, "id": "a1"}]
        h = frame.headers
        assert h["subscription"] == c.sub_id
        assert h["destination"] == c.reply_to
        assert h["content-type"] == "application/json"
        assert int(h["content-length"]) == len(frame.body.encode())
        assert h["message-id"]
        # A lone request (not a batch) gets a lone answer.
        c.send(request("ManagedVolume.volumes_info", rid=2))
        assert json.loads(c.message().body) == {
            "jsonrpc": "2.0",
            "result": [],
            "id": 2,
        }
        # JSON-RPC errors travel as answers, not as STOMP errors.
        c.send([request("Host.nope", rid=3)])
        (answer,) = json.loads(c.message().body)
        assert answer["error"]["code"] == -32601
        assert c.conn.is_connected()
    finally:
        c.close()


def test_stomp_command_and_disconnect_receipt(tls: TlsAgent) -> None:
    with Vdsm(tls).connect(with_connect_command=False) as c:
        assert c.call("Host.ping") is True
        c.conn.disconnect(receipt="bye-1")
        assert c.receipts.get(timeout=10).headers["receipt-id"] == "bye-1"
    raw = Raw(tls)
    raw.connect()
    raw.send(b"DISCONNECT\nreceipt:r\\c7\n\n\0")
    assert raw.frame()[:2] == ("RECEIPT", {"receipt-id": "r:7"})
    assert raw.closed()


def test_nul_terminated_body_and_escaped_headers(tls: TlsAgent) -> None:
    raw = Raw(tls)
    raw.connect()
    # A destination with every escaped character in it; no
    # content-length on the SEND, so its body ends at the NUL.
    raw.send(
        b"SUBSCRIBE\nid:s\\\\1\ndestination:/queue/a\\cb\\nc\\r\\\\\n\n\0"
    )
    raw.send(
        b"SEND\ndestination:jms.topic.vdsm_requests\n"
        b"reply-to:/queue/a\\cb\\nc\\r\\\\\n\n"
        + json.dumps([request("Host.ping", rid=9)]).encode()
        + b"\0\n\n"
    )
    command, headers, body = raw.frame()
    assert command == "MESSAGE"
    assert headers["destination"] == "/queue/a:b\nc\r\\"
    assert headers["subscription"] == "s\\1"
    assert json.loads(body) == [{"jsonrpc": "2.0", "result": True, "id": 9}]
    raw.close()


def test_frames_split_into_single_bytes(tls: TlsAgent) -> None:
    raw = Raw(tls)
    payload = json.dumps([request("Host.ping", rid=5)]).encode()
    data = (
        b"\n\r\nSTOMP\r\naccept-version:1.1,1.2\r\nhost:x\r\n\r\n\0\n"
        b"SUBSCRIBE\nid:1\ndestination:r\n\n\0"
        b"SEND\ndestination:jms.topic.vdsm_requests\nreply-to:r\n"
        + f"content-length:{len(payload)}\n\n".encode()
        + payload
        + b"\0"
    )
    for i in range(len(data)):
        raw.send(data[i : i + 1])
    assert raw.frame()[0] == "CONNECTED"
    command, headers, body = raw.frame()
    assert (command, headers["subscription"]) == ("MESSAGE", "1")
    assert json.loads(body)[0]["result"] is True
    raw.close()


def test_reply_to_routing_with_two_clients_at_once(tls: TlsAgent) -> None:
    # Both use the same reply destination name: each answer still goes
    # only to the connection that asked.
    a = Vdsm(tls, reply_to="jms.topic.vdsm_responses").connect()
    b = Vdsm(tls, reply_to="jms.topic.vdsm_responses").connect()
    c = Vdsm(tls).connect()
    clients = {"a": a, "b": b, "c": c}
    n = 30
    try:

        def fire(name: str) -> None:
            for i in range(n):
                clients[name].send(
                    [request("Host.ping" if i % 2 else INFO, rid=f"{name}{i}")]
                )

        threads = [threading.Thread(target=fire, args=(k,)) for k in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, client in clients.items():
            got = set()
            for _ in range(n):
                frame = client.message()
                assert frame.headers["subscription"] == client.sub_id
                (answer,) = json.loads(frame.body)
                assert "result" in answer, answer
                got.add(answer["id"])
            assert got == {f"{name}{i}" for i in range(n)}
        time.sleep(0.2)
        assert all(x.messages.empty() for x in clients.values())
    finally:
        for x in clients.values():
            x.close()


def test_no_subscription_for_reply_to_drops_the_answer(tls: TlsAgent) -> None:
    raw = Raw(tls)
    raw.connect()
    raw.send(
        send_frame("nowhere", request("Host.ping"))
        + b"SUBSCRIBE\nid:1\ndestination:here\n\n\0"
        + send_frame("here", request("Host.ping", rid=2))
    )
    command, _, body = raw.frame()
    assert command == "MESSAGE"
    assert json.loads(body)[0]["id"] == 2
    tls.agent.wait_log("has no subscription there")
    raw.close()


def test_ndjson_clients_keep_working_on_the_same_port(tls: TlsAgent) -> None:
    s = Vdsm(tls).connect()
    try:
        with tls.client() as nd:
            for i in range(3):
                assert nd.call("Host.ping") is True
                assert s.call("Host.ping", rid=i) is True
            assert nd.call(INFO) == []
        assert "stomp 127.0.0.1:" in tls.agent.log()
    finally:
        s.close()


def test_unsubscribe_stops_the_answers(tls: TlsAgent) -> None:
    raw = Raw(tls)
    raw.connect()
    raw.send(
        b"SUBSCRIBE\nid:1\ndestination:r\n\n\0"
        b"UNSUBSCRIBE\nid:1\nreceipt:u\n\n\0"
    )
    assert raw.frame()[:2] == ("RECEIPT", {"receipt-id": "u"})
    raw.send(
        send_frame("r", request("Host.ping"))
        + b"SUBSCRIBE\nid:2\ndestination:r2\n\n\0"
        + send_frame("r2", request("Host.ping", rid=2))
    )
    command, headers, body = raw.frame()
    assert (command, headers["subscription"]) == ("MESSAGE", "2")
    assert json.loads(body)[0]["id"] == 2
    raw.close()


# -- heart-beats ------------------------------------------------------------


def test_heart_beats_kept(agent_factory: Any, pki: Any) -> None:
    tls = start_tls_agent(agent_factory, pki, idle_timeout=2.5)
    with Vdsm(tls, heartbeats=(1000, 1000)).connect() as beating:
        assert beating.connected_headers["heart-beat"] == "1000,1000"
        silent = Raw(tls)
        silent.connect()
        # Past idle_timeout: the silent one is closed, the one that
        # beats is kept, and the agent beat to it meanwhile.
        assert silent.closed()
        time.sleep(3)
        assert not beating.gone.is_set()
        assert beating.call("Host.ping") is True
        assert beating.beats >= 2
        assert tls.agent.log().count("closing idle connection stomp") == 1


def test_heart_beat_floor_and_agent_beats(tls: TlsAgent) -> None:
    raw = Raw(tls)
    # The client wants a beat every 10 ms: the agent beats at most once
    # a second, and asks for the client's 500 ms beats once a second.
    assert raw.connect("500,10")["heart-beat"] == "1000,1000"
    # Keep beating; the agent beats back (only EOLs arrive).
    for _ in range(3):
        raw.send(b"\n")
        assert raw._fill()
    assert raw.buf.strip(b"\n") == b""
    assert raw.buf.count(b"\n") >= 3
    raw.close()


def test_missed_heart_beats_drop_the_peer(tls: TlsAgent) -> None:
    raw = Raw(tls)
    headers = raw.connect("1000,0")
    assert headers["heart-beat"] == "0,1000"
    start = time.monotonic()
    # Then silence: dropped after twice the promise (idle_timeout is
    # 300 s here).
    assert raw.closed()
    assert time.monotonic() - start >= 1.5
    tls.agent.wait_log("no heart-beat for 2 s")
    with tls.client() as nd:
        assert nd.call("Host.ping") is True


# -- bad input --------------------------------------------------------------

SEND_PING = (
    b"SEND\ndestination:jms.topic.vdsm_requests\nreply-to:r\n\n"
    b'[{"jsonrpc":"2.0","id":1,"method":"Host.ping"}]\0'
)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"FROB\n\n\0", "unknown command 'FROB'"),
        (b"SUBSCRIBE\nid 1\n\n\0", "is not name:value"),
        (b"SUBSCRIBE\nid:a\\tb\ndestination:x\n\n\0", "invalid escape"),
        (b"SUBSCRIBE\nid:1\n\n\0", "SUBSCRIBE without a destination"),
        (
            b"SUBSCRIBE\nid:1\ndestination:x\n\n\0"
            b"SUBSCRIBE\nid:1\ndestination:y\n\n\0",
            "subscription id '1' is in use",
        ),
        (
            b"SEND\ndestination:jms.topic.vdsm_requests\ncontent-length:2\n\n"
            b"[]]\0",
            "not followed by a NUL",
        ),
        (b"SEND\ndestination:q\ncontent-length:-1\n\n\0", "content-length"),
        (b"SEND\ndestination:elsewhere\n\n{}\0", "requests go to"),
        (b"BEGIN\ntransaction:t\n\n\0", "BEGIN is not supported"),
        (b"CONNECT\naccept-version:1.2\n\n\0", "on a connected session"),
        (b"SEND\nreceipt:r1\n\n\0", "SEND without a destination"),
    ],
)
def test_bad_frame_gets_error_and_close(
    tls: TlsAgent, data: bytes, why: str
) -> None:
    with Vdsm(tls).connect() as other:
        raw = Raw(tls)
        raw.connect()
        raw.send(data)
        headers, error = error_of(raw)
        assert why in headers["message"]
        assert why in error["message"]
        if b"receipt:r1" in data:
            assert headers["receipt-id"] == "r1"
        # Nothing else is affected.
        assert other.call("Host.ping") is True


def test_frames_before_connect_and_other_versions(tls: TlsAgent) -> None:
    raw = Raw(tls)
    raw.send(b"STOMP\naccept-version:1.0,1.1\n\n\0")
    headers, error = error_of(raw)
    assert "supported protocol versions are 1.2" in headers["message"]
    assert error["data"] == {"version": "1.2"}
    raw = Raw(tls)
    # Told apart as STOMP by its first bytes, but not a CONNECT.
    raw.send(b"CONNECTED\n\n\0")
    headers, _ = error_of(raw)
    assert "unknown command 'CONNECTED'" in headers["message"]
    raw = Raw(tls)
    raw.send(b"STOMP\naccept-version:1.2\nheart-beat:x\n\n\0")
    headers, _ = error_of(raw)
    assert "heart-beat" in headers["message"]


def test_oversized_frames(agent_factory: Any, pki: Any) -> None:
    tls = start_tls_agent(agent_factory, pki, max_message_bytes=4096)
    ping = json.dumps([request("Host.ping")]).encode()
    head = b"SEND\ndestination:jms.topic.vdsm_requests\nreply-to:r\n"
    with Vdsm(tls).connect() as other:
        # Just under the limit (whitespace is valid JSON): answered.
        raw = Raw(tls)
        raw.connect()
        raw.send(b"SUBSCRIBE\nid:1\ndestination:r\n\n\0")
        fits = ping + b" " * (4096 - len(head) - 1 - len(ping) - 1)
        raw.send(head + b"\n" + fits + b"\0")
        assert raw.frame()[0] == "MESSAGE"
        # One byte more, with and without content-length.
        too_big = fits + b" "
        for frame in (
            head + b"\n" + too_big + b"\0",
            head + f"content-length:{len(too_big)}\n\n".encode() + too_big,
            head + b"content-length:99999999\n\n",
            b"SEND\n" + b"x-pad:" + b"y" * 5000,
        ):
            raw = Raw(tls)
            raw.connect()
            raw.send(frame)
            headers, error = error_of(raw)
            assert "max_message_bytes" in headers["message"]
            assert error["data"] == {"max_message_bytes": 4096}
        assert other.call("Host.ping") is True


def test_stalled_frame_is_closed(agent_factory: Any, pki: Any) -> None:
    tls = start_tls_agent(agent_factory, pki, read_timeout=1)
    raw = Raw(tls)
    raw.connect()
    raw.send(b"SEND\ndestination:jms.topic.vdsm_requests\n")
    headers, error = error_of(raw)
    assert "incomplete frame" in headers["message"]
    assert error["data"] == {"read_timeout": 1}


def test_not_allowed_subject_is_refused(agent_factory: Any, pki: Any) -> None:
    tls = start_tls_agent(agent_factory, pki, tls_allowed_subjects=["other"])
    raw = Raw(tls)
    with pytest.raises(EOFError):
        raw.connect()
    assert b"tls_allowed_subjects" in raw.buf
    tls.agent.wait_log("is not in server.tls_allowed_subjects")


# -- events and requests that outlive their client -------------------------


def test_events_on_jms_queue_events(tls: TlsAgent, loops: Loops) -> None:
    dev = loops.create()
    vid = new_vol_id()
    with Vdsm(tls).connect() as sub, Vdsm(tls).connect() as other:
        result = sub.call(ATTACH, [vid, local_info(dev)])
        assert result["path"] == dev
        sub.conn.subscribe(EVENTS, id="ev")
        assert sub.call("Host.ping", rid=2) is True  # subscribed by now
        loops.detach(dev)
        frame = sub.message()
        assert frame.headers["subscription"] == "ev"
        assert frame.headers["destination"] == EVENTS
        assert json.loads(frame.body) == {
            "jsonrpc": "2.0",
            "method": "ManagedVolume.changed",
            "params": {"vol_id": vid, "exists": False, "path": dev},
        }
        # Unsubscribed: the device coming back is not told.
        sub.conn.unsubscribe("ev")
        assert sub.call("Host.ping", rid=3) is True
        loops.reattach(dev)
        deadline = time.monotonic() + 10
        while not sub.call(INFO, [[vid]], rid=4)[0]["exists"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # any notification would be out by now
        assert sub.messages.empty()
        assert other.messages.empty()
        assert other.call(DETACH, [vid], rid=5) is True


def test_client_vanishing_mid_request(tls: TlsAgent, loops: Loops) -> None:
    dev = loops.create()
    vid = new_vol_id()
    raw = Raw(tls)
    raw.connect()
    raw.send(
        b"SUBSCRIBE\nid:1\ndestination:r\n\n\0"
        + send_frame("r", request(ATTACH, [vid, local_info(dev)]))
    )
    raw.sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0"
    )
    raw.close()  # a reset, not a goodbye
    with Vdsm(tls).connect() as c:
        # The attach runs to its end although nobody waits for it.
        deadline = time.monotonic() + 30
        while [r["state"] for r in c.call(INFO, [[vid]])] != ["attached"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (record,) = c.call(INFO, [[vid]])
        assert (record["state"], record["path"]) == ("attached", dev)
        assert c.call(DETACH, [vid]) is True


def test_stomp_connections_count_against_the_subject_cap(
    agent_factory: Any, pki: Any
) -> None:
    """STOMP and NDJSON share one subject's slots (same fairness)."""
    tls = start_tls_agent(agent_factory, pki, max_connections_per_subject=2)
    with Vdsm(tls).connect() as a, Vdsm(tls).connect() as b:
        assert a.call("Host.ping") is True
        assert b.call("Host.ping", rid=2) is True
        tls.assert_subject_cap(2)
