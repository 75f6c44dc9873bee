"""The managed-volume service: attach/detach flows and their rules.

Rules (DESIGN.md):
* one operation per volume at a time; different volumes run in parallel;
* re-attach with the same connection info returns the existing attachment,
  with different info it is error 929;
* attach is a flow: record intent -> connect -> wait for the device ->
  record the attachment -> managed symlink; a failing step undoes the done
  ones, disconnect included, and nothing is left behind;
* detach: mark detaching -> remove symlink -> disconnect -> delete row; a
  failing disconnect keeps the row (``detaching`` + ``last_error``) so the
  next detach retries it.

Blocking work runs off the event loop: os-brick calls on a thread pool,
database calls on one dedicated thread (which owns the only connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hostagent import __version__, db
from hostagent.brick import MULTIPATH_DRIVERS, Brick
from hostagent.config import Config
from hostagent.db import Database, VolumeRecord
from hostagent.errors import (
    AgentError,
    ConnectionInfoMismatch,
    ConnectorFailed,
    DriverNotSupported,
    MultipathMissing,
    VolumeBusy,
)
from hostagent.flow import FailPoints, Flow, FlowError, Step
from hostagent.redact import SCRUBBER
from hostagent.udev import Udev

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long to wait for a connected volume's device (and, for multipath,
# its dm device) to show up after os-brick returned.  os-brick already
# waits for the SCSI device; this covers udev and multipathd catching up.
DEVICE_WAIT = 10.0
DEVICE_POLL = 0.1


class VolumeService:
    """Attach, detach and describe managed volumes."""

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
        self.volumes_dir = config.volumes_dir
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="db")
        self._workers = ThreadPoolExecutor(
            config.brick.workers, thread_name_prefix="brick"
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, int] = {}
        self._brick_load: asyncio.Future[None] | None = None
        self.device_wait = DEVICE_WAIT

    # -- plumbing ----------------------------------------------------------

    async def in_db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, fn, *args)

    async def in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` (os-brick, udev) on a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._workers, fn, *args)

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
        # Secrets of volumes attached in an earlier run: os-brick sees
        # them again at detach and logs what it sees, so the scrubber
        # must know them before the first request.
        records = await self.in_db(self.db.list)
        SCRUBBER.remember([r.connection_info for r in records])
        self.volumes_dir.mkdir(parents=True, exist_ok=True, mode=0o755)

    async def close(self) -> None:
        """Close the database; called after all operations finished."""
        await self.in_db(self.db.close)
        self._db_thread.shutdown(wait=True)
        self._workers.shutdown(wait=False, cancel_futures=True)

    @contextlib.asynccontextmanager
    async def volume_lock(self, vol_id: str) -> AsyncIterator[None]:
        """Hold ``vol_id``'s lock, waiting up to ``storage.lock_timeout``."""
        lock = self._locks.setdefault(vol_id, asyncio.Lock())
        self._waiters[vol_id] = self._waiters.get(vol_id, 0) + 1
        try:
            try:
                if lock.locked():
                    await asyncio.wait_for(
                        lock.acquire(), self.config.storage.lock_timeout
                    )
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

    # -- capabilities ------------------------------------------------------

    async def capabilities(self) -> dict[str, Any]:
        """``Host.getCapabilities``: connector info, version, drivers."""
        caps: dict[str, Any] = {
            "version": __version__,
            "drivers": list(self.config.brick.drivers),
        }
        try:
            await self.brick_ready()
            props = await self.in_worker(self.brick.connector_properties)
        except AgentError as e:
            # vdsm's rule: no os-brick means no connector_info, not an
            # error, so the engine can still manage the host otherwise.
            log.warning("connector_info left out: %s (%s)", e.message, e.data)
        else:
            caps["connector_info"] = props
        return caps

    # -- attach ------------------------------------------------------------

    def check_driver(self, connection_info: dict[str, Any]) -> str:
        """The connection's driver, if it is allowed here (else 2009)."""
        driver = connection_info["driver_volume_type"]
        if driver not in self.config.brick.drivers:
            raise DriverNotSupported(
                f"driver_volume_type {driver!r} is not supported on this "
                "host; allowed: " + ", ".join(self.config.brick.drivers),
                {"driver_volume_type": driver},
            )
        return str(driver)

    async def attach(
        self, vol_id: str, connection_info: dict[str, Any]
    ) -> dict[str, Any]:
        """Attach ``vol_id``; return path, attachment and managed path."""
        driver = self.check_driver(connection_info)
        SCRUBBER.remember(connection_info)
        await self.brick_ready()
        async with self.volume_lock(vol_id):
            existing = await self.in_db(self.db.get, vol_id)
            if existing is not None:
                return await self._reattach(existing, connection_info)
            attempt = _Attach(self, vol_id, driver, connection_info)
            started = time.monotonic()
            try:
                await Flow("attach", self.failpoints).run(attempt.steps())
            except FlowError as e:
                await attempt.record_leak(e)
                raise e.error from e
            log.info(
                "attached volume %s at %s in %.3f s",
                vol_id,
                attempt.path,
                time.monotonic() - started,
                extra={"VOL_ID": vol_id},
            )
            return self._attach_result(vol_id, attempt.path, attempt.info)

    async def _reattach(
        self, rec: VolumeRecord, connection_info: dict[str, Any]
    ) -> dict[str, Any]:
        if rec.state != db.ATTACHED:
            raise VolumeBusy(
                f"volume {rec.vol_id} is {rec.state}"
                + (
                    f" (last error: {rec.last_error})"
                    if rec.last_error
                    else ""
                )
                + "; detach it first",
                {"vol_id": rec.vol_id, "state": rec.state},
            )
        if rec.connection_info != connection_info:
            raise ConnectionInfoMismatch(
                f"volume {rec.vol_id} is already attached with different "
                "connection info; detach it first",
                {"vol_id": rec.vol_id},
            )
        assert rec.path is not None
        # The symlink lives on tmpfs; a reboot without a detach loses it.
        await self.in_worker(self.make_link, rec.vol_id, rec.path)
        log.info("volume %s already attached; returning it", rec.vol_id)
        return self._attach_result(rec.vol_id, rec.path, rec.attachment)

    def _attach_result(
        self, vol_id: str, path: str, attachment: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "vol_id": vol_id,
            "path": path,
            "attachment": SCRUBBER.scrub_data(attachment),
            "managed_path": str(self.volumes_dir / vol_id),
        }

    def device_path(self, driver: str, info: dict[str, Any]) -> str:
        """The path a VM should use for a connected volume."""
        mpath = info.get("multipath_id")
        if mpath and driver in MULTIPATH_DRIVERS:
            return f"/dev/mapper/{mpath}"
        return str(info.get("path") or "")

    async def wait_for_device(self, driver: str, info: dict[str, Any]) -> str:
        """Wait for the connected device; return the VM's path.

        Raises 928 when multipath is enforced and there is no multipath
        device, 926 when the device does not show up in time.
        """
        mpath = info.get("multipath_id") or None
        if (
            self.config.brick.enforce_multipath
            and self.brick.uses_multipath(driver)
            and not mpath
        ):
            raise MultipathMissing(
                f"multipath is enforced but the {driver} connector returned "
                "no multipath device",
                {"driver": driver},
            )
        path = self.device_path(driver, info)
        if not path:
            raise ConnectorFailed(
                f"{driver} connector returned no device path",
                {"driver": driver, "error_class": "VolumeDeviceNotFound"},
            )
        deadline = time.monotonic() + self.device_wait
        while not await self.in_worker(self.udev.exists, path, mpath):
            if time.monotonic() >= deadline:
                if mpath and await self.in_worker(
                    self.udev.device_present, path
                ):
                    raise MultipathMissing(
                        f"no dm device with uuid mpath-{mpath} appeared",
                        {"driver": driver, "multipath_id": mpath},
                    )
                raise ConnectorFailed(
                    f"device {path} did not appear within "
                    f"{self.device_wait:g} s",
                    {"driver": driver, "error_class": "VolumeDeviceNotFound"},
                )
            await asyncio.sleep(DEVICE_POLL)
        return path

    # -- managed symlinks --------------------------------------------------

    def make_link(self, vol_id: str, target: str) -> None:
        """Point ``run_dir/volumes/<vol_id>`` at ``target`` (atomically)."""
        link = self.volumes_dir / vol_id
        tmp = self.volumes_dir / f".{vol_id}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)

    def remove_link(self, vol_id: str) -> None:
        """Remove ``run_dir/volumes/<vol_id>`` (no error if missing)."""
        with contextlib.suppress(FileNotFoundError):
            (self.volumes_dir / vol_id).unlink()

    # -- detach ------------------------------------------------------------

    async def detach(self, vol_id: str) -> None:
        """Detach ``vol_id``; an unknown volume is already detached."""
        async with self.volume_lock(vol_id):
            rec = await self.in_db(self.db.get, vol_id)
            if rec is None:
                log.info("detach of unknown volume %s: nothing to do", vol_id)
                return
            await self.brick_ready()
            started = time.monotonic()
            try:
                await Flow("detach", self.failpoints).run(self._detach(rec))
            except Exception as e:
                message = SCRUBBER.scrub(str(e))
                await self.in_db(
                    self.db.set_state, vol_id, db.DETACHING, message
                )
                log.error(
                    "detach of volume %s failed, kept as detaching: %s",
                    vol_id,
                    message,
                    extra={"VOL_ID": vol_id},
                )
                raise
            log.info(
                "detached volume %s in %.3f s",
                vol_id,
                time.monotonic() - started,
                extra={"VOL_ID": vol_id},
            )

    def _detach(self, rec: VolumeRecord) -> list[Step]:
        driver = rec.connection_info["driver_volume_type"]

        async def mark() -> None:
            await self.in_db(
                self.db.set_state, rec.vol_id, db.DETACHING, rec.last_error
            )

        async def unlink() -> None:
            await self.in_worker(self.remove_link, rec.vol_id)

        async def disconnect() -> None:
            await self.disconnect(rec.vol_id, driver, rec)

        async def forget() -> None:
            await self.in_db(self.db.delete, rec.vol_id)

        return [
            Step("mark", mark),
            Step("unlink", unlink),
            Step("disconnect", disconnect),
            Step("forget", forget),
        ]

    async def disconnect(
        self, vol_id: str, driver: str, rec: VolumeRecord | None
    ) -> None:
        """Disconnect a record's device, unless another volume uses it."""
        assert rec is not None
        owner = await self.in_db(
            self.db.find_device_owner, rec.multipath_id, rec.path, vol_id
        )
        if owner is not None:
            log.warning(
                "volume %s: device %s is also volume %s's; not disconnecting",
                vol_id,
                rec.path,
                owner,
            )
            return
        await self.in_worker(
            self.brick.disconnect,
            driver,
            rec.connection_info["data"],
            rec.attachment,
        )

    # -- info --------------------------------------------------------------

    async def info(self, vol_ids: list[str] | None) -> list[dict[str, Any]]:
        """``volumes_info``: the records, with ``exists`` checked now."""
        return await self.in_db(self._info, vol_ids)

    def _info(self, vol_ids: list[str] | None) -> list[dict[str, Any]]:
        records = self.db.list(vol_ids)
        present = self.udev.exists_many(
            (r.path, r.multipath_id) for r in records
        )
        return [
            {
                "vol_id": r.vol_id,
                "connection_info": SCRUBBER.scrub_data(r.connection_info),
                "path": r.path,
                "attachment": SCRUBBER.scrub_data(r.attachment),
                "exists": ok,
                "state": r.state,
                "last_error": r.last_error,
            }
            for r, ok in zip(records, present, strict=True)
        ]


