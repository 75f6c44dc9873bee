"""What one attach + detach costs at the very least, measured, not assumed.

The attach figures compare the agent with these, taken in the same
rounds: the machine's fsync (:class:`FsyncProbe`), the database writes
of one attach + detach in plain sqlite3 (:class:`CommitProbe`), and the
floor of the agent's design (:class:`FloorProbe`): those writes each
handed to a database thread as the agent hands them, and the two
os-brick calls each handed to a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hostagent.service.lane import Lane

# The writes of one attach + detach, each its own transaction: the row
# in "attaching" (durable), os-brick's answer, the row "attached"; then
# "detaching" (durable) and the delete.  Only the two intents fsync
# (hostagent/db.py); the rest commit with synchronous=NORMAL.
COMMITS = 5
DURABLE = 2


class CommitProbe:
    """The commits of one attach + detach in plain sqlite3, the agent's way.

    WAL journal, one transaction per statement, the two intents with
    ``synchronous=FULL`` and the rest with NORMAL, on the same file
    system as the agent's database: what the database work of one
    attach + detach costs at the very least.
    """

    def __init__(self, directory: Path, name: str = "commit-probe.db"):
        self.path = directory / name
        # The floor probe writes from its lane's thread, one at a time.
        self.con = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        self.con.execute("PRAGMA journal_mode=wal")
        self.con.execute("PRAGMA synchronous=normal")
        self.con.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
        self.n = 0
        for _ in range(50):  # until the WAL file stops growing
            self.run()

    def _durably(self, sql: str, args: tuple[str, ...]) -> None:
        self.con.execute("PRAGMA synchronous=full")
        self.con.execute(sql, args)
        self.con.execute("PRAGMA synchronous=normal")

    def writes(self) -> list[Callable[[], object]]:
        """The five commits of one attach + detach, as calls to make."""
        key = str(self.n)
        self.n += 1
        update = "UPDATE t SET v = ? WHERE k = ?"
        return [
            lambda: self._durably(
                "INSERT INTO t VALUES (?, ?)", (key, "x" * 300)
            ),
            *(
                (lambda i=i: self.con.execute(update, (str(i), key)))
                for i in range(COMMITS - 3)
            ),
            lambda: self._durably(update, ("detaching", key)),
            lambda: self.con.execute("DELETE FROM t WHERE k = ?", (key,)),
        ]

    def run(self) -> float:
        """Seconds for the five commits (two of them fsynced)."""
        writes = self.writes()
        start = time.perf_counter()
        for write in writes:
            write()
        return time.perf_counter() - start

    def close(self) -> None:
        """Close and remove the probe database."""
        self.con.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


class FsyncProbe:
    """One 4 KiB write + fsync of a file in a directory, timed.

    The unit of durability on that file system: the issue's target for
    the agent's attach + detach overhead is counted in these.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "fsync-probe"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.block = os.urandom(4096)
        for _ in range(20):
            self.run()

    def run(self) -> float:
        """Seconds for one 4 KiB ``pwrite`` and ``fsync``."""
        start = time.perf_counter()
        os.pwrite(self.fd, self.block, 0)
        os.fsync(self.fd)
        return time.perf_counter() - start

    def close(self) -> None:
        """Close and remove the probe file."""
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


class FloorProbe:
    """The hand-offs an attach + detach cannot do without, timed.

    The agent writes on one database thread (a :class:`Lane`) and calls
    os-brick on a thread pool, so the event loop never blocks on a disk
    or a device.  One round: the :data:`COMMITS` writes of a
    :class:`CommitProbe`, each a trip to a lane, and two trips to a
    pool that return at once (os-brick's own time is not the agent's).
    What the agent adds to this (parsing and checking requests, the
    steps' logic, log lines, links) is in the difference.
    """

    def __init__(self, directory: Path) -> None:
        self.commits = CommitProbe(directory, "floor-probe.db")
        self.loop = asyncio.new_event_loop()
        self.lane = Lane("floor")
        self.pool = ThreadPoolExecutor(1)
        for _ in range(20):
            self.run()

    async def _round(self) -> float:
        start = time.perf_counter()
        for write in self.commits.writes():
            await self.lane.call(write)
        for _ in range(2):
            await self.loop.run_in_executor(self.pool, _nothing)
        return time.perf_counter() - start

    def run(self) -> float:
        """Seconds for one round of hand-offs and writes."""
        return self.loop.run_until_complete(self._round())

    def close(self) -> None:
        """Stop the threads, close the loop, remove the database."""
        self.lane.shutdown()
        self.pool.shutdown()
        self.loop.close()
        self.commits.close()


def _nothing() -> None:
    """A call that returns at once: the hand-off alone."""
