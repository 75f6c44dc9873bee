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

Every step has the fail points ``<flow>.before_<step>`` and
``<flow>.after_<step>`` (see :mod:`hostagent.failpoints`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from hostagent.failpoints import FailPoints

log = logging.getLogger(__name__)


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
