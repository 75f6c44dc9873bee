"""Fail points: let tests stop the agent at any named place.

Set, for example::

    HOSTAGENT_FAILPOINTS="attach.after_connect=kill,detach.before_mark=raise"

Names are ``<flow>.before_<step>`` and ``<flow>.after_<step>`` (see
:mod:`hostagent.service.flow`) and the os-brick calls'
``brick.before_connect_volume`` ... (see brick.py).  Actions:

* ``kill``: SIGKILL this process (a crash at exactly that point);
* ``raise``: raise :class:`FailPointError`;
* ``sleep:SECONDS``: pause there (to widen a race window), then go on.

``N*ACTION`` acts on the first N hits only, e.g. ``1*raise`` fails once
and lets a retry through.  A module of its own: brick.py and the flows
both hit fail points, and brick.py is below the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

FAILPOINTS_ENV = "HOSTAGENT_FAILPOINTS"


class FailPointError(Exception):
    """Raised by a fail point set to ``raise``."""


def _parse_failpoints(text: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in text.split(","):
        name, _, action = item.strip().partition("=")
        if name:
            points[name] = action.strip() or "raise"
    return points


def _parse_action(name: str, text: str) -> tuple[int | None, str, float]:
    """``[N*]kill|raise|sleep:S`` as (times, action, seconds)."""
    times: int | None = None
    count, star, rest = text.partition("*")
    if star:
        if not count.strip().isdigit():
            raise ValueError(f"fail point {name}: bad count in {text!r}")
        times, text = int(count), rest
    action, _, arg = text.strip().partition(":")
    seconds = 0.0
    if action == "sleep":
        try:
            seconds = float(arg)
        except ValueError:
            raise ValueError(
                f"fail point {name}: sleep needs seconds, got {text!r}"
            ) from None
    elif action not in ("kill", "raise") or arg:
        raise ValueError(f"fail point {name}: unknown action {text!r}")
    return times, action, seconds


@dataclass
class FailPoints:
    """The fail points enabled through :data:`FAILPOINTS_ENV`.

    Hits may come from the event loop (:meth:`ahit`) and from worker
    threads (:meth:`hit`); counting is thread-safe.
    """

    points: dict[str, str] = field(default_factory=dict)
    _left: dict[str, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        for name, text in self.points.items():
            times, _, _ = _parse_action(name, text)
            if times is not None:
                self._left[name] = times

    @classmethod
    def from_env(cls) -> FailPoints:
        """Read :data:`FAILPOINTS_ENV` (empty when unset).

        Raises :class:`ValueError` on a malformed action, so a test that
        mistypes one fails instead of silently testing nothing.
        """
        return cls(_parse_failpoints(os.environ.get(FAILPOINTS_ENV, "")))

    def _take(self, name: str) -> tuple[str, float] | None:
        text = self.points.get(name)
        if text is None:
            return None
        times, action, seconds = _parse_action(name, text)
        if times is not None:
            with self._lock:
                if self._left.get(name, 0) <= 0:
                    return None
                self._left[name] -= 1
        log.warning("fail point %s: %s", name, text)
        if action == "kill":
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "raise":
            raise FailPointError(f"fail point {name}")
        return action, seconds

    def hit(self, name: str) -> None:
        """Act on fail point ``name`` if enabled (blocking; threads)."""
        taken = self._take(name)
        if taken is not None:
            time.sleep(taken[1])

    async def ahit(self, name: str) -> None:
        """Act on fail point ``name`` if enabled (on the event loop)."""
        taken = self._take(name)
        if taken is not None:
            await asyncio.sleep(taken[1])
