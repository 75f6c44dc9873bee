"""The NDJSON framing: one JSON-RPC message per line, both ways.

Each line goes to the API as its own request, so a client may pipeline
requests and a slow attach does not hold up a ping on the same
connection; responses go back as they finish, matched by id.  A request
the API can answer at once (a ping) is answered inline, without the
cost of a task; the answers to the lines of one read leave together
(see :class:`~hostagent.transport.output.Output`).

Limits applied here, per connection:

* a line longer than ``max_message_bytes`` gets -32600 and the
  connection is closed;
* at most ``max_in_flight`` requests running (reading pauses at the
  cap, which pushes back on the client instead of queueing without
  bound);
* ``read_timeout``: a started line must be complete within that many
  seconds of its first byte, however the bytes trickle in (slow loris);
* ``idle_timeout``: a connection with nothing in flight and nothing
  received for that long is closed, unless it listens for events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hostagent.api import connection_error, dumps
from hostagent.transport.framing import Session
from hostagent.transport.inflight import InFlight
from hostagent.transport.output import Output, send_and_close

log = logging.getLogger("hostagent.transport")

_READ_CHUNK = 65536


async def serve(session: Session) -> None:
    """Serve one connection until the peer goes or the server closes."""
    config = session.endpoint.config
    out = Output(session.writer, config.read_timeout, session.peer.describe())
    session.peer.notify = lambda obj: out.write(dumps(obj))
    conn = _Connection(session, out)
    try:
        await conn.read_lines()
    except (ConnectionError, OSError):
        pass
    finally:
        # Requests already started run to completion even when the
        # client went away: an attach stopped halfway would need
        # undoing, and finishing it leaves a clean, recorded state.
        await conn.requests.wait()
        session.peer.notify = None
        out.flush()
        session.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await session.writer.wait_closed()


class _Connection:
    """The reading side of one NDJSON connection."""

    def __init__(self, session: Session, out: Output) -> None:
        self.session = session
        self.endpoint = session.endpoint
        self.config = session.endpoint.config
        self.peer = session.peer
        self.out = out
        self.requests = InFlight(self.endpoint, out, self.peer)

    async def read_lines(self) -> None:
        """Split the stream into lines and start a request for each.

        Framing is done here rather than with ``readuntil`` so that the
        two timeouts can tell an idle connection (nothing buffered) from
        a stalled one (half a line buffered).
        """
        limit = self.config.max_message_bytes
        idle = self.config.idle_timeout or None
        reader, out = self.session.reader, self.out
        loop = asyncio.get_running_loop()
        # When the line begun in buf must be complete; None: none begun.
        deadline: float | None = None
        buf = bytearray(self.session.initial)
        start = 0  # where the next line begins in buf
        scan = 0  # where to look for its newline
        out.cork()
        while True:
            nl = buf.find(b"\n", scan)
            if nl >= 0:
                if nl - start > limit:
                    await out.uncork()
                    await self._too_large()
                    return
                line = bytes(buf[start:nl])
                start = scan = nl + 1
                if line.strip() and not await self._line(line):
                    return
                continue
            # The answers given at once to the lines of this read leave
            # in one write.
            if not await out.uncork():
                return
            if len(buf) - start > limit:
                await self._too_large()
                return
            # A line that ended here means the rest began in the last
            # read: its time starts now; a line still going keeps its own.
            if start or deadline is None:
                deadline = loop.time() + self.config.read_timeout
            del buf[:start]
            start, scan = 0, len(buf)
            started = bool(buf) and not buf.isspace()
            if not started:
                deadline = None
            try:
                async with (
                    asyncio.timeout_at(deadline)
                    if deadline is not None
                    else asyncio.timeout(idle)
                ):
                    chunk = await reader.read(_READ_CHUNK)
            except TimeoutError:
                if started:
                    await self._stalled(len(buf))
                    return
                if self.requests.tasks or self.endpoint.listening(self.peer):
                    continue  # waiting for answers or events: not idle
                log.debug("closing idle connection %s", self.peer.describe())
                return
            if not chunk:
                if started:  # the last line may lack its newline
                    answer = self.endpoint.answer(bytes(buf), self.peer)
                    await self.requests.answer(answer, self._send)
                return
            out.cork()
            buf += chunk

    async def _line(self, line: bytes) -> bool:
        """Answer or start one request; False when the peer had to go."""
        answer = self.endpoint.answer(line, self.peer)
        if answer is None or isinstance(answer, bytes):
            if answer is not None:
                self.out.write(answer)
            return True
        return await self.requests.start(answer, self._send)

    async def _send(self, response: bytes | None) -> None:
        if response is not None:
            await self.out.send(response)

    async def _too_large(self) -> None:
        limit = self.config.max_message_bytes
        self.out.flush()
        await send_and_close(
            self.out.writer,
            connection_error(
                "invalid request: message larger than "
                f"{limit} bytes (max_message_bytes); "
                "closing the connection",
                {"max_message_bytes": limit},
            ),
        )

    async def _stalled(self, size: int) -> None:
        timeout = self.config.read_timeout
        log.warning(
            "closing %s: %d bytes of a request and no newline for %g s "
            "(server.read_timeout)",
            self.peer.describe(),
            size,
            timeout,
        )
        self.out.flush()
        await send_and_close(
            self.out.writer,
            connection_error(
                f"invalid request: incomplete message; the rest of the "
                f"line did not arrive within {timeout:g} s "
                "(read_timeout); closing the connection",
                {"read_timeout": timeout},
            ),
        )
