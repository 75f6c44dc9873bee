"""NVMe/TCP in the qemu lab: nvmet-tcp target, os-brick nvmeof connector."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from lab import GuestRun

# The guest boots in the first test's setup: allow for it.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def run(lab_job: Callable[..., GuestRun]) -> GuestRun:
    """One guest run of tests/vm/guest/job_nvme.py."""
    return lab_job("job_nvme.py")


def test_attach(run: GuestRun) -> None:
    """The namespace appears as an NVMe block device with its UUID."""
    data = run.case_ok("nvme_tcp")
    assert data["attachment"]["path"].startswith("/dev/nvme")
    assert data["ns_uuid"] == data["ns_uuid_expected"]
    assert len(data["controllers"]) == 1
    assert "traddr=127.0.0.1" in data["list_subsys"]


def test_io(run: GuestRun) -> None:
    """O_DIRECT I/O through the namespace reads back what was written."""
    assert len(run.case_ok("nvme_tcp")["io_sha256"]) == 64


def test_detach_leaves_nothing(run: GuestRun) -> None:
    """After disconnect no controller and no device node remain."""
    data = run.case_ok("nvme_tcp")
    assert data["controllers_after"] == []
    assert not data["path_exists_after"]