class _Attach:
    """The steps of one attach, sharing what each learns."""

    def __init__(
        self,
        service: VolumeService,
        vol_id: str,
        driver: str,
        connection_info: dict[str, Any],
    ) -> None:
        self.s = service
        self.vol_id = vol_id
        self.driver = driver
        self.connection_info = connection_info
        self.info: dict[str, Any] | None = None
        self.path = ""

    def steps(self) -> list[Step]:
        """record -> connect -> wait -> attached -> link, with undos."""
        return [
            Step("record", self.record, self.forget),
            Step("connect", self.connect, self.disconnect),
            Step("wait", self.wait),
            Step("attached", self.attached, self.unattached),
            Step("link", self.link, self.unlink),
        ]

    async def record(self) -> None:
        """Write the row in state ``attaching``."""
        await self.s.in_db(self.s.db.insert, self.vol_id, self.connection_info)

    async def forget(self) -> None:
        """Delete the row."""
        await self.s.in_db(self.s.db.delete, self.vol_id)

    async def connect(self) -> None:
        """Run os-brick's connect_volume."""
        self.info = await self.s.in_worker(
            self.s.brick.connect, self.driver, self.connection_info["data"]
        )

    async def disconnect(self) -> None:
        """Undo connect (unless another volume shares the device)."""
        rec = VolumeRecord(
            vol_id=self.vol_id,
            connection_info=self.connection_info,
            path=self.s.device_path(self.driver, self.info or {}) or None,
            attachment=self.info,
            multipath_id=(self.info or {}).get("multipath_id"),
            state=db.ATTACHING,
            last_error=None,
            created=0.0,
            updated=0.0,
        )
        await self.s.disconnect(self.vol_id, self.driver, rec)

    async def wait(self) -> None:
        """Wait for the device; refuse one that another volume owns."""
        assert self.info is not None
        self.path = await self.s.wait_for_device(self.driver, self.info)
        mpath = self.info.get("multipath_id") or None
        owner = await self.s.in_db(
            self.s.db.find_device_owner, mpath, self.path, self.vol_id
        )
        if owner is not None:
            raise VolumeBusy(
                f"device {self.path} is already attached as volume {owner}",
                {"vol_id": self.vol_id, "attached_as": owner},
            )

    async def attached(self) -> None:
        """Record path and attachment (state ``attached``)."""
        assert self.info is not None
        await self.s.in_db(
            self.s.db.set_attached,
            self.vol_id,
            self.path,
            self.info,
            self.info.get("multipath_id") or None,
        )

    async def unattached(self) -> None:
        """Return the row to ``attaching``."""
        await self.s.in_db(self.s.db.set_state, self.vol_id, db.ATTACHING)

    async def link(self) -> None:
        """Create the managed symlink."""
        await self.s.in_worker(self.s.make_link, self.vol_id, self.path)

    async def unlink(self) -> None:
        """Remove the managed symlink."""
        await self.s.in_worker(self.s.remove_link, self.vol_id)

    async def record_leak(self, e: FlowError) -> None:
        """Keep the row when a revert failed, so a detach can retry."""
        message = SCRUBBER.scrub(
            f"attach failed ({e.error}) and undoing {e.undo_failed} failed "
            f"({e.undo_error}); run detach_volume to clean up"
        )
        log.error("volume %s: %s", self.vol_id, message)
        with contextlib.suppress(Exception):
            await self.s.in_db(
                self.s.db.set_state, self.vol_id, db.DETACHING, message
            )
