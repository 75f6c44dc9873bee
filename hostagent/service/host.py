"""What the flows run on: threads, os-brick, udev, the database, links.

Blocking work runs off the event loop: os-brick calls on a thread pool,
database calls on one dedicated thread (a :class:`~.lane.Lane`, which
owns the only connection that writes).  The managed symlinks (see
:mod:`.links`), a device's presence check (a stat and a sysfs read) and
the read of one row by its key (:meth:`~hostagent.db.Database.peek`)
take microseconds and run on the loop: a hand-off to a thread costs more
than they do.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from hostagent.brick import Brick
from hostagent.config import Config
from hostagent.db import Database, DatabaseBusy, VolumeRecord
from hostagent.dbfile import disk_failure
from hostagent.errors import StateUnwritable
from hostagent.failpoints import FailPoints
from hostagent.service import secrecy
from hostagent.service.lane import Lane
from hostagent.service.links import ManagedLinks
from hostagent.service.locks import VolumeLocks
from hostagent.service.retrier import DetachRetrier
from hostagent.udev import Udev

T = TypeVar("T")

log = logging.getLogger(__name__)

# How long to wait for a connected volume's device (and, for multipath,
# its dm device) to show up after os-brick returned.  os-brick already
# waits for the SCSI device; this covers udev and multipathd catching up.
DEVICE_WAIT = 10.0


_STATE_WORDS = {
    "full": "is full",
    "read_only": "is read-only",
    "io_error": "cannot be written",
}


def state_error(
    config: Config, reason: str, error: Exception
) -> StateUnwritable:
    """Error 930 for a database call the file system refused."""
    state_dir = config.storage.state_dir
    return StateUnwritable(
        f"the state directory {state_dir} {_STATE_WORDS[reason]} "
        f"({error}); the change was not recorded: free space or remount "
        "it read-write, then retry",
        {"state_dir": state_dir, "reason": reason},
    )


class Host:
    """The parts of the host every step uses, and the threads to use them."""

    def __init__(
        self,
        config: Config,
        database: Database,
        brick: Brick,
        udev: Udev,
        failpoints: FailPoints | None = None,
    ) -> None:
        self.config = config
        self.db = database
        self.brick = brick
        self.udev = udev
        self.failpoints = failpoints or FailPoints.from_env()
        self.links = ManagedLinks(config.volumes_dir, config.managed_dir)
        self.locks = VolumeLocks(config.storage.lock_timeout)
        self.device_wait = DEVICE_WAIT
        self.db_thread = Lane("db")
        self.workers = ThreadPoolExecutor(
            config.brick.workers, thread_name_prefix="brick"
        )
        self._brick_load: asyncio.Future[None] | None = None
        # Background retries of failed detaches; the service sets it
        # (the retry runs its detach), start-up reconciliation uses it.
        self.retrier: DetachRetrier | None = None

    async def in_db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the database thread.

        A write the state directory's file system refuses (full,
        read-only) is error 930, naming the directory.
        """
        try:
            return await self.db_thread.call(fn, *args)
        except Exception as e:
            reason = disk_failure(e)
            if reason is None:
                raise
            raise state_error(self.config, reason, e) from e

    async def in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` (os-brick, udev) on a worker thread."""
        loop = asyncio.get_running_loop()
        # Carry the caller's context (the JSON-RPC request id) so os-brick's
        # own log lines are tagged with the request that caused them.
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self.workers, ctx.run, fn, *args)

    def in_background(self, fn: Callable[[], object], what: str) -> None:
        """Run blocking ``fn()`` on a worker, waited for by nobody.

        For start-up's checks of the host, off the path to READY; a
        failure is logged as ``what`` failed, and start-up goes on.
        """

        def done(future: Future[object]) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.warning("%s failed: %s", what, future.exception())

        self.workers.submit(fn).add_done_callback(done)

    async def record(self, vol_id: str) -> VolumeRecord | None:
        """The row of ``vol_id``, read on the event loop if it can be.

        A read of one row takes less than the trip to the database
        thread; when SQLite would make it wait, the thread does it.
        """
        try:
            return self.db.peek(vol_id)
        except DatabaseBusy:
            return await self.in_db(self.db.get, vol_id)

    async def note_failure(self, vol_id: str, message: str) -> int:
        """Record a failed detach attempt and schedule the next one.

        The row becomes ``detaching`` with ``message`` as ``last_error``
        and one attempt more; returns the attempts so far.
        """
        attempts = await self.in_db(self.db.note_failure, vol_id, message)
        if self.retrier is not None:
            self.retrier.schedule(vol_id)
        return attempts

    def start_brick_load(self) -> None:
        """Begin importing os-brick in the background (off the READY path)."""
        if self._brick_load is None:
            self._brick_load = asyncio.ensure_future(
                self.in_worker(self.brick.load)
            )
            # The outcome is re-raised by brick_ready(); this only keeps
            # asyncio from logging "exception was never retrieved".
            self._brick_load.add_done_callback(
                lambda f: f.cancelled() or f.exception()
            )

    async def brick_ready(self) -> None:
        """Wait until os-brick is loaded; raise 925 if it cannot be."""
        self.start_brick_load()
        assert self._brick_load is not None
        await asyncio.shield(self._brick_load)

    async def open(self) -> None:
        """Open the database on its thread and prepare the directories."""
        await self.in_db(self.db.open)
        # Secrets of volumes attached in an earlier run: the scrubber
        # must know them before the first request.
        await self.in_db(secrecy.hold_recorded, self.db)
        self.links.create_directory()

    async def close(self) -> None:
        """Close the database; called after all operations finished."""
        # Retries left are finished at the next start (reconciliation).
        if self.retrier is not None:
            await self.retrier.close()
        await self.in_db(self.db.close)
        self.db_thread.shutdown(wait=True)
        self.workers.shutdown(wait=False, cancel_futures=True)
