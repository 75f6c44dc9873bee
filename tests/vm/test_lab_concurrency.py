"""8 iSCSI LUNs of one target through the agent: concurrent vs serial.

tests/vm/guest/job_concurrency.py attaches 8 LUNs one by one and 8
others from 8 clients at once, without and with multipath.  The
assertions are about correctness (every attach works, every path is its
own and exists); the wall times and where they went (os-brick lock
waits and holds, command times) are printed for the record, never
asserted: performance belongs to ``make bench`` and the README's table.
Detaching is job_agent.py's subject, not timed here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from lab import GuestRun

# A measurement, not a check: 32 iSCSI logins under emulation take
# minutes, so `make bench-lab` runs it, `make check` does not.
pytestmark = [pytest.mark.vm, pytest.mark.labbench, pytest.mark.timeout(900)]

MODES = ("concurrency_single", "concurrency_multipath")
LUNS = 8


@pytest.fixture(scope="module")
def run(lab_job: Callable[..., GuestRun]) -> GuestRun:
    """One guest run of tests/vm/guest/job_concurrency.py.

    32 iSCSI attaches under TCG: 2-10 s each depending on the load on
    the machine, so more than the default 600 s must be allowed.
    """
    return lab_job("job_concurrency.py", timeout=1200)


def summary(data: dict[str, Any]) -> str:
    """The walls and the lock/command breakdown of one mode, one line each."""
    lines = [f"walls (s): {json.dumps(data['walls'])}"]
    for phase, where in data["where"].items():
        lines.append(
            f"{phase}: locks {json.dumps(where['locks'])}; "
            f"commands {json.dumps(where['commands'])}"
        )
    return "\n".join(lines)


def test_setup(run: GuestRun) -> None:
    """iscsid, multipathd, the 32-LUN target and the agent came up."""
    run.case_ok("concurrency_setup")


@pytest.mark.parametrize("mode", MODES)
def test_every_attach_works(run: GuestRun, mode: str) -> None:
    """8 serial and 8 concurrent attaches: 16 distinct devices that exist."""
    data = run.case_ok(mode)
    print(f"\n{mode}\n{summary(data)}")
    paths = data["serial_paths"] + data["concurrent_paths"]
    assert len(set(paths)) == 2 * LUNS, paths
    assert data["exists"] == [True] * (2 * LUNS)
    if mode == "concurrency_multipath":
        assert all(p.startswith("/dev/mapper/") for p in paths), paths


@pytest.mark.parametrize("mode", MODES)
def test_breakdown_read(run: GuestRun, mode: str) -> None:
    """Every phase's log slice was read: the agent logged each volume.

    os-brick's iSCSI connect holds its host-wide ``connect_volume``
    lock: the breakdown must show it taken once per volume in every
    phase, or the figures would say nothing.
    """
    data = run.case_ok(mode)
    for phase, where in data["where"].items():
        assert len(where["agent"]) == LUNS, (phase, where)
        assert where["locks"]["connect_volume"]["taken"] == LUNS, phase
