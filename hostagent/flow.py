"""A small runner of reversible steps, in the spirit of TaskFlow.

A flow is a list of steps, each with ``do`` and an optional ``undo``.  When
a step fails, the steps already done are undone in reverse order.  An undo
that fails stops the revert there: the earlier steps are the record of what
still exists on the host (for attach, the DB row that says a connection may
be up), so undoing them would forget a leak instead of reporting it.

Fail points let tests stop a flow at any named place: set
``HOSTAGENT_FAILPOINTS="attach.after_connect=kill,detach.before_disconnect=raise"``.
``kill`` sends SIGKILL to this process (a crash at exactly that point);
``raise`` raises :class:`FailPointError`.  Names are ``<flow>.before_<step>``
and ``<flow>.after_<step>``.
"""

from __future__ import annotations

import logging
import os
import signal
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


def _parse_failpoints(text: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in text.split(","):
        name, _, action = item.strip().partition("=")
        if name:
            points[name] = action or "raise"
    return points


@dataclass
class FailPoints:
    """The fail points enabled through :data:`FAILPOINTS_ENV`."""

    points: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> FailPoints:
        """Read :data:`FAILPOINTS_ENV` (empty when unset)."""
        return cls(_parse_failpoints(os.environ.get(FAILPOINTS_ENV, "")))

    def hit(self, name: str) -> None:
        """Act on fail point ``name`` if it is enabled."""
        action = self.points.get(name)
        if action is None:
            return
        log.warning("fail point %s: %s", name, action)
        if action == "kill":
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        raise FailPointError(f"fail point {name}")


class Flow:
    """Runs steps in order, reverting the done ones when one fails."""

    def __init__(self, name: str, failpoints: FailPoints) -> None:
        self.name = name
        self.failpoints = failpoints

    async def run(self, steps: Sequence[Step]) -> None:
        """Run ``steps``; on failure revert and re-raise.

        Raises the failing step's exception when the revert completed, or
        :class:`FlowError` when an undo failed too.
        """
        done: list[Step] = []
        for step in steps:
            try:
                self.failpoints.hit(f"{self.name}.before_{step.name}")
                await step.do()
                done.append(step)
                self.failpoints.hit(f"{self.name}.after_{step.name}")
            except BaseException as e:
                await self._revert(done, e)
                raise

    async def _revert(self, done: list[Step], error: BaseException) -> None:
        for step in reversed(done):
            if step.undo is None:
                continue
            try:
                await step.undo()
            except Exception as undo_error:
                log.error(
                    "%s: undoing step %s failed: %s",
                    self.name,
                    step.name,
                    undo_error,
                )
                raise FlowError(error, step.name, undo_error) from error
