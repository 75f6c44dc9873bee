"""A connection's outgoing side: every batching of answers lives here.

Two kinds of batching, one buffer:

* per event loop turn: the first line of a turn is written at once (a
  lone request gets its answer without delay); lines that follow in the
  same turn wait for a callback at the start of the next one and leave
  in a single write;
* corked: a framing that answers several requests of one read at once
  (pipelined pings) corks the output, and everything written meanwhile
  leaves in one write when it uncorks.

Ordering is kept, and the transport's flow control still applies: a
peer that does not take what is written is dropped after
``read_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("hostagent.transport")


class Output:
    """One connection's outgoing lines (or frames)."""

    def __init__(
        self, writer: asyncio.StreamWriter, timeout: float, who: str
    ) -> None:
        """``timeout``: seconds the peer gets to take what was written;
        ``who``: the peer, for the log line when it does not."""
        self.writer = writer
        self.timeout = timeout
        self.who = who
        self._held: list[bytes] = []
        self._turn = False
        self._corked = False

    def write(self, data: bytes) -> None:
        """Send ``data`` now, or with the others of this turn or cork."""
        if self.writer.is_closing():
            return
        if self._corked or self._turn:
            self._held.append(data)
            return
        self.writer.write(data)
        self._turn = True
        asyncio.get_running_loop().call_soon(self._end_turn)

    def _end_turn(self) -> None:
        self._turn = False
        if not self._corked:
            self.flush()

    def flush(self) -> None:
        """Write what was held back, in one write."""
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            if not self.writer.is_closing():
                self.writer.write(data)

    def cork(self) -> None:
        """Hold every write until :meth:`uncork`."""
        self._corked = True

    async def uncork(self) -> bool:
        """Send what the cork held; False when the peer had to go."""
        self._corked = False
        if not self._held:
            return True
        self.flush()
        return await self.drained()

    async def send(self, data: bytes) -> bool:
        """Write ``data``; False when the peer had to go."""
        self.write(data)
        return await self.drained()

    async def drained(self) -> bool:
        """Wait until the peer took what was written, within the timeout.

        False (and the connection aborted) when it did not: a client that
        stops reading its answers would otherwise hold a request slot, or
        the reader, forever.
        """
        if not self.writer.transport.get_write_buffer_size():
            return True  # all of it went out: nothing to wait for
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except TimeoutError:
            log.warning(
                "closing %s: it did not take a response for %g s "
                "(server.read_timeout)",
                self.who,
                self.timeout,
            )
            self.writer.transport.abort()
            return False
        return True


async def send_and_close(writer: asyncio.StreamWriter, line: bytes) -> None:
    """Send a last line (an error saying why) and close."""
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(line)
        await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
