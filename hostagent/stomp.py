"""STOMP 1.2 framing, as vdsm speaks it, on the TLS listener.

vdsm's clients (``vdsm.client``, the engine) wrap JSON-RPC in STOMP
frames: CONNECT, SUBSCRIBE to a reply destination, SEND requests to
``jms.topic.vdsm_requests`` with a ``reply-to`` header, and get the
answer back as a MESSAGE on that subscription.  A connection subscribed
to ``jms.queue.events`` gets the agent's notifications there.

The pieces, from the bytes up:

* :func:`sniff` tells a STOMP connection from an NDJSON one by its
  first bytes (vdsm's protocol detector does the same);
* :class:`Parser` turns bytes into :class:`Frame` objects and
  :func:`encode` turns frames into bytes (no I/O in either);
* :class:`Session` is one connection's protocol state: what each client
  frame means and which frames it answers with (no I/O either);
* :func:`serve` runs a session over asyncio streams with the same
  limits as the NDJSON transport: ``max_message_bytes`` per frame,
  ``max_in_flight`` requests per connection, ``read_timeout`` for a
  started frame and ``idle_timeout`` for a silent connection, plus the
  negotiated heart-beats.

A frame the agent cannot take (malformed, too large, an unknown or
unsupported command, a frame out of place) gets an ERROR frame whose
body is a numbered JSON-RPC error, and the connection is closed, as the
STOMP spec asks; requests already running finish all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hostagent.api import Answer, Peer, dumps, error_response
from hostagent.config import ServerConfig
from hostagent.errors import InvalidRequest

log = logging.getLogger(__name__)

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

_READ_CHUNK = 65536
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
_FIRST = (b"CONNECT", b"STOMP")


def sniff(data: bytes) -> bool | None:
    """True when ``data`` starts a STOMP connection, False when it does
    not, None when more bytes are needed to tell."""
    head = data.lstrip(b"\r\n")  # STOMP allows EOLs before a frame
    if not head:
        return None
    for command in _FIRST:
        if head.startswith(command):
            return True
        if command.startswith(head):
            return None
    return False


async def detect(
    reader: asyncio.StreamReader, config: ServerConfig
) -> tuple[bool, bytes] | None:
    """Read until :func:`sniff` can tell: (STOMP?, bytes read), or None
    when the connection stayed idle past ``idle_timeout``.

    Undecided bytes that stall or end go to NDJSON, whose errors
    explain a stalled or truncated line.
    """
    data = b""
    while True:
        kind = sniff(data)
        if kind is not None:
            return kind, data
        if len(data) > config.max_message_bytes:
            return False, data
        started = bool(data.strip())
        timeout = config.read_timeout if started else config.idle_timeout
        try:
            async with asyncio.timeout(timeout or None):
                chunk = await reader.read(_READ_CHUNK)
        except TimeoutError:
            return (False, data) if started else None
        if not chunk:
            return False, data
        data += chunk


# -- frames -----------------------------------------------------------------


@dataclass
class Frame:
    """One STOMP frame; the first of repeated headers wins (spec)."""

    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class FrameError(Exception):
    """The bytes are not a STOMP 1.2 frame; the message says why."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class FrameTooLarge(FrameError):
    """A frame over ``max_message_bytes``."""


