"""The steps of the flows, as small functions shared by every caller.

* attach: record -> connect -> connected -> wait -> own -> owned ->
  attached -> link;
* the tail of an attach, :func:`attached_steps` (own -> owned ->
  attached -> link), is the same for a live attach and for one
  completed at start-up (own/owned: :mod:`.owning`);
* teardown (a detach, or a roll-back or a finished detach at start-up):
  mark -> unlink -> disown -> disconnect -> forget.

Each step is a plain ``async`` function of the :class:`~.host.Host` and
what the flow has learnt so far; ``*_steps`` put them in order, with
their undos, for :class:`~.flow.Flow`.  Where a step writes to the
database, the check that must go with the write (is the device another
volume's?) runs in the same trip to the database thread.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hostagent import db
from hostagent.config import BackendConfig
from hostagent.db import VolumeRecord
from hostagent.errors import ConnectorFailed, VolumeBusy
from hostagent.redact import SCRUBBER
from hostagent.service import connection, owning
from hostagent.service.device import wait_for_device
from hostagent.service.flow import Flow, FlowError, Step
from hostagent.service.host import Host

log = logging.getLogger(__name__)

# What connectors raise on connection data they cannot use (a missing
# key, a malformed value): they raise it before they connect anything.
_DATA_ERRORS = frozenset(
    {"KeyError", "ValueError", "TypeError", "AttributeError", "IndexError"}
)


@dataclass
class Attempt:
    """One attach: what was asked, and what its steps learnt."""

    vol_id: str
    driver: str
    connection_info: dict[str, Any]
    backend: BackendConfig | None = None
    sd_id: str | None = None
    # os-brick's answer, once connect returned.
    info: dict[str, Any] | None = None
    path: str = ""
    # False when connect failed in a way that connected nothing.
    may_be_connected: bool = True

    def record(self) -> VolumeRecord:
        """The row as it stands while the attach runs."""
        return VolumeRecord(
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
            sd_id=self.sd_id,
        )


# -- attach -----------------------------------------------------------------


def attach_steps(h: Host, a: Attempt) -> list[Step]:
    """record -> connect -> connected -> wait -> (attached_steps)."""
    p = functools.partial
    return [
        Step("record", p(record, h, a), p(forget, h, a.vol_id)),
        # os-brick's connect_volume can raise after it logged in or
        # reassigned the volume: a failed connect is disconnected too.
        Step("connect", p(connect, h, a), p(disconnect, h, a), True),
        Step("connected", p(connected, h, a)),
        Step("wait", p(wait, h, a)),
        *attached_steps(h, a.vol_id, lambda: (a.path, a.info), a.sd_id),
    ]


async def record(h: Host, a: Attempt) -> None:
    """Write the row in state ``attaching``."""
    backend = a.backend.name if a.backend else None
    await h.in_db(h.db.insert, a.vol_id, a.connection_info, backend, a.sd_id)


async def forget(h: Host, vol_id: str) -> None:
    """Delete the row."""
    await h.in_db(h.db.delete, vol_id)


async def connect(h: Host, a: Attempt) -> None:
    """Run os-brick's connect_volume."""
    log.info(
        "volume %s: connecting (%s)",
        a.vol_id,
        a.driver,
        extra={"VOL_ID": a.vol_id},
    )
    try:
        a.info = await h.in_worker(
            h.brick.connect, a.driver, a.connection_info["data"], a.backend
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
            a.may_be_connected = False
        raise


async def disconnect(h: Host, a: Attempt) -> None:
    """Undo connect (unless another volume shares the device).

    Also after a failed connect: os-brick's answer is then unknown
    and the connector finds what to disconnect from the connection
    info, as start-up reconciliation does after a crash.
    """
    if not a.may_be_connected:
        return
    if a.info is None:
        log.info(
            "volume %s: connect failed; disconnecting whatever it "
            "may have connected",
            a.vol_id,
            extra={"VOL_ID": a.vol_id},
        )
    await connection.disconnect(h, a.record())


async def connected(h: Host, a: Attempt) -> None:
    """Keep os-brick's answer in the row, for start-up reconciliation."""
    assert a.info is not None
    await h.in_db(h.db.set_attachment, a.vol_id, a.info)


async def wait(h: Host, a: Attempt) -> None:
    """Wait for the device (and its multipath device)."""
    assert a.info is not None
    a.path = await wait_for_device(h, a.driver, a.info, a.backend)


# -- the tail shared with start-up completion -------------------------------

# Where the connected device is: (path, os-brick's answer), asked when
# the step runs (a live attach learns them in earlier steps).
Device = Callable[[], tuple[str, dict[str, Any] | None]]


def attached_steps(
    h: Host, vol_id: str, device: Device, sd_id: str | None = None
) -> list[Step]:
    """own -> owned -> attached -> link: the device is there.

    Give it qemu's owner (and keep what it had), record it, link it.
    """
    p = functools.partial
    g = owning.Grant()
    return [
        Step(
            "own",
            p(own, h, vol_id, sd_id, device, g),
            p(owning.undo_own, h, vol_id, sd_id, g),
        ),
        Step("owned", p(owning.owned, h, vol_id, g)),
        Step(
            "attached",
            p(attached, h, vol_id, device),
            p(unattached, h, vol_id),
        ),
        Step(
            "link",
            p(link, h, vol_id, device, sd_id),
            p(unlink, h, vol_id, sd_id),
        ),
    ]


async def own(
    h: Host, vol_id: str, sd_id: str | None, device: Device, g: owning.Grant
) -> None:
    """Give the node the VM will use its configured owner."""
    await owning.own(h, vol_id, sd_id, device()[0], g)


async def attached(h: Host, vol_id: str, device: Device) -> None:
    """Record path and attachment (state ``attached``).

    Refused (927) when another volume has that device: the check is
    part of the same call on the database thread as the write.
    """
    path, info = device()
    assert info is not None
    owner = await h.in_db(
        h.db.set_attached,
        vol_id,
        path,
        info,
        info.get("multipath_id") or None,
    )
    if owner is not None:
        raise VolumeBusy(
            f"device {path} is already attached as volume {owner}",
            {"vol_id": vol_id, "attached_as": owner},
        )


async def unattached(h: Host, vol_id: str) -> None:
    """Return the row to ``attaching``."""
    await h.in_db(h.db.set_state, vol_id, db.ATTACHING)


async def link(
    h: Host, vol_id: str, device: Device, sd_id: str | None = None
) -> None:
    """Create the managed symlink."""
    h.links.make(vol_id, device()[0], sd_id)


async def unlink(h: Host, vol_id: str, sd_id: str | None = None) -> None:
    """Remove the managed symlink."""
    h.links.remove(vol_id, sd_id)


async def record_leak(h: Host, vol_id: str, e: FlowError) -> None:
    """Keep the row when a revert failed, so a detach can retry."""
    message = SCRUBBER.scrub(
        f"attach failed ({e.error}) and undoing {e.undo_failed} failed "
        f"({e.undo_error}); run detach_volume to clean up"
    )
    log.error("volume %s: %s", vol_id, message, extra={"VOL_ID": vol_id})
    try:
        await h.in_db(h.db.set_state, vol_id, db.DETACHING, message)
    except Exception as db_error:
        # The row stays as the revert left it, shown by volumes_info
        # (and, if still attaching, rolled back at the next start);
        # the caller still gets the attach's error.
        log.error(
            "volume %s: cannot record the failed clean-up: %s",
            vol_id,
            SCRUBBER.scrub(str(db_error)),
            extra={"VOL_ID": vol_id},
        )


# -- teardown ---------------------------------------------------------------


@dataclass
class Teardown:
    """One detach (or start-up teardown) of a record."""

    rec: VolumeRecord
    note: str | None
    sharer: str | None = None


def teardown_steps(h: Host, t: Teardown) -> list[Step]:
    """mark -> unlink -> disown -> disconnect -> forget (no undos)."""
    p = functools.partial
    return [
        Step("mark", p(mark, h, t)),
        Step("unlink", p(unlink, h, t.rec.vol_id, t.rec.sd_id)),
        Step("disown", p(owning.disown, h, t.rec)),
        Step("disconnect", p(disconnect_unshared, h, t)),
        Step("forget", p(forget, h, t.rec.vol_id)),
    ]


async def mark(h: Host, t: Teardown) -> None:
    """Set ``detaching`` (with the note) and find who shares the device.

    Both in one trip to the database thread: the next step that
    needs the database is the forget, after the disconnect.
    """

    def marked() -> str | None:
        h.db.set_state(t.rec.vol_id, db.DETACHING, t.note)
        return connection.device_sharer(h.db, t.rec)

    t.sharer = await h.in_db(marked)


async def disconnect_unshared(h: Host, t: Teardown) -> None:
    """Disconnect, unless another volume uses the device."""
    await connection.disconnect_unshared(h, t.rec, t.sharer)


async def teardown(
    h: Host,
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
        await Flow(flow, h.failpoints, f"volume {vol_id}").run(
            teardown_steps(h, Teardown(rec, note))
        )
    except Exception as e:
        message = SCRUBBER.scrub(f"{context}: {e}" if context else str(e))
        await h.in_db(h.db.set_state, vol_id, db.DETACHING, message)
        log.error(
            "%s of volume %s failed, kept as detaching: %s",
            flow,
            vol_id,
            message,
            extra={"VOL_ID": vol_id},
        )
        raise
