"""The reversible-step runner."""

from __future__ import annotations

import asyncio
import time

import pytest

from hostagent.failpoints import FailPointError, FailPoints
from hostagent.service.flow import Flow, FlowError, Step


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def recorder(log: list[str], name: str, fail: bool = False) -> Step:
    async def do() -> None:
        if fail:
            raise RuntimeError(f"{name} failed")
        log.append(f"do {name}")

    async def undo() -> None:
        log.append(f"undo {name}")

    return Step(name, do, undo)


def test_all_steps_run_in_order() -> None:
    log: list[str] = []
    run(Flow("t", FailPoints()).run([recorder(log, "a"), recorder(log, "b")]))
    assert log == ["do a", "do b"]


def test_failure_undoes_done_steps_in_reverse() -> None:
    log: list[str] = []
    steps = [recorder(log, "a"), recorder(log, "b"), recorder(log, "c", True)]
    with pytest.raises(RuntimeError, match="c failed"):
        run(Flow("t", FailPoints()).run(steps))
    assert log == ["do a", "do b", "undo b", "undo a"]


def test_failed_undo_stops_the_revert_and_is_reported() -> None:
    log: list[str] = []

    async def bad_undo() -> None:
        raise OSError("still busy")

    async def ok() -> None:
        log.append("do b")

    steps = [
        recorder(log, "a"),
        Step("b", ok, bad_undo),
        recorder(log, "c", True),
    ]
    with pytest.raises(FlowError) as e:
        run(Flow("t", FailPoints()).run(steps))
    assert e.value.undo_failed == "b"
    assert isinstance(e.value.error, RuntimeError)
    assert "still busy" in str(e.value)
    assert "undo a" not in log  # a's record of what exists is kept


def test_fail_point_raise_before_and_after() -> None:
    log: list[str] = []
    points = FailPoints({"t.after_a": "raise"})
    with pytest.raises(FailPointError):
        run(Flow("t", points).run([recorder(log, "a"), recorder(log, "b")]))
    assert log == ["do a", "undo a"]
    log.clear()
    points = FailPoints({"t.before_a": "raise"})
    with pytest.raises(FailPointError):
        run(Flow("t", points).run([recorder(log, "a")]))
    assert log == []


def test_fail_points_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "HOSTAGENT_FAILPOINTS", "attach.after_connect=kill, detach.x"
    )
    assert FailPoints.from_env().points == {
        "attach.after_connect": "kill",
        "detach.x": "raise",
    }


def test_counted_fail_point_fires_n_times() -> None:
    points = FailPoints({"t.before_a": "2*raise"})
    for _ in range(2):
        with pytest.raises(FailPointError):
            points.hit("t.before_a")
    points.hit("t.before_a")  # exhausted: a retry goes through
    log: list[str] = []
    run(Flow("t", points).run([recorder(log, "a")]))
    assert log == ["do a"]


def test_sleep_fail_point_pauses_and_goes_on() -> None:
    log: list[str] = []
    points = FailPoints({"t.after_a": "sleep:0.2"})
    started = time.monotonic()
    run(Flow("t", points).run([recorder(log, "a"), recorder(log, "b")]))
    # A lower bound only: a sleep is never shorter than asked for.
    assert time.monotonic() - started >= 0.2
    assert log == ["do a", "do b"]


@pytest.mark.parametrize(
    "action", ["explode", "sleep", "sleep:x", "x*raise", "kill:3"]
)
def test_malformed_fail_point_is_refused(action: str) -> None:
    with pytest.raises(ValueError, match=r"fail point t\.a"):
        FailPoints({"t.a": action})


def test_undo_on_failure_undoes_the_failing_step_too() -> None:
    """A step that may fail half-way (a connect) is undone when it fails."""
    log: list[str] = []

    async def half_done() -> None:
        log.append("do b")
        raise RuntimeError("b failed after doing part of its work")

    async def undo_b() -> None:
        log.append("undo b")

    steps = [recorder(log, "a"), Step("b", half_done, undo_b, True)]
    with pytest.raises(RuntimeError, match="b failed"):
        run(Flow("t", FailPoints()).run(steps))
    assert log == ["do a", "do b", "undo b", "undo a"]


def test_failing_step_without_undo_on_failure_is_not_undone() -> None:
    log: list[str] = []

    async def fails() -> None:
        raise RuntimeError("b failed")

    async def undo_b() -> None:
        log.append("undo b")

    steps = [recorder(log, "a"), Step("b", fails, undo_b)]
    with pytest.raises(RuntimeError):
        run(Flow("t", FailPoints()).run(steps))
    assert log == ["do a", "undo a"]


def test_undo_on_failure_not_run_when_the_step_never_started() -> None:
    """A ``before_`` fail point fails the flow before ``do`` runs."""
    log: list[str] = []
    b = recorder(log, "b")
    steps = [recorder(log, "a"), Step("b", b.do, b.undo, True)]
    with pytest.raises(FailPointError):
        run(Flow("t", FailPoints({"t.before_b": "raise"})).run(steps))
    assert log == ["do a", "undo a"]


def test_failed_undo_of_a_failed_step_is_reported() -> None:
    log: list[str] = []

    async def fails() -> None:
        raise RuntimeError("connect failed")

    async def bad_undo() -> None:
        raise OSError("disconnect failed")

    steps = [recorder(log, "a"), Step("b", fails, bad_undo, True)]
    with pytest.raises(FlowError) as e:
        run(Flow("t", FailPoints()).run(steps))
    assert e.value.undo_failed == "b"
    assert str(e.value.error) == "connect failed"
    assert log == ["do a"]  # a (the record of what may exist) is kept


def test_cancelled_flow_is_not_reverted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cancelled step may still run on a thread: nothing is undone."""
    log: list[str] = []

    async def main() -> None:
        entered = asyncio.Event()

        async def hangs() -> None:
            entered.set()
            await asyncio.Event().wait()  # e.g. os-brick on a worker

        async def undo_b() -> None:
            log.append("undo b")

        steps = [recorder(log, "a"), Step("b", hangs, undo_b, True)]
        task = asyncio.create_task(
            Flow("t", FailPoints(), "volume v").run(steps)
        )
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert log == ["do a"]
    assert (
        "t of volume v interrupted (CancelledError) in step b: not reverting"
        in caplog.text
    )


def test_base_exception_in_a_step_is_not_reverted() -> None:
    log: list[str] = []

    async def interrupted() -> None:
        raise KeyboardInterrupt

    steps = [recorder(log, "a"), Step("b", interrupted, None, True)]
    with pytest.raises(KeyboardInterrupt):
        run(Flow("t", FailPoints()).run(steps))
    assert log == ["do a"]
