"""NFS in the qemu lab: kernel nfsd, os-brick's NFS connector."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from lab import GuestRun

# The guest boots in the first test's setup: allow for it.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def run(lab_job: Callable[..., GuestRun]) -> GuestRun:
    """One guest run of tests/vm/guest/job_nfs.py."""
    return lab_job("job_nfs.py")


def test_attach(run: GuestRun) -> None:
    """The connector mounts the share; the volume file is under it."""
    data = run.case_ok("nfs")
    assert data["path_exists"]
    assert data["attachment"]["path"].endswith("/" + data["props"]["name"])
    assert len(data["mounts"]) == 1
    assert " nfs " in data["mounts"][0]


def test_io_reaches_server(run: GuestRun) -> None:
    """What the client wrote is in the server's own file."""
    data = run.case_ok("nfs")
    assert data["io_sha256"] == data["server_sha256"]


def test_unmount_leaves_nothing(run: GuestRun) -> None:
    """os-brick keeps the share mounted; after umount nothing is left."""
    data = run.case_ok("nfs")
    assert data["mounts_after_umount"] == []
