"""Device events: tell subscribed clients when a volume's device changes.

The kernel announces block device changes over netlink (see
:class:`hostagent.udev.BlockMonitor`); on any of them the agent checks
its attached volumes again, compares each one's ``exists`` with what it
saw last, and sends ``ManagedVolume.changed`` with ``{"vol_id",
"exists", "path"}`` to every connection that called ``Host.subscribe``.
Events come in bursts, so checks are coalesced; a slow periodic check
covers events lost to a full socket buffer or a host where netlink is
not available.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from hostagent.redact import redact
from hostagent.udev import BlockMonitor

log = logging.getLogger(__name__)

# Wait this long after an event for the rest of its burst.
COALESCE = 0.05
# The backstop check, in seconds.
RESCAN_INTERVAL = 60.0

METHOD = "ManagedVolume.changed"

Lister = Callable[[], Awaitable[list[dict[str, Any]]]]


class Subscriber(Protocol):
    """What a subscriber is: a connection's :class:`hostagent.api.Peer`."""

    notify: Callable[[dict[str, Any]], None] | None

    def describe(self) -> str:
        """For log lines."""
        ...


class Events:
    """Subscribers, the device watch and the last seen state per volume."""

    def __init__(self, lister: Lister) -> None:
        # ``lister`` is VolumeService.presence: every volume's vol_id,
        # state, path and ``exists`` checked now.
        self._list = lister
        self._subscribers: dict[int, Subscriber] = {}
        self._known: dict[str, tuple[bool, str | None]] = {}
        self._monitor: BlockMonitor | None = None
        self._pending: asyncio.Task[None] | None = None
        self._backstop: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._dirty = False
        self.sent = 0

    # -- subscriptions -----------------------------------------------------

    def subscribe(self, peer: Subscriber) -> bool:
        """Send ``peer`` notifications while its connection is open."""
        if peer.notify is None:
            return False
        self._subscribers[id(peer)] = peer
        log.info("%s subscribed to events", peer.describe())
        return True

    def unsubscribe(self, peer: Subscriber) -> bool:
        """Stop notifying ``peer``; false when it was not subscribed."""
        return self._subscribers.pop(id(peer), None) is not None

    def is_subscribed(self, peer: Subscriber) -> bool:
        """True while ``peer`` gets notifications."""
        return id(peer) in self._subscribers

    @property
    def subscribers(self) -> int:
        """Connections subscribed now."""
        return len(self._subscribers)

    def publish(self, params: dict[str, Any]) -> None:
        """Send one notification to every open subscribed connection."""
        message = {
            "jsonrpc": "2.0",
            "method": METHOD,
            "params": redact(params),  # the rule results follow
        }
        for key, peer in list(self._subscribers.items()):
            notify = peer.notify
            if notify is None:  # the connection ended
                del self._subscribers[key]
                continue
            try:
                notify(message)
            except Exception:  # a broken connection must not stop the rest
                log.exception("cannot notify %s", peer.describe())
                del self._subscribers[key]
        self.sent += 1

    # -- what the volume service tells us ----------------------------------

    def track(self, vol_id: str, exists: bool, path: str | None) -> None:
        """A volume was attached (its device is there)."""
        self._known[vol_id] = (exists, path)

    def forget(self, vol_id: str) -> None:
        """A volume was detached: its device going is no news."""
        self._known.pop(vol_id, None)

    def gone(self, vol_id: str, path: str | None) -> None:
        """A detach retried in the background finished: tell subscribers.

        No client is waiting on that detach; the notification is how
        the engine learns the volume is finally off this host.
        """
        self.forget(vol_id)
        self.publish(
            {"vol_id": vol_id, "exists": False, "path": path, "detached": True}
        )

    # -- the watch ---------------------------------------------------------

    async def start(self) -> None:
        """Note the current state, then watch kernel block events."""
        await self.check(initial=True)
        loop = asyncio.get_running_loop()
        try:
            self._monitor = BlockMonitor()
        except OSError as e:
            log.warning(
                "no kernel uevents (%s); checking devices every %g s only",
                e,
                RESCAN_INTERVAL,
            )
        else:
            loop.add_reader(self._monitor.fileno(), self._on_readable)
            log.info("watching kernel block device events")
        self._backstop = asyncio.create_task(self._rescan_forever())

    async def stop(self) -> None:
        """Stop watching."""
        if self._monitor is not None:
            asyncio.get_running_loop().remove_reader(self._monitor.fileno())
            self._monitor.close()
            self._monitor = None
        for task in (self._pending, self._backstop):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _on_readable(self) -> None:
        assert self._monitor is not None
        events = self._monitor.drain()
        if not events:
            return
        log.debug("uevents: %s", events[:10])
        self.device_changed()

    def device_changed(self) -> asyncio.Task[None]:
        """Check the devices soon: once for a burst of changes.

        Returns the task of that check, which runs again while changes
        keep coming.
        """
        # A change during a check must cause another check: the one
        # running may have looked at that device before it changed.
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._coalesced())
        return self._pending

    async def _coalesced(self) -> None:
        while self._dirty:
            await asyncio.sleep(COALESCE)
            self._dirty = False
            try:
                await self.check()
            except Exception:
                log.exception("device check after uevent failed")

    async def _rescan_forever(self) -> None:
        while True:
            await asyncio.sleep(RESCAN_INTERVAL)
            try:
                await self.check()
            except Exception:
                log.exception("periodic device check failed")

    async def check(self, initial: bool = False) -> int:
        """Compare every attached volume with what was seen last.

        Sends one notification per volume whose ``exists`` changed and
        returns how many were sent.  Volumes first seen here (at start,
        or attached since) are noted without a notification.
        """
        async with self._lock:
            volumes = await self._list()
            changed = 0
            for v in volumes:
                if v["state"] != "attached":
                    continue
                vol_id = v["vol_id"]
                now = (bool(v["exists"]), v["path"])
                before = self._known.get(vol_id)
                self._known[vol_id] = now
                if initial or before is None or before[0] == now[0]:
                    continue
                log.info(
                    "volume %s device %s %s",
                    vol_id,
                    v["path"],
                    "is back" if now[0] else "is gone",
                    extra={"VOL_ID": vol_id},
                )
                self.publish(
                    {"vol_id": vol_id, "exists": now[0], "path": now[1]}
                )
                changed += 1
            return changed
