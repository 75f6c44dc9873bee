"""Per-client limits: who may hold how many connections.

Counts the connections that take a slot of ``max_connections`` (Unix
clients, and TLS clients past their handshake) and says why one is
refused.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hostagent.config import ServerConfig


class Limits:
    """The connection slots of one server."""

    def __init__(self, config: ServerConfig) -> None:
        """Slots as ``config`` allows them."""
        self.config = config
        self._established: set[asyncio.Task[Any]] = set()

    @property
    def established(self) -> int:
        """Connections holding a slot."""
        return len(self._established)

    def full(self) -> bool:
        """Whether every slot of max_connections is taken."""
        return len(self._established) >= self.config.max_connections

    def admit(self, task: asyncio.Task[Any]) -> bool:
        """Give ``task`` a slot until it ends; False when full."""
        if self.full():
            return False
        self._established.add(task)
        task.add_done_callback(self._established.discard)
        return True
