"""Per-volume locks: one operation per volume at a time.

Different volumes run in parallel; a second operation on a volume waits
up to ``storage.lock_timeout`` and then gets 927.  A lock exists only
while someone holds or waits for it, so the table stays the size of the
work in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from hostagent.errors import VolumeBusy


class VolumeLocks:
    """The locks of the volumes being worked on (event loop only)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, vol_id: str) -> AsyncIterator[None]:
        """Hold ``vol_id``'s lock, waiting up to the timeout (else 927)."""
        lock = self._locks.setdefault(vol_id, asyncio.Lock())
        self._waiters[vol_id] = self._waiters.get(vol_id, 0) + 1
        try:
            try:
                if lock.locked():
                    await asyncio.wait_for(lock.acquire(), self.timeout)
                else:
                    await lock.acquire()
            except TimeoutError:
                raise VolumeBusy(
                    f"another operation on volume {vol_id} is in progress",
                    {"vol_id": vol_id},
                ) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            self._waiters[vol_id] -= 1
            if not self._waiters[vol_id]:
                del self._waiters[vol_id]
                del self._locks[vol_id]
