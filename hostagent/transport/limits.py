"""Per-client limits: who may hold how many connections, and handshakes.

A client can only exhaust its own share:

* ``max_connections`` slots in all, for Unix clients and TLS clients
  past their handshake;
* of those, ``reserved_connections`` (at most half) are kept for root's
  Unix clients: other local users and TLS clients together never take
  them;
* each Unix uid other than root holds at most
  ``max_connections_per_uid``, so one local user cannot crowd out the
  engines; each TLS certificate subject at most
  ``max_connections_per_subject``;
* TLS handshakes in progress: at most ``max_handshakes`` per source
  address, the others from that address wait their turn.  There is no
  global gate: a crowd of peers from elsewhere never delays one.

Refusals are logged through :class:`RefusalLog`, which keeps a flood of
them from flooding the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from hostagent.config import ServerConfig

log = logging.getLogger("hostagent.transport")

# Refusal lines logged one by one per interval; the rest are counted.
REFUSAL_LOG_INTERVAL = 10.0
REFUSAL_LOG_BURST = 3


class Limits:
    """The connection slots of one server and who holds them."""

    def __init__(self, config: ServerConfig) -> None:
        """Slots as ``config`` allows them."""
        self.config = config
        self._established: set[asyncio.Task[Any]] = set()
        self._owners: Counter[tuple[str, Any]] = Counter()
        self._shared = 0  # held by clients other than root

    @property
    def established(self) -> int:
        """Connections holding a slot."""
        return len(self._established)

    @property
    def reserved(self) -> int:
        """Slots kept for root's Unix clients."""
        c = self.config
        return min(c.reserved_connections, c.max_connections // 2)

    def full(self) -> bool:
        """Whether every slot of max_connections is taken."""
        return len(self._established) >= self.config.max_connections

    def admit_unix(self, task: asyncio.Task[Any], uid: int | None) -> str:
        """Give a Unix client a slot; "" or why it has none."""
        if uid == 0:
            if self.full():
                return f"max_connections={self.config.max_connections}"
            self._hold(task, None)
            return ""
        cap = self.config.max_connections_per_uid
        return self._admit(task, ("uid", uid), f"uid {uid}", cap, "uid")

    def admit_tls(self, task: asyncio.Task[Any], subject: str) -> str:
        """Give a TLS client a slot; "" or why it has none."""
        cap = self.config.max_connections_per_subject
        who = f"subject {subject!r}"
        return self._admit(task, ("cn", subject), who, cap, "subject")

    def _admit(
        self,
        task: asyncio.Task[Any],
        owner: tuple[str, Any],
        who: str,
        cap: int,
        key: str,
    ) -> str:
        """A slot for a client other than root, within its own cap and
        outside root's reserve; "" or why not."""
        c = self.config
        if self.full():
            return f"max_connections={c.max_connections}"
        if self._owners[owner] >= cap:
            return (
                f"{who} holds {self._owners[owner]}, "
                f"max_connections_per_{key}={cap}"
            )
        if self._shared >= c.max_connections - self.reserved:
            return (
                f"the last {self.reserved} of max_connections="
                f"{c.max_connections} are kept for root "
                "(reserved_connections)"
            )
        self._hold(task, owner)
        return ""

    def _hold(
        self, task: asyncio.Task[Any], owner: tuple[str, Any] | None
    ) -> None:
        self._established.add(task)
        if owner is not None:
            self._owners[owner] += 1
            self._shared += 1

        def release(_: Any) -> None:
            self._established.discard(task)
            if owner is not None:
                self._owners[owner] -= 1
                if not self._owners[owner]:
                    del self._owners[owner]
                self._shared -= 1

        task.add_done_callback(release)


class Handshakes:
    """TLS handshakes in progress, at most ``max_handshakes`` per source
    address; a peer that sent nothing yet holds no slot at all."""

    def __init__(self, per_address: int) -> None:
        """At most ``per_address`` at once from one address."""
        self.per_address = per_address
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, address: str) -> AsyncIterator[None]:
        """Hold one of ``address``'s slots (waiting for it if need be)."""
        entry = self._slots.get(address)
        if entry is None:
            entry = self._slots[address] = (
                asyncio.Semaphore(self.per_address),
                [0],
            )
        sem, users = entry
        users[0] += 1
        try:
            async with sem:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._slots[address]


class RefusalLog:
    """ "refusing a connection" lines, at most a few per interval.

    The first :data:`REFUSAL_LOG_BURST` of an interval are logged as
    they come; the rest are counted and one summary line with the count
    closes the interval.  A client retrying in a loop cannot flood the
    journal, and the operator still sees how many were turned away.
    """

    def __init__(
        self,
        interval: float = REFUSAL_LOG_INTERVAL,
        burst: int = REFUSAL_LOG_BURST,
    ) -> None:
        """One summary per ``interval`` seconds after ``burst`` lines."""
        self.interval = interval
        self.burst = burst
        self._window_end = 0.0
        self._logged = 0
        self._held = 0
        self._timer: asyncio.TimerHandle | None = None

    def warning(self, fmt: str, *args: Any) -> None:
        """Log a refusal, or count it for the interval's summary."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._window_end and self._timer is None:
            self._window_end = now + self.interval
            self._logged = 0
        if self._logged < self.burst:
            self._logged += 1
            log.warning(fmt, *args)
            return
        self._held += 1
        if self._timer is None:
            self._timer = loop.call_at(self._window_end, self._summary)

    def _summary(self) -> None:
        self._timer = None
        log.warning(
            "refusing connections: %d more refused in the last %g s "
            "(not logged one by one)",
            self._held,
            self.interval,
        )
        self._held = 0

    def close(self) -> None:
        """Log what is still counted (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._summary()
