"""The managed-volume service: attach/detach flows and their rules.

Rules (docs/crash-safety.md, "Rules the agent keeps"):
* one operation per volume at a time; different volumes run in parallel;
* re-attach with the same connection info returns the existing attachment,
  with different info it is error 929;
* attach is a flow: record intent -> connect -> keep os-brick's answer ->
  wait for the device -> record the attachment -> managed symlink; a
  failing step undoes the done ones, disconnect included (also of a
  connect that failed half-way), and nothing is left behind;
* detach: mark detaching -> remove symlink -> disconnect -> delete row; a
  failing disconnect keeps the row (``detaching`` + ``last_error``) so the
  next detach retries it;
* at start-up, before serving, :mod:`hostagent.reconcile` finishes or
  rolls back whatever a crash interrupted.

Blocking work runs off the event loop: os-brick calls on a thread pool,
database calls on one dedicated thread (a :class:`~hostagent.lane.Lane`,
which owns the only connection that writes).  The flows' managed
symlinks (in run_dir, a tmpfs), a device's presence check (a stat and a
sysfs read) and the read of one row by its key (see
:meth:`~hostagent.db.Database.peek`) take microseconds and run on the
loop: a hand-off to a thread costs more than they do.  Where a flow step
writes to the database, the check that must go with the write (is the
device another volume's?) runs in the same trip to the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hostagent import __version__, db, hosttools
from hostagent.brick import MULTIPATH_DRIVERS, Brick
from hostagent.config import BackendConfig, Config, backend_options
from hostagent.db import Database, DatabaseBusy, StoredVolume, VolumeRecord
from hostagent.errors import (
    AgentError,
    ConnectionInfoMismatch,
    ConnectorFailed,
    DriverNotSupported,
    InvalidParams,
    MultipathMissing,
    VolumeBusy,
)
from hostagent.events import Events
from hostagent.flow import FailPoints, Flow, FlowError, Step
from hostagent.lane import Lane
from hostagent.reconcile import Reconciler
from hostagent.redact import SCRUBBER, redact
from hostagent.udev import Udev

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long to wait for a connected volume's device (and, for multipath,
# its dm device) to show up after os-brick returned.  os-brick already
# waits for the SCSI device; this covers udev and multipathd catching up.
DEVICE_WAIT = 10.0
DEVICE_POLL = 0.1

# What connectors raise on connection data they cannot use (a missing
# key, a malformed value): they raise it before they connect anything.
_DATA_ERRORS = frozenset(
    {"KeyError", "ValueError", "TypeError", "AttributeError", "IndexError"}
)

# Where a stored row (Database.stored) holds the device.
_PATH = StoredVolume._fields.index("path")
_MULTIPATH_ID = StoredVolume._fields.index("multipath_id")


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
        self._db_thread = Lane("db")
        self._workers = ThreadPoolExecutor(
            config.brick.workers, thread_name_prefix="brick"
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, int] = {}
        self._brick_load: asyncio.Future[None] | None = None
        # volumes_info's last entries, by row and presence.
        self._shown: dict[tuple[tuple[Any, ...], bool], dict[str, Any]] = {}
        self.device_wait = DEVICE_WAIT
        self.events = Events(lambda: self.info(None))

    # -- plumbing ----------------------------------------------------------

    async def in_db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the database thread."""
        return await self._db_thread.call(fn, *args)

    async def in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` (os-brick, udev) on a worker thread."""
        loop = asyncio.get_running_loop()
        # Carry the caller's context (the JSON-RPC request id) so os-brick's
        # own log lines are tagged with the request that caused them.
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._workers, ctx.run, fn, *args)

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
        # Secrets of volumes attached in an earlier run: os-brick sees
        # them again at detach and logs what it sees, so the scrubber
        # must know them before the first request.
        records = await self.in_db(self.db.list)
        SCRUBBER.hold_many({r.vol_id: r.connection_info for r in records})
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
        caps.update(await self.in_worker(self._tool_status))
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

    def _tool_status(self) -> dict[str, Any]:
        # The attach's own multipathd test, so ready agrees with its 928.
        probe = self.brick.multipath_ready
        backends = {}
        for name, b in sorted(self.config.backend.items()):
            backends[name] = backend_options(b) | hosttools.backend(b, probe)
        return {
            "driver_status": hosttools.drivers(self.config.brick, probe),
            "backends": backends,
        }

    # -- backends ----------------------------------------------------------

    def check_backend(
        self, driver: str, name: str | None
    ) -> BackendConfig | None:
        """The ``[backend.NAME]`` an attach asked for (-32602 if wrong)."""
        if name is None:
            return None
        b = self.config.backend.get(name)
        if b is None:
            known = ", ".join(sorted(self.config.backend)) or "none"
            raise InvalidParams(
                f"backend {name!r} is not configured on this host "
                f"(configured: {known})",
                {"param": "backend", "backend": name},
            )
        if b.driver != driver:
            raise InvalidParams(
                f"backend {name!r} is for {b.driver} volumes, but "
                f"connection_info.driver_volume_type is {driver!r}",
                {"param": "backend", "backend": name, "driver": b.driver},
            )
        return b

    def record_backend(self, rec: VolumeRecord) -> BackendConfig | None:
        """The backend options a recorded volume was attached with.

        A backend removed from the config (or now for another driver)
        since the attach falls back to the [brick] defaults, so the
        volume can still be detached.
        """
        if rec.backend is None:
            return None
        b = self.config.backend.get(rec.backend)
        driver = rec.connection_info.get("driver_volume_type")
        if b is None or b.driver != driver:
            log.warning(
                "volume %s was attached with backend %r, which is no "
                "longer configured for %s; using the [brick] defaults",
                rec.vol_id,
                rec.backend,
                driver,
                extra={"VOL_ID": rec.vol_id},
            )
            return None
        return b

    def keep_secrets(self, vol_id: str) -> None:
        """Have the scrubber hold the secrets of ``vol_id``'s row, if any.

        Called after every attach and detach, whatever its outcome: the
        row is the truth (an attach whose undo failed keeps one, a failed
        detach keeps it, a refused attach leaves another's in place).  The
        read and the change happen in one step of the event loop, so no
        other call's row can come or go in between.
        """
        try:
            rec = self.db.peek(vol_id)
        except DatabaseBusy:
            return  # keep what is held: holding too much costs memory only
        if rec is None:
            SCRUBBER.release(vol_id)
        else:
            SCRUBBER.hold(vol_id, rec.connection_info)

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
        self,
        vol_id: str,
        connection_info: dict[str, Any],
        backend: str | None = None,
    ) -> dict[str, Any]:
        """Attach ``vol_id``; return path, attachment and managed path.

        ``backend`` names a ``[backend.NAME]`` whose options to use;
        without it the driver type's ``[brick]`` defaults apply.  The
        caller holds the secrets of ``connection_info`` in the scrubber
        for the call (:class:`hostagent.api.Api` does).
        """
        driver = self.check_driver(connection_info)
        options = self.check_backend(driver, backend)
        await self.brick_ready()
        async with self.volume_lock(vol_id):
            existing = await self.record(vol_id)
            if existing is not None:
                return await self._reattach(existing, connection_info, backend)
            await self.check_multipath(driver, options)
            attempt = _Attach(self, vol_id, driver, connection_info, options)
            started = time.monotonic()
            try:
                await Flow("attach", self.failpoints, f"volume {vol_id}").run(
                    attempt.steps()
                )
            except FlowError as e:
                await attempt.record_leak(e)
                raise e.error from e
            self.events.track(vol_id, True, attempt.path)
            log.info(
                "attached volume %s at %s in %.3f s",
                vol_id,
                attempt.path,
                time.monotonic() - started,
                extra={"VOL_ID": vol_id},
            )
            return self._attach_result(vol_id, attempt.path, attempt.info)

    async def _reattach(
        self,
        rec: VolumeRecord,
        connection_info: dict[str, Any],
        backend: str | None = None,
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
        if rec.backend != backend:
            raise ConnectionInfoMismatch(
                f"volume {rec.vol_id} is already attached with backend "
                f"{rec.backend!r}, not {backend!r}; detach it first",
                {"vol_id": rec.vol_id, "backend": rec.backend},
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
            "attachment": redact(attachment),
            "managed_path": str(self.volumes_dir / vol_id),
        }

    def device_path(self, driver: str, info: dict[str, Any]) -> str:
        """The path a VM should use for a connected volume."""
        mpath = info.get("multipath_id")
        if mpath and driver in MULTIPATH_DRIVERS:
            return f"/dev/mapper/{mpath}"
        return str(info.get("path") or "")

    async def _device_exists(self, path: str, mpath: str | None) -> bool:
        if mpath:  # enumerates the dm devices: on a worker
            return await self.in_worker(self.udev.exists, path, mpath)
        # A stat and a sysfs read: less than the hand-off to a thread.
        return self.udev.exists(path, None)

    async def check_multipath(
        self, driver: str, backend: BackendConfig | None
    ) -> None:
        """Refuse (928) an enforced-multipath attach without multipathd.

        Checked before connecting: without the daemon no dm device can
        appear, and os-brick would otherwise scan and log in for nothing.
        """
        if not self.brick.enforces_multipath(driver, backend):
            return
        if not await self.in_worker(
            self.brick.multipath_ready, driver, backend
        ):
            raise MultipathMissing(
                "multipath is enforced"
                + (f" by backend {backend.name!r}" if backend else "")
                + " but multipathd is not running on this host",
                {"driver": driver, "backend": backend and backend.name},
            )

    async def wait_for_device(
        self,
        driver: str,
        info: dict[str, Any],
        backend: BackendConfig | None = None,
    ) -> str:
        """Wait for the connected device; return the VM's path.

        Raises 928 when multipath is enforced (by ``[brick]`` or the
        backend) and there is no multipath device (os-brick returned
        none, or its dm device did not appear in time), 926 when the
        device does not show up in time.
        """
        mpath = info.get("multipath_id") or None
        if self.brick.enforces_multipath(driver, backend) and not mpath:
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
        while not await self._device_exists(path, mpath):
            if time.monotonic() >= deadline:
                # path is /dev/mapper/<id> here: absent when the map was
                # never made, which is what enforcing multipath forbids.
                if mpath and (
                    self.brick.enforces_multipath(driver, backend)
                    or await self.in_worker(self.udev.device_present, path)
                ):
                    raise MultipathMissing(
                        f"no multipath device appeared: no dm device with "
                        f"uuid mpath-{mpath} within {self.device_wait:g} s",
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
            rec = await self.record(vol_id)
            if rec is None:
                log.info("detach of unknown volume %s: nothing to do", vol_id)
                return
            await self.brick_ready()
            started = time.monotonic()
            await self.teardown(rec, "detach", rec.last_error)
            self.events.forget(vol_id)
            log.info(
                "detached volume %s in %.3f s",
                vol_id,
                time.monotonic() - started,
                extra={"VOL_ID": vol_id},
            )

    async def teardown(
        self,
        rec: VolumeRecord,
        flow: str,
        note: str | None,
        context: str = "",
    ) -> None:
        """Mark detaching, unlink, disconnect, forget; record a failure.

        ``note`` is the ``last_error`` the row carries while this runs (a
        crash in the middle leaves it for the next start to read).  On
        failure the row stays ``detaching`` with the error (after
        ``context``, when given), and the error is raised: nothing is
        forgotten while it may still be connected.
        """
        vol_id = rec.vol_id
        try:
            await Flow(flow, self.failpoints, f"volume {vol_id}").run(
                _Teardown(self, rec, note).steps()
            )
        except Exception as e:
            message = SCRUBBER.scrub(f"{context}: {e}" if context else str(e))
            await self.in_db(self.db.set_state, vol_id, db.DETACHING, message)
            log.error(
                "%s of volume %s failed, kept as detaching: %s",
                flow,
                vol_id,
                message,
                extra={"VOL_ID": vol_id},
            )
            raise

    def device_sharer(self, rec: VolumeRecord) -> str | None:
        """The other volume using ``rec``'s device or connection, if any.

        Runs on the database thread.  A row still ``attaching`` has no
        ``path`` yet: the device is then worked out from the recorded
        attachment, and when os-brick never returned one, the connection
        info alone tells.
        """
        path, mpath = self._recorded_device(rec)
        return self.db.find_device_owner(
            mpath, path, rec.vol_id
        ) or self.db.find_connection_owner(rec.connection_info, rec.vol_id)

    def _recorded_device(
        self, rec: VolumeRecord
    ) -> tuple[str | None, str | None]:
        """``(path, multipath_id)`` of a record's device, as far as known."""
        driver = str(rec.connection_info["driver_volume_type"])
        attachment = rec.attachment or {}
        path = rec.path or self.device_path(driver, attachment) or None
        mpath = rec.multipath_id or attachment.get("multipath_id") or None
        return path, mpath

    async def disconnect(
        self, vol_id: str, driver: str, rec: VolumeRecord
    ) -> None:
        """Disconnect a record's device, unless another volume uses it."""
        sharer = await self.in_db(self.device_sharer, rec)
        await self.disconnect_unshared(driver, rec, sharer)

    async def disconnect_unshared(
        self, driver: str, rec: VolumeRecord, sharer: str | None
    ) -> None:
        """Disconnect a record's device; not when ``sharer`` uses it too.

        ``sharer`` is what :meth:`device_sharer` found.
        """
        vol_id = rec.vol_id
        path, _ = self._recorded_device(rec)
        if sharer is not None:
            log.warning(
                "volume %s: device %s is also volume %s's; not disconnecting",
                vol_id,
                path,
                sharer,
                extra={"VOL_ID": vol_id},
            )
            return
        backend = self.record_backend(rec)
        log.info(
            "volume %s: disconnecting %s (%s)",
            vol_id,
            path or "device unknown",
            driver,
            extra={"VOL_ID": vol_id},
        )
        await self.in_worker(
            lambda: self.brick.disconnect(
                driver,
                rec.connection_info["data"],
                rec.attachment,
                backend=backend,
            )
        )
        data = rec.connection_info["data"]
        if driver == "nfs" and not await self.in_db(
            self._share_in_use, data.get("export"), vol_id
        ):
            await self.in_worker(
                lambda: self.brick.release_share(driver, data, backend)
            )

    def _share_in_use(self, export: Any, vol_id: str) -> bool:
        """Whether another volume record is on the NFS share ``export``."""
        return any(
            r.vol_id != vol_id
            and r.connection_info.get("driver_volume_type") == "nfs"
            and r.connection_info.get("data", {}).get("export") == export
            for r in self.db.list()
        )

    # -- extend ------------------------------------------------------------

    async def extend(self, vol_id: str) -> int:
        """Have the connector pick up a grown volume; its size in bytes."""
        async with self.volume_lock(vol_id):
            rec = await self.record(vol_id)
            if rec is None:
                raise InvalidParams(
                    f"volume {vol_id} is not attached on this host",
                    {"param": "vol_id", "vol_id": vol_id},
                )
            if rec.state != db.ATTACHED:
                raise VolumeBusy(
                    f"volume {vol_id} is {rec.state}; cannot extend it",
                    {"vol_id": vol_id, "state": rec.state},
                )
            await self.brick_ready()
            driver = rec.connection_info["driver_volume_type"]
            # A connector asked about a device with no media answers 0
            # (the local one) or a stale size; neither is the new size.
            if not await self.in_worker(
                self.udev.exists, rec.path, rec.multipath_id
            ):
                raise ConnectorFailed(
                    f"volume {vol_id}: device {rec.path} is not present; "
                    "cannot extend it",
                    {
                        "driver": driver,
                        "operation": "extend_volume",
                        "error_class": "VolumeDeviceNotFound",
                    },
                )
            backend = self.record_backend(rec)
            size = await self.in_worker(
                lambda: self.brick.extend(
                    driver, rec.connection_info["data"], backend=backend
                )
            )
            log.info(
                "volume %s extended: %d bytes",
                vol_id,
                size,
                extra={"VOL_ID": vol_id},
            )
            return size

    # -- start-up reconciliation -------------------------------------------

    async def reconcile(self) -> dict[str, int]:
        """Finish or roll back what a crash left; run before serving.

        See :mod:`hostagent.reconcile`.  Returns counts by decision.
        """
        return await Reconciler(self).run()

    # -- info --------------------------------------------------------------

    async def info(self, vol_ids: list[str] | None) -> list[dict[str, Any]]:
        """``volumes_info``: the records, with ``exists`` checked now."""
        return await self.in_db(self._info, vol_ids)

    def _info(self, vol_ids: list[str] | None) -> list[dict[str, Any]]:
        rows = self.db.stored(vol_ids)
        present = self.udev.exists_many(
            (row[_PATH], row[_MULTIPATH_ID]) for row in rows
        )
        # Decoding, masking and building a volume's entry are most of
        # the cost of volumes_info, and its answer changes little from one
        # call to the next: the entries of the last answer are kept, by
        # row and presence (secrets are masked by key alone, so nothing
        # else changes an entry).  They are shared, never modified.
        last = self._shown
        shown: dict[tuple[tuple[Any, ...], bool], dict[str, Any]] = {}
        for key in zip(rows, present, strict=True):
            entry = last.get(key)
            if entry is None:
                entry = _entry(StoredVolume._make(key[0]), key[1])
            shown[key] = entry
        # Only this answer's entries are kept: the memo stays its size.
        self._shown = shown
        return list(shown.values())


class _Attach:
    """The steps of one attach, sharing what each learns."""

    def __init__(
        self,
        service: VolumeService,
        vol_id: str,
        driver: str,
        connection_info: dict[str, Any],
        backend: BackendConfig | None = None,
    ) -> None:
        self.s = service
        self.vol_id = vol_id
        self.driver = driver
        self.connection_info = connection_info
        self.backend = backend
        self.info: dict[str, Any] | None = None
        self.path = ""
        # False when connect failed in a way that connected nothing.
        self.may_be_connected = True

    def steps(self) -> list[Step]:
        """record -> connect -> connected -> wait -> attached -> link."""
        return [
            Step("record", self.record, self.forget),
            # os-brick's connect_volume can raise after it logged in or
            # reassigned the volume: a failed connect is disconnected too.
            Step("connect", self.connect, self.disconnect, True),
            Step("connected", self.connected),
            Step("wait", self.wait),
            Step("attached", self.attached, self.unattached),
            Step("link", self.link, self.unlink),
        ]

    async def record(self) -> None:
        """Write the row in state ``attaching``."""
        await self.s.in_db(
            self.s.db.insert,
            self.vol_id,
            self.connection_info,
            self.backend.name if self.backend else None,
        )

    async def forget(self) -> None:
        """Delete the row."""
        await self.s.in_db(self.s.db.delete, self.vol_id)

    async def connect(self) -> None:
        """Run os-brick's connect_volume."""
        log.info(
            "volume %s: connecting (%s)",
            self.vol_id,
            self.driver,
            extra={"VOL_ID": self.vol_id},
        )
        try:
            self.info = await self.s.in_worker(
                self.s.brick.connect,
                self.driver,
                self.connection_info["data"],
                self.backend,
            )
        except ConnectorFailed as e:
            data = e.data if isinstance(e.data, dict) else {}
            # No connector could be made (bad backend options), or the
            # connector could not read the connection data: nothing was
            # connected, and a disconnect from the same data would fail
            # the same way and keep a row that no detach could clear.
            if (
                data.get("operation") == "create connector"
                or data.get("error_class") in _DATA_ERRORS
            ):
                self.may_be_connected = False
            raise

    async def disconnect(self) -> None:
        """Undo connect (unless another volume shares the device).

        Also after a failed connect: os-brick's answer is then unknown
        and the connector finds what to disconnect from the connection
        info, as start-up reconciliation does after a crash.
        """
        if not self.may_be_connected:
            return
        if self.info is None:
            log.info(
                "volume %s: connect failed; disconnecting whatever it "
                "may have connected",
                self.vol_id,
                extra={"VOL_ID": self.vol_id},
            )
        rec = VolumeRecord(
            vol_id=self.vol_id,
            connection_info=self.connection_info,
            path=None,
            attachment=self.info,
            multipath_id=None,
            state=db.ATTACHING,
            last_error=None,
            created=0.0,
            updated=0.0,
            backend=self.backend.name if self.backend else None,
        )
        await self.s.disconnect(self.vol_id, self.driver, rec)

    async def connected(self) -> None:
        """Keep os-brick's answer in the row, for start-up reconciliation."""
        assert self.info is not None
        await self.s.in_db(self.s.db.set_attachment, self.vol_id, self.info)

    async def wait(self) -> None:
        """Wait for the device (and its multipath device)."""
        assert self.info is not None
        self.path = await self.s.wait_for_device(
            self.driver, self.info, self.backend
        )

    async def attached(self) -> None:
        """Record path and attachment (state ``attached``).

        Refused (927) when another volume has that device: the check is
        part of the same call on the database thread as the write.
        """
        assert self.info is not None
        owner = await self.s.in_db(
            self.s.db.set_attached,
            self.vol_id,
            self.path,
            self.info,
            self.info.get("multipath_id") or None,
        )
        if owner is not None:
            raise VolumeBusy(
                f"device {self.path} is already attached as volume {owner}",
                {"vol_id": self.vol_id, "attached_as": owner},
            )

    async def unattached(self) -> None:
        """Return the row to ``attaching``."""
        await self.s.in_db(self.s.db.set_state, self.vol_id, db.ATTACHING)

    async def link(self) -> None:
        """Create the managed symlink."""
        self.s.make_link(self.vol_id, self.path)

    async def unlink(self) -> None:
        """Remove the managed symlink."""
        self.s.remove_link(self.vol_id)

    async def record_leak(self, e: FlowError) -> None:
        """Keep the row when a revert failed, so a detach can retry."""
        message = SCRUBBER.scrub(
            f"attach failed ({e.error}) and undoing {e.undo_failed} failed "
            f"({e.undo_error}); run detach_volume to clean up"
        )
        log.error(
            "volume %s: %s",
            self.vol_id,
            message,
            extra={"VOL_ID": self.vol_id},
        )
        try:
            await self.s.in_db(
                self.s.db.set_state, self.vol_id, db.DETACHING, message
            )
        except Exception as db_error:
            # The row stays as the revert left it, shown by volumes_info
            # (and, if still attaching, rolled back at the next start);
            # the caller still gets the attach's error.
            log.error(
                "volume %s: cannot record the failed clean-up: %s",
                self.vol_id,
                SCRUBBER.scrub(str(db_error)),
                extra={"VOL_ID": self.vol_id},
            )


class _Teardown:
    """The steps of one detach (or start-up teardown) of a record."""

    def __init__(
        self, service: VolumeService, rec: VolumeRecord, note: str | None
    ) -> None:
        self.s = service
        self.rec = rec
        self.note = note
        self.sharer: str | None = None

    def steps(self) -> list[Step]:
        """mark -> unlink -> disconnect -> forget (none has an undo)."""
        return [
            Step("mark", self.mark),
            Step("unlink", self.unlink),
            Step("disconnect", self.disconnect),
            Step("forget", self.forget),
        ]

    def _marked(self) -> str | None:
        self.s.db.set_state(self.rec.vol_id, db.DETACHING, self.note)
        return self.s.device_sharer(self.rec)

    async def mark(self) -> None:
        """Set ``detaching`` (with the note) and find who shares the device.

        Both in one trip to the database thread: the next step that
        needs the database is the forget, after the disconnect.
        """
        self.sharer = await self.s.in_db(self._marked)

    async def unlink(self) -> None:
        """Remove the managed symlink."""
        self.s.remove_link(self.rec.vol_id)

    async def disconnect(self) -> None:
        """Disconnect, unless another volume uses the device."""
        driver = str(self.rec.connection_info["driver_volume_type"])
        await self.s.disconnect_unshared(driver, self.rec, self.sharer)

    async def forget(self) -> None:
        """Delete the row."""
        await self.s.in_db(self.s.db.delete, self.rec.vol_id)


def _entry(row: StoredVolume, exists: bool) -> dict[str, Any]:
    """One volume as volumes_info shows it, secrets masked."""
    return {
        "vol_id": row.vol_id,
        "connection_info": _shown_json(row.connection_info),
        "path": row.path,
        "attachment": _shown_json(row.attachment),
        "exists": exists,
        "state": row.state,
        "last_error": row.last_error,
        "backend": row.backend,
    }


def _shown_json(text: str | None) -> Any:
    """A stored JSON column, decoded and masked, as results show it."""
    return None if text is None else redact(json.loads(text))