_ESCAPES = {"\\r": "\r", "\\n": "\n", "\\c": ":", "\\\\": "\\"}
_ESCAPE_RE = re.compile(r"\\(.?)", re.DOTALL)
_TO_ESCAPE = {":": "\\c", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_TO_ESCAPE_RE = re.compile(r"[\r\n:\\]")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


def unescape(text: str) -> str:
    """A header name or value as the spec's escapes say (``\\r \\n \\c
    \\\\``); any other escape is a fatal error."""
    if "\\" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        try:
            return _ESCAPES[m.group(0)]
        except KeyError:
            raise FrameError(
                f"invalid escape sequence {m.group(0)!r} in a header"
            ) from None

    return _ESCAPE_RE.sub(one, text)


def escape(text: str) -> str:
    """The reverse of :func:`unescape`."""
    if ":" in text or "\\" in text or "\n" in text or "\r" in text:
        return _TO_ESCAPE_RE.sub(lambda m: _TO_ESCAPE[m.group(0)], text)
    return text


def encode(frame: Frame) -> bytes:
    """A frame's bytes; ``content-length`` is set from the body.

    CONNECTED is not escaped, as the spec says (for 1.0 clients).
    """
    raw = frame.command == "CONNECTED"
    parts = [frame.command, "\n"]
    for k, v in frame.headers.items():
        parts += (
            (k, ":", v, "\n") if raw else (escape(k), ":", escape(v), "\n")
        )
    body = frame.body
    if body or frame.command in ("MESSAGE", "ERROR"):
        parts.append(f"content-length:{len(body)}\n")
    parts.append("\n")
    return b"".join(("".join(parts).encode(), body, b"\0"))


class Parser:
    """Bytes in (:meth:`feed`), frames out (:meth:`next`).

    Heart-beats (EOLs between frames) are skipped.  A body is read up to
    ``content-length`` when the header is there, else up to the NUL.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._pos = 0  # where the current frame starts
        self._scan = 0  # where to look for the end of its headers
        self._head: tuple[Frame, int, int] | None = None

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        if self._pos > _READ_CHUNK and self._pos * 2 > len(self._buf):
            shift = self._pos
            del self._buf[:shift]
            self._pos = 0
            self._scan -= shift
            if self._head is not None:
                frame, body, length = self._head
                self._head = (frame, body - shift, length)
        self._buf += data

    @property
    def started(self) -> bool:
        """Part of a frame is buffered (not just heart-beats)."""
        self._skip_eols()
        return self._pos < len(self._buf)

    def _skip_eols(self) -> None:
        buf, pos = self._buf, self._pos
        while pos < len(buf) and buf[pos] in b"\r\n":
            pos += 1
        if pos != self._pos:
            self._pos = pos
            self._scan = max(self._scan, pos)

    def next(self) -> Frame | None:
        """The next complete frame, or None until more bytes come.

        Raises :class:`FrameError` (or :class:`FrameTooLarge`).
        """
        if self._head is None:
            self._skip_eols()
            buf, pos = self._buf, self._pos
            m = _HEAD_END.search(buf, max(pos, self._scan - 3))
            if m is None:
                self._scan = len(buf)
                if len(buf) - pos > self.limit:
                    raise self._too_large()
                return None
            frame = _head(bytes(buf[pos : m.start()]))
            length = _content_length(frame)
            if length is not None and m.end() - pos + length + 1 > self.limit:
                raise self._too_large()
            self._head = (frame, m.end(), -1 if length is None else length)
        frame, body, length = self._head
        buf = self._buf
        if length >= 0:
            end = body + length
            if len(buf) <= end:
                return None
            if buf[end] != 0:
                raise FrameError(
                    f"the {length}-byte body (content-length) is not "
                    "followed by a NUL byte"
                )
        else:
            end = buf.find(b"\0", max(body, self._scan))
            if end < 0:
                self._scan = len(buf)
                if len(buf) - self._pos > self.limit:
                    raise self._too_large()
                return None
        if end + 1 - self._pos > self.limit:
            raise self._too_large()
        frame.body = bytes(buf[body:end])
        self._head = None
        self._pos = self._scan = end + 1
        return frame

    def _too_large(self) -> FrameTooLarge:
        return FrameTooLarge(
            f"frame larger than {self.limit} bytes (max_message_bytes)",
            {"max_message_bytes": self.limit},
        )


def _head(raw: bytes) -> Frame:
    """The command and headers of a frame (no body yet)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise FrameError("the command or a header is not UTF-8") from None
    lines = text.split("\n")
    name = lines[0].rstrip("\r")
    if not name:
        raise FrameError("a frame without a command")
    # CONNECT is never escaped (1.0 compatibility), so values may
    # carry backslashes and colons as they are.
    raw_values = name in ("CONNECT", "STOMP")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.rstrip("\r").partition(":")
        if not sep or not key:
            raise FrameError(
                f"header line {_shorten(line)!r} is not name:value"
            )
        if not raw_values:
            key, value = unescape(key), unescape(value)
        headers.setdefault(key, value)
    return Frame(name, headers)


def _content_length(frame: Frame) -> int | None:
    text = frame.headers.get("content-length")
    if text is None:
        return None
    if not text.isascii() or not text.isdigit():
        raise FrameError(
            f"content-length {_shorten(text)!r} is not a non-negative integer"
        )
    return int(text)


def _shorten(text: str) -> str:
    return text[:40] + "..." if len(text) > 40 else text


# -- the protocol -----------------------------------------------------------


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


class Session:
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
    """The ERROR frame for ``err``: a short ``message`` header and a
    JSON-RPC error (-32600) as the body."""
    headers = {"message": err.message, "content-type": "application/json"}
    if receipt is not None:
        headers["receipt-id"] = receipt
    body = dumps(
        error_response(
            InvalidRequest(
                f"invalid STOMP frame: {err.message}; closing the connection",
                err.data,
            )
        )
    )
    return Frame("ERROR", headers, body)


# -- over asyncio streams ---------------------------------------------------


class Hub(Protocol):
    """Where event subscriptions go: :class:`hostagent.events.Events`."""

    def subscribe(self, peer: Any) -> bool:
        """Send ``peer`` notifications through ``peer.notify``."""
        ...

    def unsubscribe(self, peer: Any) -> bool:
        """Stop notifying ``peer``."""
        ...


async def serve(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    peer: Peer,
    *,
    answer: Callable[[bytes, Peer], Answer],
    config: ServerConfig,
    events: Hub | None,
    track: Callable[[asyncio.Task[None]], None],
    listening: Callable[[Peer], bool],
    initial: bytes = b"",
) -> None:
    """Serve one STOMP connection until it ends.

    ``answer`` is the API's (the NDJSON transport feeds it lines);
    ``track`` is told of each request task so that shutdown can wait
    for it; ``listening(peer)`` says the connection waits for events,
    so it is never idle; ``initial`` is what was read to tell the
    protocol.
    """
    log.debug("%s speaks STOMP", peer.describe())
    conn = _Connection(reader, writer, peer, answer, config, events, track)
    conn.listening = listening
    await conn.run(initial)


class _Connection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        answer: Callable[[bytes, Peer], Answer],
        config: ServerConfig,
        events: Hub | None,
        track: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.answer = answer
        self.config = config
        self.events = events
        self.track = track
        self.listening: Callable[[Peer], bool] = lambda peer: False
        self.session = Session()
        self.parser = Parser(config.max_message_bytes)
        self.in_flight = asyncio.Semaphore(config.max_in_flight)
        self.pending: set[asyncio.Task[None]] = set()
        self.loop = asyncio.get_running_loop()
        self.last_sent = self.last_received = self.loop.time()
        self.subscribed = False
        self.failed = False

    async def run(self, initial: bytes) -> None:
        """Serve until the client leaves, errs or goes silent."""
        self.peer.notify = self._notify
        beats: asyncio.Task[None] | None = None
        try:
            self.parser.feed(initial)
            while True:
                if not await self._frames():
                    return
                if beats is None and self.session.send_every:
                    beats = asyncio.create_task(self._beat())
                chunk = await self._read()
                if not chunk:
                    return
                self.parser.feed(chunk)
        except (ConnectionError, OSError):
            pass
        finally:
            if beats is not None:
                beats.cancel()
            self.peer.notify = None
            if self.subscribed and self.events is not None:
                self.events.unsubscribe(self.peer)
            # Requests already started run to completion even when the
            # client is gone: an attach stopped halfway would need
            # undoing.  A client that just stopped sending still gets
            # their answers; after an ERROR frame they go nowhere.
            if self.pending and not self.failed:
                await asyncio.gather(*self.pending, return_exceptions=True)
            self.writer.close()
            if self.pending:
                await asyncio.gather(*self.pending, return_exceptions=True)
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()

    async def _read(self) -> bytes:
        """The next chunk; b"" when the connection must end."""
        cfg = self.config
        while True:
            started = self.parser.started
            limits = [
                (cfg.read_timeout if started else cfg.idle_timeout, "read")
            ]
            if self.session.expect_every:
                since = self.loop.time() - self.last_received
                limits.append((2 * self.session.expect_every - since, "beat"))
            limits = [(t, why) for t, why in limits if t]
            timeout, why = min(limits) if limits else (None, "read")
            try:
                async with asyncio.timeout(timeout):
                    chunk = await self.reader.read(_READ_CHUNK)
            except TimeoutError:
                if why == "beat":
                    log.warning(
                        "closing %s: no heart-beat for %g s (it promised "
                        "one every %g s)",
                        self.peer.describe(),
                        2 * self.session.expect_every,
                        self.session.expect_every,
                    )
                    return b""
                if started:
                    await self._fail(
                        FrameError(
                            "incomplete frame; the rest did not arrive "
                            f"within {cfg.read_timeout:g} s (read_timeout)",
                            {"read_timeout": cfg.read_timeout},
                        )
                    )
                    return b""
                if self.pending or self.listening(self.peer):
                    continue  # waiting for answers or events: not idle
                log.debug("closing idle connection %s", self.peer.describe())
                return b""
            self.last_received = self.loop.time()
            return chunk

    async def _frames(self) -> bool:
        """Handle every complete frame buffered; False to close."""
        while True:
            receipt = None
            try:
                frame = self.parser.next()
                if frame is None:
                    return True
                receipt = frame.headers.get("receipt")
                outcome = self.session.handle(frame)
            except FrameError as e:
                await self._fail(e, receipt)
                return False
            self._sync_events()
            if outcome.disconnect:
                if self.pending:
                    await asyncio.gather(*self.pending, return_exceptions=True)
                await self._send(outcome.frames)
                return False
            if outcome.request is not None and not await self._run(
                outcome.request
            ):
                return False
            if outcome.frames and not await self._send(outcome.frames):
                return False

    def _sync_events(self) -> None:
        wants = self.session.wants_events
        if wants == self.subscribed or self.events is None:
            return
        if wants:
            self.subscribed = self.events.subscribe(self.peer)
        else:
            self.events.unsubscribe(self.peer)
            self.subscribed = False

    async def _run(self, request: Request) -> bool:
        """Start one request; False when the connection had to go."""
        result = self.answer(request.body, self.peer)
        if result is None or isinstance(result, bytes):
            return await self._reply(result, request.reply_to)
        await self.in_flight.acquire()
        task = asyncio.create_task(self._later(result, request.reply_to))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        self.track(task)
        return True

    async def _later(self, result: Any, reply_to: str) -> None:
        try:
            await self._reply(await result, reply_to)
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception(
                "unexpected error answering %s", self.peer.describe()
            )
        finally:
            self.in_flight.release()

    async def _reply(self, response: bytes | None, reply_to: str) -> bool:
        if response is None:
            return True  # notifications only: nothing to answer
        frames = self.session.deliver(reply_to, response.rstrip(b"\n"))
        if not frames:
            log.warning(
                "%s sent a request with reply-to %r but has no "
                "subscription there; its answer is dropped",
                self.peer.describe(),
                reply_to[:80],
            )
            return True
        return await self._send(frames)

    def _notify(self, message: dict[str, Any]) -> None:
        frames = self.session.deliver(EVENTS, dumps(message).rstrip(b"\n"))
        self._write(frames)

    def _write(self, frames: Iterable[Frame]) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(b"".join(encode(f) for f in frames))
        self.last_sent = self.loop.time()

    async def _send(self, frames: Iterable[Frame]) -> bool:
        """Write frames; False when the connection had to go."""
        self._write(frames)
        if not self.writer.transport.get_write_buffer_size():
            return True
        try:
            # A client that stops reading would otherwise hold a
            # request slot (or this reader) forever.
            async with asyncio.timeout(self.config.read_timeout):
                await self.writer.drain()
        except TimeoutError:
            log.warning(
                "closing %s: it did not take a frame for %g s "
                "(server.read_timeout)",
                self.peer.describe(),
                self.config.read_timeout,
            )
            self.writer.transport.abort()
            return False
        return True

    async def _fail(self, err: FrameError, receipt: str | None = None) -> None:
        self.failed = True
        log.warning(
            "closing %s: bad STOMP frame: %s", self.peer.describe(), err
        )
        with contextlib.suppress(ConnectionError, OSError):
            await self._send([error_frame(err, receipt)])

    async def _beat(self) -> None:
        """Send an EOL whenever nothing else went out for a beat."""
        every = self.session.send_every
        while not self.writer.is_closing():
            wait = self.last_sent + every - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self.writer.write(b"\n")
            self.last_sent = self.loop.time()
