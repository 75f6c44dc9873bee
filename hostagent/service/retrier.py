"""Background retries of detaches that failed (rows left ``detaching``).

A failed detach keeps its row (nothing is forgotten while the device
may still be there); before this, only the next ``detach_volume`` call
tried again, and an engine that had given up left it forever.  The
retrier tries again on its own with exponential backoff (tenacity's
``wait_exponential``, capped), one task per volume, until the row is
gone or no longer ``detaching``.

The attempt itself is the volume service's: it takes the volume's lock,
so a retry never runs beside a client's call on the same volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential,
)

from hostagent.config import StorageConfig

log = logging.getLogger(__name__)

# Attempt(vol_id) -> True when there is nothing left to retry (done, or
# the row is gone or no longer detaching); raises when it failed again.
Attempt = Callable[[str], Awaitable[bool]]


class _Again(Exception):
    """The attempt failed; tenacity sleeps and calls again."""


class DetachRetrier:
    """One retry task per volume left ``detaching``."""

    def __init__(self, attempt: Attempt, storage: StorageConfig) -> None:
        self._attempt = attempt
        # The first wait, doubling up to the longest.
        self.initial = storage.detach_retry_initial
        self.maximum = storage.detach_retry_max
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def schedule(self, vol_id: str) -> None:
        """Retry ``vol_id``'s detach in the background (once per volume)."""
        if self._closed:
            return
        task = self._tasks.get(vol_id)
        if task is not None and not task.done():
            return
        self._tasks[vol_id] = asyncio.create_task(
            self._run(vol_id), name=f"retry-detach-{vol_id}"
        )

    async def _run(self, vol_id: str) -> None:
        def before_sleep(state: RetryCallState) -> None:
            wait = state.next_action.sleep if state.next_action else 0
            log.info(
                "volume %s: detach retry %d failed; next in %.1f s",
                vol_id,
                state.attempt_number,
                wait,
                extra={"VOL_ID": vol_id},
            )

        retrying = AsyncRetrying(
            wait=wait_exponential(
                multiplier=self.initial, min=self.initial, max=self.maximum
            ),
            retry=retry_if_exception_type(_Again),
            stop=stop_never,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            # The detach that scheduled this has just failed: wait first.
            await asyncio.sleep(self.initial)
            async for attempt in retrying:
                with attempt:
                    if not await self._try(vol_id):
                        raise _Again
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("volume %s: detach retries stopped", vol_id)
        finally:
            if self._tasks.get(vol_id) is asyncio.current_task():
                del self._tasks[vol_id]

    async def _try(self, vol_id: str) -> bool:
        try:
            return await self._attempt(vol_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # The attempt recorded and logged the failure itself.
            log.debug("volume %s: detach retry failed: %s", vol_id, e)
            return False

    async def close(self) -> None:
        """Cancel every pending retry (at shutdown); rows stay as they are.

        The next start finishes them: reconciliation retries
        ``detaching`` rows, and the retrier takes over those it could
        not finish.
        """
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
