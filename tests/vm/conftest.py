"""Pytest glue for the qemu lab: the ``vm`` marker, guest runs, reports.

Each test module boots one guest for its group of cases (a job script
under tests/vm/guest) through the ``lab_job`` fixture factory; the tests
then assert on that run's per-case JSON results.  A failing test gets
the tail of the guest's console attached, and the session ends with a
table of boot and case times.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
# Importable whatever pytest's import mode is.
sys.path.insert(0, str(HERE))

import lab  # noqa: E402

_RUNS: dict[str, lab.GuestRun] = {}
# Test module name -> the runs it booted, for failure reports.
_BY_MODULE: dict[str, list[lab.GuestRun]] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``vm`` marker."""
    config.addinivalue_line(
        "markers", "vm: boots a qemu guest with real storage transports"
    )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Leave the lab out of runs that did not ask for it with ``-m``."""
    if config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="qemu lab: run with -m vm (make check-vm)")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def lab_job(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., lab.GuestRun]]:
    """Factory: ``lab_job("job_iscsi.py")`` boots a guest running it once.

    The run is cached per job name for the session.  When the lab is not
    set up the test fails if ``-m vm`` was asked for, else it is skipped.
    """

    def run(job: str, **kwargs: Any) -> lab.GuestRun:
        runs = _BY_MODULE.setdefault(request.module.__name__, [])
        if job in _RUNS:
            if _RUNS[job] not in runs:
                runs.append(_RUNS[job])
            return _RUNS[job]
        try:
            lab.check_ready()
        except lab.LabUnavailable as exc:
            if "vm" in (request.config.getoption("markexpr") or ""):
                pytest.fail(str(exc))
            pytest.skip(str(exc))
        lab_dir = tmp_path_factory.mktemp(Path(job).stem)
        result = lab.run_guest(HERE / "guest" / job, lab_dir, **kwargs)
        _RUNS[job] = result
        runs.append(result)
        return result

    yield run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None]:
    """Attach the guest console's tail to a failed lab test."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    module = getattr(item, "module", None)
    runs = _BY_MODULE.get(module.__name__, []) if module else []
    for value in runs:
        report.sections.append(
            (
                f"guest console, tail (full: {value.console_path})",
                value.console_tail(),
            )
        )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print boot, job and per-case times of every guest run."""
    if not _RUNS:
        return
    tr = terminalreporter
    tr.section("qemu lab timings")
    total = 0.0
    for job, run in _RUNS.items():
        total += run.wall_seconds
        boot = run.boot_seconds
        tr.write_line(
            f"{job}: wall {run.wall_seconds:.1f}s, guest init at "
            f"{boot if boot is not None else '?'}s, status {run.status}"
            + (" TIMED OUT" if run.timed_out else "")
        )
        for name, result in run.results.items():
            steps = ", ".join(
                f"{k} {v:.2f}s" for k, v in result.get("steps", {}).items()
            )
            tr.write_line(
                f"  {name}: {result.get('seconds', 0):.2f}s "
                f"{'ok' if result.get('ok') else 'FAILED'}"
                + (f" ({steps})" if steps else "")
            )
    tr.write_line(f"total guest wall time: {total:.1f}s")
