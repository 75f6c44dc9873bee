"""A connection's requests in flight: the cap, the tasks, the answers.

Both framings run a request the API cannot answer at once as a task of
its own, at most ``max_in_flight`` per connection: reading waits at the
cap, which pushes back on the client instead of queueing without bound.
Shutdown waits for every such task (see ``Endpoint.track_request``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from hostagent.api import Answer, Peer
from hostagent.transport.framing import Endpoint
from hostagent.transport.output import Output

log = logging.getLogger("hostagent.transport")

# Sends one response (None: only notifications, nothing to answer).
Deliver = Callable[[bytes | None], Awaitable[None]]


class InFlight:
    """The requests of one connection still being worked on."""

    def __init__(self, endpoint: Endpoint, out: Output, peer: Peer) -> None:
        self.endpoint = endpoint
        self.out = out
        self.peer = peer
        self.tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(endpoint.config.max_in_flight)

    async def start(
        self, answer: Awaitable[bytes | None], deliver: Deliver
    ) -> bool:
        """Await ``answer`` in a task of its own, then ``deliver`` it.

        Waits for a free slot first; False when the peer had to go.
        """
        # Reaching the in-flight cap may wait: what is answered goes
        # first.
        if not await self.out.uncork():
            return False
        await self._slots.acquire()
        self.out.cork()
        task = asyncio.create_task(self._run(answer, deliver))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.endpoint.track_request(task)
        return True

    async def _run(
        self, answer: Awaitable[bytes | None], deliver: Deliver
    ) -> None:
        try:
            await self.answer(answer, deliver)
        finally:
            self._slots.release()

    async def answer(self, answer: Answer, deliver: Deliver) -> None:
        """``deliver`` the response to ``answer``, here and now.

        A peer gone meanwhile is no error; anything else is logged.
        """
        try:
            if answer is None or isinstance(answer, bytes):
                response = answer
            else:
                response = await answer
            await deliver(response)
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception(
                "unexpected error answering %s", self.peer.describe()
            )

    async def wait(self) -> None:
        """Return once every request started has finished."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
