"""AoE in the qemu lab: vblade on a veth pair, the aoe driver."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from lab import GuestRun

# The guest boots in the first test's setup: allow for it.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def run(lab_job: Callable[..., GuestRun]) -> GuestRun:
    """One guest run of tests/vm/guest/job_aoe.py."""
    return lab_job("job_aoe.py")


def test_device_appears(run: GuestRun) -> None:
    """The export shows up as /dev/etherd/e1.1 and in aoe-stat."""
    data = run.case_ok("aoe")
    assert data["device"] == "/dev/etherd/e1.1"
    assert "e1.1" in data["aoe_stat"]
    assert data["sysfs"].endswith("/block/etherd!e1.1")


def test_io_reaches_backing_file(run: GuestRun) -> None:
    """Data written to the AoE disk is in vblade's backing file."""
    data = run.case_ok("aoe")
    assert data["io_sha256"] == data["backing_sha256"]


def test_gone_after_flush(run: GuestRun) -> None:
    """With the target stopped, aoe-flush removes the device."""
    assert not run.case_ok("aoe")["device_exists_after"]
