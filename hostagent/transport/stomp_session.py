"""One STOMP connection's protocol state, as vdsm's clients use it.

What each client frame means and which frames answer it, with no I/O:
CONNECT or STOMP → CONNECTED with the heart-beats negotiated; SUBSCRIBE
and UNSUBSCRIBE by ``id``; a SEND to ``jms.topic.vdsm_requests`` is a
JSON-RPC request (or batch) whose answer goes as a MESSAGE to the
subscriptions to its ``reply-to``; DISCONNECT closes after its RECEIPT.
Anything else raises :class:`~hostagent.transport.stomp_frames.FrameError`:
the connection gets :func:`error_frame` and closes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hostagent.api import connection_error
from hostagent.transport.stomp_frames import Frame, FrameError

REQUESTS = "jms.topic.vdsm_requests"
# Where an answer goes when a SEND names no reply-to (vdsm's default).
RESPONSES = "jms.topic.vdsm_responses"
EVENTS = "jms.queue.events"
VERSION = "1.2"

# Heart-beats more often than this would cost more than they tell;
# vdsm has the same floor.
MIN_BEAT_MS = 1000
# One connection's subscriptions are kept in memory: bound them.
MAX_SUBSCRIPTIONS = 100

_CLIENT_COMMANDS = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "DISCONNECT",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
    }
)


@dataclass
class Request:
    """A SEND to the request destination: a JSON-RPC text to run, and
    where its answer goes."""

    body: bytes
    reply_to: str


@dataclass
class Outcome:
    """What the connection does after one client frame."""

    frames: list[Frame] = field(default_factory=list)
    request: Request | None = None
    # DISCONNECT: send ``frames`` once every earlier answer is out,
    # then close.
    disconnect: bool = False


class SessionState:
    """One STOMP connection's state: no I/O, only frames in and out."""

    def __init__(self) -> None:
        self.connected = False
        # Negotiated heart-beats, in seconds (0: none).
        self.send_every = 0.0
        self.expect_every = 0.0
        self.subscriptions: dict[str, str] = {}  # id -> destination
        self._ids = itertools.count(1)

    @property
    def wants_events(self) -> bool:
        """Some subscription is to ``jms.queue.events``."""
        return EVENTS in self.subscriptions.values()

    def handle(self, frame: Frame) -> Outcome:
        """What ``frame`` asks for; raises :class:`FrameError` when the
        connection must get an ERROR frame and close."""
        command = frame.command
        if command not in _CLIENT_COMMANDS:
            raise FrameError(f"unknown command {command[:40]!r}")
        if command in ("CONNECT", "STOMP"):
            out = Outcome([self._connect(frame)])
        elif not self.connected:
            raise FrameError(f"{command} before CONNECT")
        elif command == "SEND":
            out = Outcome(request=self._send(frame))
        elif command == "SUBSCRIBE":
            self._subscribe(frame)
            out = Outcome()
        elif command == "UNSUBSCRIBE":
            self.subscriptions.pop(_required(frame, "id"), None)
            out = Outcome()
        elif command == "DISCONNECT":
            out = Outcome(disconnect=True)
        else:
            # Transactions and client acknowledgements: every
            # subscription here is ack:auto and every SEND is run at once.
            raise FrameError(f"{command} is not supported")
        receipt = frame.headers.get("receipt")
        if receipt is not None and command not in ("CONNECT", "STOMP"):
            out.frames.append(Frame("RECEIPT", {"receipt-id": receipt}))
        return out

    def _connect(self, frame: Frame) -> Frame:
        if self.connected:
            raise FrameError(f"{frame.command} on a connected session")
        versions = frame.headers.get("accept-version", "1.0").split(",")
        if VERSION not in (v.strip() for v in versions):
            raise FrameError(
                f"supported protocol versions are {VERSION}",
                {"version": VERSION},
            )
        can_send, wants = _heart_beat(frame.headers.get("heart-beat", "0,0"))
        # We can beat as often as the client wants (within the floor) and
        # want the client's beats as often as it offers them.
        ours = max(wants, MIN_BEAT_MS) if wants else 0
        theirs = max(can_send, MIN_BEAT_MS) if can_send else 0
        self.send_every = ours / 1000
        self.expect_every = theirs / 1000
        self.connected = True
        return Frame(
            "CONNECTED",
            {
                "version": VERSION,
                "heart-beat": f"{ours},{theirs}",
                "server": "hostagent",
            },
        )

    def _send(self, frame: Frame) -> Request:
        destination = _required(frame, "destination")
        if destination != REQUESTS and not destination.startswith(
            REQUESTS + "."
        ):
            raise FrameError(
                f"SEND to {destination[:80]!r}: requests go to {REQUESTS}"
            )
        return Request(frame.body, frame.headers.get("reply-to", RESPONSES))

    def _subscribe(self, frame: Frame) -> None:
        destination = _required(frame, "destination")
        sub_id = _required(frame, "id")
        if sub_id in self.subscriptions:
            raise FrameError(f"subscription id {sub_id[:80]!r} is in use")
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise FrameError(
                f"more than {MAX_SUBSCRIPTIONS} subscriptions",
                {"max_subscriptions": MAX_SUBSCRIPTIONS},
            )
        ack = frame.headers.get("ack", "auto")
        if ack != "auto":
            raise FrameError(f"ack:{ack[:40]} is not supported (only auto)")
        self.subscriptions[sub_id] = destination

    def deliver(self, destination: str, body: bytes) -> list[Frame]:
        """MESSAGE frames carrying ``body`` to this connection's
        subscriptions to ``destination`` (none: nobody listens)."""
        return [
            Frame(
                "MESSAGE",
                {
                    "destination": destination,
                    "subscription": sub_id,
                    "message-id": str(next(self._ids)),
                    "content-type": "application/json",
                },
                body,
            )
            for sub_id, dest in self.subscriptions.items()
            if dest == destination
        ]


def _required(frame: Frame, name: str) -> str:
    value = frame.headers.get(name)
    if not value:
        raise FrameError(f"{frame.command} without a {name} header")
    return value


def _heart_beat(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise FrameError(
            f"heart-beat {text[:40]!r} is not two non-negative integers"
        )
    return int(parts[0]), int(parts[1])


def error_frame(err: FrameError, receipt: str | None = None) -> Frame:
    """The ERROR frame for ``err``: a short ``message`` header and the
    API's -32600 connection error as the body."""
    headers = {"message": err.message, "content-type": "application/json"}
    if receipt is not None:
        headers["receipt-id"] = receipt
    body = connection_error(
        f"invalid STOMP frame: {err.message}; closing the connection",
        err.data or {},
    )
    return Frame("ERROR", headers, body.rstrip(b"\n"))
