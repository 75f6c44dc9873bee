"""The STOMP 1.2 framing, as vdsm speaks it on the TLS port.

vdsm's clients (``vdsm.client``, the engine) wrap JSON-RPC in STOMP
frames: CONNECT, SUBSCRIBE to a reply destination, SEND requests to
``jms.topic.vdsm_requests`` with a ``reply-to`` header, and get each
answer back as a MESSAGE on that subscription.  A connection subscribed
to ``jms.queue.events`` gets the agent's notifications there.  The
TLS listener picks this framing for a connection whose first bytes are
``CONNECT`` or ``STOMP`` (:mod:`hostagent.transport.sniff`); frames are
:mod:`~hostagent.transport.stomp_frames`, their meaning
:mod:`~hostagent.transport.stomp_session`.

The limits are NDJSON's, per connection: ``max_message_bytes`` per
frame, ``max_in_flight`` requests running (reading pauses at the cap),
``read_timeout`` for a started frame and for a peer to take what is
written, ``idle_timeout`` for a silent connection that waits for
nothing, plus the negotiated heart-beats.  Outgoing frames go through
:class:`~hostagent.transport.output.Output`, like NDJSON lines.

A frame the agent cannot take gets an ERROR frame and the connection
is closed, as the STOMP spec asks; requests already running finish all
the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable
from typing import Any

from hostagent.api import dumps
from hostagent.transport.framing import Session
from hostagent.transport.inflight import InFlight
from hostagent.transport.output import Output
from hostagent.transport.sniff import register
from hostagent.transport.stomp_frames import Frame, FrameError, Parser, encode
from hostagent.transport.stomp_session import (
    EVENTS,
    Request,
    SessionState,
    error_frame,
)

log = logging.getLogger("hostagent.transport")

_READ_CHUNK = 65536
# A STOMP connection opens with one of these (after heart-beat EOLs).
PREFIXES = (b"CONNECT", b"STOMP")


async def serve(session: Session) -> None:
    """Serve one STOMP connection until it ends."""
    session.peer.transport = "stomp"
    log.debug("%s speaks STOMP", session.peer.describe())
    await _Connection(session).run()


register(PREFIXES, serve)


class _Connection:
    """One STOMP connection over asyncio streams."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.endpoint = session.endpoint
        self.config = session.endpoint.config
        self.peer = session.peer
        self.reader = session.reader
        self.writer = session.writer
        self.out = Output(
            session.writer, self.config.read_timeout, self.peer.describe()
        )
        self.state = SessionState()
        self.parser = Parser(self.config.max_message_bytes)
        self.requests = InFlight(self.endpoint, self.out, self.peer)
        self.loop = asyncio.get_running_loop()
        self.last_sent = self.last_received = self.loop.time()
        self.subscribed = False
        self.failed = False

    async def run(self) -> None:
        """Serve until the client leaves, errs or goes silent."""
        self.peer.notify = self._notify
        beats: asyncio.Task[None] | None = None
        try:
            self.parser.feed(self.session.initial)
            while True:
                # The answers given at once to the frames of one read
                # leave in one write.
                self.out.cork()
                if not await self._frames() or not await self.out.uncork():
                    return
                if beats is None and self.state.send_every:
                    beats = asyncio.create_task(self._beat())
                chunk = await self._read()
                if not chunk:
                    return
                self.parser.feed(chunk)
        except (ConnectionError, OSError):
            pass
        finally:
            await self._close(beats)

    async def _close(self, beats: asyncio.Task[None] | None) -> None:
        if beats is not None:
            beats.cancel()
        if self.subscribed:
            self.endpoint.subscribe(self.peer, False)
        # Requests already started run to completion even when the
        # client is gone: an attach stopped halfway would need undoing.
        # A client that just stopped sending still gets its answers;
        # after an ERROR frame they go nowhere.
        if self.requests.tasks and not self.failed:
            await self.out.uncork()
            await self.requests.wait()
        self.peer.notify = None
        self.out.flush()
        self.writer.close()
        await self.requests.wait()
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
            if self.state.expect_every:
                since = self.loop.time() - self.last_received
                limits.append((2 * self.state.expect_every - since, "beat"))
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
                        2 * self.state.expect_every,
                        self.state.expect_every,
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
                if self.requests.tasks or self.endpoint.listening(self.peer):
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
                outcome = self.state.handle(frame)
            except FrameError as e:
                await self._fail(e, receipt)
                return False
            self._sync_events()
            if outcome.disconnect:
                if self.requests.tasks:
                    await self.out.uncork()
                    await self.requests.wait()
                await self._send(outcome.frames)
                return False
            if outcome.request is not None and not await self._run(
                outcome.request
            ):
                return False
            if outcome.frames:
                self._write(outcome.frames)

    def _sync_events(self) -> None:
        wants = self.state.wants_events
        if wants != self.subscribed:
            self.subscribed = self.endpoint.subscribe(self.peer, wants)

    async def _run(self, request: Request) -> bool:
        """Answer or start one request; False when the peer had to go."""
        answer = self.endpoint.answer(request.body, self.peer)
        if answer is None or isinstance(answer, bytes):
            self._reply(answer, request.reply_to)
            return True
        return await self.requests.start(
            answer, functools.partial(self._later, request.reply_to)
        )

    async def _later(self, reply_to: str, response: bytes | None) -> None:
        if self._reply(response, reply_to):
            await self.out.drained()

    def _reply(self, response: bytes | None, reply_to: str) -> bool:
        """Write the answer to its reply destination; whether it went."""
        if response is None:
            return False  # notifications only: nothing to answer
        frames = self.state.deliver(reply_to, response.rstrip(b"\n"))
        if not frames:
            log.warning(
                "%s sent a request with reply-to %r but has no "
                "subscription there; its answer is dropped",
                self.peer.describe(),
                reply_to[:80],
            )
            return False
        self._write(frames)
        return True

    def _notify(self, message: dict[str, Any]) -> None:
        frames = self.state.deliver(EVENTS, dumps(message).rstrip(b"\n"))
        if frames:
            self._write(frames)

    def _write(self, frames: Iterable[Frame]) -> None:
        self.out.write(b"".join(encode(f) for f in frames))
        self.last_sent = self.loop.time()

    async def _send(self, frames: Iterable[Frame]) -> bool:
        """Write frames now; False when the connection had to go."""
        self._write(frames)
        return await self.out.uncork() and await self.out.drained()

    async def _fail(self, err: FrameError, receipt: str | None = None) -> None:
        self.failed = True
        log.warning(
            "closing %s: bad STOMP frame: %s", self.peer.describe(), err
        )
        with contextlib.suppress(ConnectionError, OSError):
            await self._send([error_frame(err, receipt)])

    async def _beat(self) -> None:
        """Send an EOL whenever nothing else went out for a beat."""
        every = self.state.send_every
        while not self.writer.is_closing():
            wait = self.last_sent + every - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self.out.write(b"\n")
            self.last_sent = self.loop.time()
