"""The managed-volume service: what the API calls.

Rules (the project's DESIGN, "Flows"):
* one operation per volume at a time; different volumes run in parallel
  (:mod:`.locks`);
* re-attach with the same connection info returns the existing attachment
  while its device is live (there, with media, the same device, recorded
  in this boot); otherwise (a reboot, a fence, a logout) the attach runs
  again over the row and returns the fresh path, or fails and leaves the
  row saying why; with different info it is error 929;
* before anything is recorded or connected: the managed path must be
  free or a symlink (931), the driver's device check passes (the local
  guard) and the device is not another volume's by identity (927);
* attach is a flow (:mod:`.steps`): record intent -> connect -> keep
  os-brick's answer -> wait for the device -> record the attachment ->
  managed symlink; a failing step undoes the done ones, disconnect
  included (also of a connect that failed half-way), and nothing is left
  behind;
* detach: mark detaching -> remove symlink -> disconnect -> delete row; a
  failing disconnect keeps the row (``detaching`` + ``last_error``) so the
  next detach retries it;
* at start-up, before serving, :mod:`.reconcile` finishes or rolls back
  whatever a crash interrupted, with the same steps.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hostagent import __version__, db, hostcheck, hosttools
from hostagent.brick import Brick
from hostagent.config import BackendConfig, Config, backend_options
from hostagent.errors import (
    AgentError,
    ConnectorFailed,
    InvalidParams,
    VolumeBusy,
)
from hostagent.events import Events
from hostagent.redact import redact
from hostagent.service import (
    detaching,
    lvm,
    matching,
    reattach,
    secrecy,
    steps,
)
from hostagent.service.backends import (
    check_backend,
    check_data,
    check_driver,
    record_backend,
)
from hostagent.service.device import (
    check_multipath,
    wait_for_device,
)
from hostagent.service.flow import Flow, FlowError
from hostagent.service.host import Host
from hostagent.service.lane import Lane
from hostagent.service.listing import Listing
from hostagent.service.reconcile import Reconciler
from hostagent.service.retrier import DetachRetrier
from hostagent.service.retry import retry_detach

log = logging.getLogger(__name__)


class VolumeService:
    """Attach, detach, extend and describe managed volumes."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.config = host.config
        self.db = host.db
        self.brick = host.brick
        self.udev = host.udev
        self.listing = Listing(host.db, host.udev)
        self.events = Events(self.presence)
        self.host.retrier = DetachRetrier(
            functools.partial(retry_detach, self.host, self.events),
            host.config.storage,
        )

    @property
    def _workers(self) -> ThreadPoolExecutor:
        return self.host.workers

    @property
    def _db_thread(self) -> Lane:
        return self.host.db_thread

    @property
    def device_wait(self) -> float:
        """Seconds to wait for a connected device to show up."""
        return self.host.device_wait

    @device_wait.setter
    def device_wait(self, seconds: float) -> None:
        """Change the wait (tests shorten it)."""
        self.host.device_wait = seconds

    # -- life cycle --------------------------------------------------------

    def start_brick_load(self) -> None:
        """Begin importing os-brick in the background (off the READY path)."""
        self.host.start_brick_load()

    async def open(self) -> None:
        """Open the database on its thread and prepare the directories."""
        await self.host.open()

    async def close(self) -> None:
        """Close the database; called after all operations finished."""
        await self.host.close()

    def check_host(self) -> None:
        """Warn (in the background) about host settings that put volumes
        at risk: an LVM that may scan them, multipath settings that may
        keep a detach from finishing."""
        lvm.warn_later(self.host)
        self.host.in_background(
            functools.partial(hostcheck.warn_multipath, self.config),
            "multipath settings check",
        )

    async def reconcile(self) -> dict[str, int]:
        """Finish or roll back what a crash left; run before serving.

        See :mod:`hostagent.service.reconcile`.  Counts by decision.
        """
        return await Reconciler(self.host).run()

    def keep_secrets(self, vol_id: str) -> None:
        """Have the scrubber hold the secrets of ``vol_id``'s row, if any.

        See :func:`hostagent.service.secrecy.keep`.
        """
        secrecy.keep(self.db, vol_id)

    # -- capabilities ------------------------------------------------------

    async def capabilities(self) -> dict[str, Any]:
        """``Host.getCapabilities``: connector info, version, drivers.

        Also ``lvm``: whether the host's LVM keeps managed volumes out
        (see :mod:`hostagent.lvmcheck`).
        """
        caps: dict[str, Any] = {
            "version": __version__,
            "drivers": list(self.config.brick.drivers),
        }
        caps.update(
            await self.host.in_worker(_tool_status, self.config, self.brick)
        )
        caps["lvm"] = await lvm.status(self.host)
        try:
            await self.host.brick_ready()
            props = await self.host.in_worker(self.brick.connector_properties)
        except AgentError as e:
            # vdsm's rule: no os-brick means no connector_info, not an
            # error, so the engine can still manage the host otherwise.
            log.warning("connector_info left out: %s (%s)", e.message, e.data)
        else:
            caps["connector_info"] = props
        return caps

    # -- attach ------------------------------------------------------------

    async def attach(
        self,
        vol_id: str,
        connection_info: dict[str, Any],
        sd_id: str | None = None,
        backend: str | None = None,
    ) -> dict[str, Any]:
        """Attach ``vol_id``; return path, attachment and managed path.

        ``sd_id`` is the storage domain vdsm's clients name (it names
        the managed link and the udev rule).  ``backend`` names a
        ``[backend.NAME]`` whose options to use; without it the driver
        type's ``[brick]`` defaults apply.  The
        caller holds the secrets of ``connection_info`` in the scrubber
        for the call (:class:`hostagent.api.Api` does).
        """
        h = self.host
        driver = check_driver(self.config, connection_info)
        check_data(driver, connection_info["data"])
        options = check_backend(self.config, driver, backend)
        await h.brick_ready()
        async with h.locks.hold(vol_id):
            h.links.check(vol_id, sd_id)
            existing = await h.record(vol_id)
            attempt = steps.Attempt(
                vol_id, driver, connection_info, options, sd_id
            )
            if existing is not None:
                matching.check_reattach(
                    existing, connection_info, sd_id, backend
                )
                if await reattach.live(h, existing):
                    path = await reattach.existing(h, existing)
                    return _attach_result(
                        h, vol_id, path, existing.attachment, existing.sd_id
                    )
                attempt.previous = existing
                return await self._attach_again(attempt)
            return await self._run_attach(attempt)

    async def _run_attach(self, a: steps.Attempt) -> dict[str, Any]:
        """Check enforced multipath and the device, then run the flow."""
        h = self.host
        await check_multipath(h, a.driver, a.backend)
        await steps.admit(h, a)
        started = time.monotonic()
        try:
            await Flow("attach", h.failpoints, f"volume {a.vol_id}").run(
                steps.attach_steps(h, a)
            )
        except FlowError as e:
            await steps.record_leak(h, a.vol_id, e)
            raise e.error from e
        self.events.track(a.vol_id, True, a.path)
        assert a.info is not None
        await lvm.after_attach(h, a.vol_id, a.info)
        log.info(
            "attached volume %s at %s in %.3f s",
            a.vol_id,
            a.path,
            time.monotonic() - started,
            extra={"VOL_ID": a.vol_id},
        )
        return _attach_result(self.host, a.vol_id, a.path, a.info, a.sd_id)

    async def _attach_again(self, a: steps.Attempt) -> dict[str, Any]:
        """Attach over a row whose device is gone (see :mod:`.reattach`)."""
        assert a.previous is not None
        reattach.again(self.host, a.previous)
        try:
            return await self._run_attach(a)
        except Exception as e:
            await reattach.note_failure(self.host, a.vol_id, e)
            raise

    async def wait_for_device(
        self,
        driver: str,
        info: dict[str, Any],
        backend: BackendConfig | None = None,
    ) -> str:
        """Wait for a connected device; see :mod:`.device`."""
        return await wait_for_device(self.host, driver, info, backend)

    # -- detach ------------------------------------------------------------

    async def detach(
        self, vol_id: str, sd_id: str | None = None, force: bool = False
    ) -> None:
        """Detach ``vol_id``; an unknown volume is already detached.

        ``sd_id``, when given, must be the one it was attached with: a
        client naming another storage domain means another volume.  A
        device in use is refused (932, nothing torn down) unless
        ``force`` (see :mod:`.detaching`): unflushed writes may be lost.
        """
        h = self.host
        async with h.locks.hold(vol_id):
            rec = await h.record(vol_id)
            if rec is None:
                log.info("detach of unknown volume %s: nothing to do", vol_id)
                return
            matching.check_detach(rec, sd_id)
            h.links.check(vol_id, rec.sd_id)
            await h.brick_ready()
            checked = await detaching.check(h, rec, force)
            started = time.monotonic()
            await steps.teardown(
                h, rec, "detach", rec.last_error, force=force, checked=checked
            )
            self.events.forget(vol_id)
            log.info(
                "detached volume %s in %.3f s",
                vol_id,
                time.monotonic() - started,
                extra={"VOL_ID": vol_id},
            )

    # -- extend ------------------------------------------------------------

    async def extend(self, vol_id: str) -> int:
        """Have the connector pick up a grown volume; its size in bytes."""
        h = self.host
        async with h.locks.hold(vol_id):
            rec = await h.record(vol_id)
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
            await h.brick_ready()
            driver = rec.connection_info["driver_volume_type"]
            # A connector asked about a device with no media answers 0
            # (the local one) or a stale size; neither is the new size.
            if not await h.in_worker(
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
            backend = record_backend(self.config, rec)
            size = await h.in_worker(
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

    # -- info --------------------------------------------------------------

    async def info(self, vol_ids: list[str] | None) -> list[Any]:
        """``volumes_info``: the records, with ``exists`` checked now.

        Each entry is encoded JSON (see :mod:`.listing`);
        :meth:`presence` gives what code reads.
        """
        return await self.host.in_db(self.listing.entries, vol_ids)

    async def presence(self) -> list[dict[str, Any]]:
        """Every volume's ``vol_id``, ``state``, ``path`` and ``exists``."""
        return await self.host.in_db(self.listing.presence)


def _attach_result(
    h: Host,
    vol_id: str,
    path: str,
    attachment: dict[str, Any] | None,
    sd_id: str | None = None,
) -> dict[str, Any]:
    """attach_volume's answer (its attachment redacted)."""
    return {
        "vol_id": vol_id,
        "path": path,
        "attachment": redact(attachment),
        "managed_path": str(h.links.path(vol_id, sd_id)),
    }


def _tool_status(config: Config, brick: Brick) -> dict[str, Any]:
    """What the host's tools offer: drivers, backends, multipath settings."""
    # The attach's own multipathd test, so ready agrees with its 928.
    probe = brick.multipath_ready
    backends = {}
    for name, b in sorted(config.backend.items()):
        backends[name] = backend_options(b) | hosttools.backend(b, probe)
    return {
        "driver_status": hosttools.drivers(config.brick, probe),
        "backends": backends,
        **hostcheck.capabilities(config),
    }
