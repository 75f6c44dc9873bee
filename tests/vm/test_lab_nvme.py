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


def test_lightos_attach_through_discovery_client(run: GuestRun) -> None:
    """The agent's lightos driver: os-brick's connector writes the
    discovery file, the (fake) discovery-client connects the subsystem,
    and the path attach returns is the namespace of that volume uuid."""
    data = run.case_ok("lightos_agent")
    uuid, nqn = data["ns_uuid"], data["subsysnqn"]
    assert data["driver_status"] == {
        "ready": True,
        "tools": {},
        "problems": [],
    }
    assert data["discovery_file"].splitlines()[1:] == [
        f"-t tcp -a 127.0.0.1 -s 4421 -q {data['hostnqn']} -n {nqn}"
    ]
    assert data["entries"] == [["127.0.0.1", 4421, data["hostnqn"], nqn]]
    assert data["connect_errors"] == [] and data["warnings"] == []
    assert len(data["fake_controllers"]) == 1
    path = data["result"]["path"]
    assert path == f"/dev/{data['block']}"
    assert data["block"].startswith(data["fake_controllers"][0] + "n")
    assert data["wwid"] == f"uuid.{uuid}"
    assert data["uuid"] == uuid
    assert nqn in data["subsysnqns"]


def test_lightos_io_reaches_the_target(run: GuestRun) -> None:
    """What was written through the path is in nvmet's backing file."""
    data = run.case_ok("lightos_agent")
    assert len(data["io_sha256"]) == 64
    assert data["io_sha256"] == data["backing_sha256"]


def test_lightos_detach_leaves_nothing(run: GuestRun) -> None:
    """Detach removes the discovery file; the service then disconnects:
    no controller or subsystem of the NQN, no device, no record."""
    data = run.case_ok("lightos_agent")
    name = f"{data['ns_uuid']}.conf"
    assert data["removed"]
    # os-brick moves the file in from /tmp: across file systems that is
    # a copy, which the service may see half-written (an "add" with no
    # entry) before the whole file, as the real one would.
    *adds, last = data["events"]
    assert adds and all(e == ["add", name] for e in adds)
    assert last == ["remove", name]
    assert data["discovery_dir_after"] == []
    assert data["subsysnqn"] not in data["subsysnqns_after"]
    assert not data["path_exists_after"]
    assert data["info_after"] == []
