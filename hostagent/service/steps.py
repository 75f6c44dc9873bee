"""The steps of the flows, as small functions shared by every caller.

* attach: record -> connect -> connected -> wait -> admit -> own ->
  owned -> attached -> link (a re-attach over the row of a device that
  went away starts with reattaching instead of record);
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
from hostagent.errors import AgentError, ConnectorFailed
from hostagent.redact import SCRUBBER
from hostagent.release import Survey
from hostagent.service import connection, detaching, guard, identity, owning
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
    # False when the driver's device check waits for the device to be
    # there (see guard.admit): it runs again after the wait.
    admitted: bool = True
    # The row of an earlier attach whose device is gone: this attach
    # runs again over it (a re-attach after a reboot or a fence).
    previous: VolumeRecord | None = None
    # The device's identity as the driver's check found it: the first
    # step refuses it (927) when it is another volume's.
    key: str | None = None

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
    """record -> connect -> connected -> wait -> admit -> (attached_steps).

    A re-attach (``a.previous``) keeps its row: reattaching, whose undo
    puts the row back as it was, instead of record.
    """
    p = functools.partial
    first = (
        Step("reattaching", p(reattaching, h, a), p(restore, h, a))
        if a.previous is not None
        else Step("record", p(record, h, a), p(forget, h, a.vol_id))
    )
    return [
        first,
        # os-brick's connect_volume can raise after it logged in or
        # reassigned the volume: a failed connect is disconnected too.
        Step("connect", p(connect, h, a), p(disconnect, h, a), True),
        Step("connected", p(connected, h, a)),
        Step("wait", p(wait, h, a)),
        Step("admit", p(admit_found, h, a)),
        *attached_steps(h, a.vol_id, lambda: (a.path, a.info), a.sd_id),
    ]


async def record(h: Host, a: Attempt) -> None:
    """Write the row in state ``attaching``, unless the device is owned.

    The identity check (927) and the write share one trip to the
    database thread: nothing else writes in between.
    """
    backend = a.backend.name if a.backend else None
    write = functools.partial(
        h.db.insert, a.vol_id, a.connection_info, backend, a.sd_id
    )
    await _claim(h, a, write)


async def reattaching(h: Host, a: Attempt) -> None:
    """Set the row of a gone device to ``attaching`` for the new attach.

    Its connection info and backend are the ones asked again (checked
    equal); a crash from here on is rolled back or completed at start-up
    like any interrupted attach.  Refused like :func:`record`.
    """
    await _claim(
        h, a, functools.partial(h.db.set_state, a.vol_id, db.ATTACHING)
    )


async def _claim(h: Host, a: Attempt, write: Callable[[], None]) -> None:
    """``write``, on the database thread, if the device is no one else's."""
    key = a.key

    def claimed() -> str | None:
        if key is not None:
            owner = h.db.find_device_owner(None, None, a.vol_id, key)
            if owner is not None:
                return owner
        write()
        return None

    owner = await h.in_db(claimed)
    if owner is not None:
        path = a.connection_info["data"].get("device_path")
        raise guard.owned_error(a.vol_id, key, path, owner)


async def restore(h: Host, a: Attempt) -> None:
    """Put the row back as ``attached`` (its device still gone)."""
    assert a.previous is not None
    await h.in_db(
        h.db.set_state,
        a.vol_id,
        db.ATTACHED,
        "re-attach failed; the device is still missing",
    )


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


async def admit(h: Host, a: Attempt) -> None:
    """The driver's device check, before anything is recorded or connected.

    The identity check (927) of the device it found is made by the
    flow's first step, in the same trip to the database as its write;
    a device not there yet is checked again by :func:`admit_found` once
    the connector ran.
    """
    a.key, a.admitted = await guard.admit(
        h, a.driver, a.connection_info["data"]
    )


async def admit_found(h: Host, a: Attempt) -> None:
    """The driver's device check, if it waited for the device.

    What appeared at the path while the connector ran is checked like
    what was there before: refused, it is undone with the attach.
    """
    if a.admitted:
        return
    key, _ = await guard.admit(
        h, a.driver, a.connection_info["data"], final=True
    )
    a.admitted = True
    await guard.refuse_owned(h, a.vol_id, key, a.path)


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
    """Record path, attachment, identity and boot (state ``attached``).

    Refused (927) when another volume has that device, whatever path
    names it (compared by :func:`~.identity.device_key`): the check is
    part of the same call on the database thread as the write.
    """
    path, info = device()
    assert info is not None
    # A stat and a sysfs read: less than the hand-off to a thread.
    key = identity.device_key(path)
    owner = await h.in_db(
        h.db.set_attached,
        vol_id,
        path,
        info,
        info.get("multipath_id") or None,
        key,
        identity.boot_id(),
    )
    if owner is not None:
        raise guard.owned_error(vol_id, key, path, owner)


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
        await h.note_failure(vol_id, message)
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
    # Detach even if the device is in use (the caller checked and
    # logged its users); os-brick ignores flush errors.
    force: bool = False
    # What the caller's check found using the device (see detaching).
    checked: Survey | None = None


def teardown_steps(h: Host, t: Teardown) -> list[Step]:
    """mark -> unlink -> disown -> release -> disconnect -> forget.

    No undos.  Ownership goes back while the node still exists; release
    (queueing off, partition maps gone) comes last before disconnect.
    """
    p = functools.partial
    return [
        Step("mark", p(mark, h, t)),
        Step("unlink", p(unlink, h, t.rec.vol_id, t.rec.sd_id)),
        Step("disown", p(owning.disown, h, t.rec)),
        Step("release", p(release, h, t)),
        Step("disconnect", p(disconnect_unshared, h, t)),
        Step("forget", p(forget, h, t.rec.vol_id)),
    ]


async def release(h: Host, t: Teardown) -> None:
    """Make the device removable (see :mod:`.detaching`); not a shared
    device's, which is not disconnected either."""
    if t.sharer is None:
        await detaching.release(h, t.rec, t.force, t.checked)


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
    await connection.disconnect_unshared(h, t.rec, t.sharer, t.force)


async def teardown(
    h: Host,
    rec: VolumeRecord,
    flow: str,
    note: str | None,
    context: str = "",
    force: bool = False,
    checked: Survey | None = None,
) -> None:
    """Mark detaching, unlink, release, disconnect, forget; record a failure.

    ``note`` is the ``last_error`` the row carries while this runs (a
    crash in the middle leaves it for the next start to read).  On
    failure the row stays ``detaching`` with the error (after
    ``context``, when given), and the error is raised: nothing is
    forgotten while it may still be connected.  A failure counts one
    attempt more and schedules a retry in the background.
    """
    vol_id = rec.vol_id
    try:
        await Flow(flow, h.failpoints, f"volume {vol_id}").run(
            teardown_steps(
                h, Teardown(rec, note, force=force, checked=checked)
            )
        )
    except Exception as e:
        message = SCRUBBER.scrub(f"{context}: {e}" if context else str(e))
        attempts = 0
        try:
            attempts = await h.note_failure(vol_id, message)
        except AgentError as db_error:
            # 930: the row stays as the steps left it (still attached
            # when the mark itself failed: nothing was changed).
            log.error(
                "volume %s: cannot record the failed %s: %s",
                vol_id,
                flow,
                db_error.message,
                extra={"VOL_ID": vol_id},
            )
        log.error(
            "%s of volume %s failed (attempt %d), kept as detaching and "
            "retried in the background: %s",
            flow,
            vol_id,
            attempts,
            message,
            extra={"VOL_ID": vol_id},
        )
        raise
