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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hostagent.brick import Brick
from hostagent.config import Config
from hostagent.db import Database, DatabaseBusy, VolumeRecord
from hostagent.failpoints import FailPoints
from hostagent.service import secrecy
from hostagent.service.lane import Lane
from hostagent.service.links import ManagedLinks
from hostagent.service.locks import VolumeLocks
from hostagent.udev import Udev

T = TypeVar("T")

# How long to wait for a connected volume's device (and, for multipath,
# its dm device) to show up after os-brick returned.  os-brick already
# waits for the SCSI device; this covers udev and multipathd catching up.
DEVICE_WAIT = 10.0


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

    async def in_db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the database thread."""
        return await self.db_thread.call(fn, *args)

    async def in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` (os-brick, udev) on a worker thread."""
        loop = asyncio.get_running_loop()
        # Carry the caller's context (the JSON-RPC request id) so os-brick's
        # own log lines are tagged with the request that caused them.
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self.workers, ctx.run, fn, *args)

    async def record(self, vol_id: str) -> VolumeRecord | None:
        """The row of ``vol_id``, read on the event loop if it can be.

        A read of one row takes less than the trip to the database
        thread; when SQLite would make it wait, the thread does it.
        """
        try:
            return self.db.peek(vol_id)
        except DatabaseBusy:
            return await self.in_db(self.db.get, vol_id)

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
        secrecy.hold_recorded(await self.in_db(self.db.list))
        self.links.create_directory()

    async def close(self) -> None:
        """Close the database; called after all operations finished."""
        await self.in_db(self.db.close)
        self.db_thread.shutdown(wait=True)
        self.workers.shutdown(wait=False, cancel_futures=True)
