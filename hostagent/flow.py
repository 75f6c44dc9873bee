"""A small runner of reversible steps, in the spirit of TaskFlow.

A flow is a list of steps, each with ``do`` and an optional ``undo``.  When
a step fails, the steps already done are undone in reverse order; a step
marked ``undo_on_failure`` is undone also when its own ``do`` failed, for
work that can fail half-way (os-brick's connect_volume may log in and then
raise).  An undo that fails stops the revert there: the earlier steps are
the record of what still exists on the host (for attach, the DB row that
says a connection may be up), so undoing them would forget a leak instead
of reporting it.

A flow that is cancelled (``asyncio.CancelledError``: a shutdown that did
not wait for it) or otherwise interrupted by a ``BaseException`` that is
not an ``Exception`` is not reverted: a worker thread may still be inside
the step, and the durable records the steps wrote are left for start-up
reconciliation to finish or roll back, as after a crash.

Fail points let tests stop a flow at any named place: set
``HOSTAGENT_FAILPOINTS="attach.after_connect=kill,detach.before_disconnect=raise"``.
Names are ``<flow>.before_<step>`` and ``<flow>.after_<step>`` (and the
os-brick calls' ``brick.before_connect_volume`` ...; see brick.py).
Actions:

* ``kill``: SIGKILL this process (a crash at exactly that point);
* ``raise``: raise :class:`FailPointError`;
* ``sleep:SECONDS``: pause there (to widen a race window), then go on.

``N*ACTION`` acts on the first N hits only, e.g. ``1*raise`` fails once
and lets a retry through.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

FAILPOINTS_ENV = "HOSTAGENT_FAILPOINTS"


class FailPointError(Exception):
    """Raised by a fail point set to ``raise``."""


class FlowError(Exception):
    """A step failed and its revert did not complete.

    ``error`` is the step's exception; ``undo_failed`` names the step whose
    undo failed and ``undo_error`` its exception.
    """

    def __init__(
        self, error: BaseException, undo_failed: str, undo_error: BaseException
    ) -> None:
        super().__init__(
            f"{error}; undoing {undo_failed} then failed: {undo_error}"
        )
        self.error = error
        self.undo_failed = undo_failed
        self.undo_error = undo_error


@dataclass(frozen=True)
class Step:
    """One reversible step."""

    name: str
    do: Callable[[], Awaitable[None]]
    undo: Callable[[], Awaitable[None]] | None = None
    # Undo also when ``do`` raised: it may have done part of its work.
    undo_on_failure: bool = False


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


class Flow:
    """Runs steps in order, reverting the done ones when one fails.

    ``subject`` (e.g. ``"volume <id>"``) only goes into log lines.
    """

    def __init__(
        self, name: str, failpoints: FailPoints, subject: str = ""
    ) -> None:
        self.name = name
        self.failpoints = failpoints
        self.subject = subject

    async def run(self, steps: Sequence[Step]) -> None:
        """Run ``steps``; on failure revert and re-raise.

        Raises the failing step's exception when the revert completed, or
        :class:`FlowError` when an undo failed too.  A cancellation (or
        another non-``Exception``) is re-raised without reverting.
        """
        done: list[Step] = []
        current = ""
        try:
            for step in steps:
                current = step.name
                await self.failpoints.ahit(f"{self.name}.before_{step.name}")
                try:
                    await step.do()
                except BaseException:
                    if step.undo_on_failure:
                        done.append(step)
                    raise
                done.append(step)
                await self.failpoints.ahit(f"{self.name}.after_{step.name}")
        except Exception as e:
            await self._revert(done, e)
            raise
        except BaseException as e:
            # A worker thread may still be running the step (a thread
            # cannot be stopped), and at shutdown the database may be gone
            # already: what the steps recorded stays for start-up
            # reconciliation, as after a crash.
            log.warning(
                "%s%s interrupted (%s) in step %s: not reverting; start-up "
                "reconciliation finishes or rolls back what it did",
                self.name,
                f" of {self.subject}" if self.subject else "",
                type(e).__name__,
                current,
            )
            raise

    async def _revert(self, done: list[Step], error: Exception) -> None:
        for step in reversed(done):
            if step.undo is None:
                continue
            try:
                await step.undo()
            except Exception as undo_error:
                log.error(
                    "%s%s: undoing step %s failed: %s",
                    self.name,
                    f" of {self.subject}" if self.subject else "",
                    step.name,
                    undo_error,
                )
                raise FlowError(error, step.name, undo_error) from error
