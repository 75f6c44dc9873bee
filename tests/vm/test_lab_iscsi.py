"""iSCSI in the qemu lab: LIO target, open-iscsi, dm-multipath, os-brick."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from lab import GuestRun

# The guest boots in the first test's setup: allow for it.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

CHAP_SECRETS = ("lab-secret-0123", "wrong-secret-4567")


@pytest.fixture(scope="module")
def run(lab_job: Callable[..., GuestRun]) -> GuestRun:
    """One guest run of tests/vm/guest/job_iscsi.py."""
    return lab_job("job_iscsi.py")


def test_services_start(run: GuestRun) -> None:
    """iscsid and multipathd run in the guest; it has an initiator name."""
    data = run.case_ok("iscsi_services")
    assert data["initiator"].startswith("iqn.2004-10.org.debian:lab")


def test_connector_properties(run: GuestRun) -> None:
    """os-brick sees the initiator, an NVMe host NQN and multipath."""
    props = run.case_ok("connector_properties")["properties"]
    initiator = run.case_ok("iscsi_services")["initiator"]
    assert props["initiator"] == initiator
    assert props["nqn"].startswith("nqn.2014-08.org.nvmexpress:uuid:")
    assert props["multipath"] is True


def test_multipath_attach(run: GuestRun) -> None:
    """Two portals give /dev/mapper/<wwid>, dm uuid mpath-<wwid>, 2 paths."""
    data = run.case_ok("iscsi_multipath")
    wwid = data["wwid"]
    assert re.fullmatch(r"36001405[0-9a-f]{25}", wwid), wwid
    assert data["attachment"]["multipath_id"] == wwid
    assert data["mapper_exists"]
    assert data["mapper_realpath"] == data["path_realpath"]
    assert data["dm_name"] is not None, "no dm device with uuid mpath-<wwid>"
    assert len(data["dm_slaves"]) == 2, data["multipath_ll"]
    assert len(data["sessions_attached"]) == 2
    portals = " ".join(data["sessions_attached"])
    assert "127.0.0.2:3260" in portals and "127.0.0.3:3260" in portals


def test_multipath_io(run: GuestRun) -> None:
    """Data written with O_DIRECT through the dm device reads back."""
    assert len(run.case_ok("iscsi_multipath")["io_sha256"]) == 64


def test_multipath_detach_leaves_nothing(run: GuestRun) -> None:
    """After disconnect: no session, no dm device, no SCSI disk."""
    data = run.case_ok("iscsi_multipath")
    assert data["after"] == {
        "sessions": [],
        "dm_devices": {},
        "sd_devices": [],
    }
    assert not data["mapper_exists_after"]


def test_chap_attach_detach(run: GuestRun) -> None:
    """The right CHAP credentials log in, carry I/O, and log out clean."""
    data = run.case_ok("iscsi_chap")
    assert data["attachment"]["path"].startswith("/dev/sd")
    assert len(data["sessions_attached"]) == 1
    assert len(data["io_sha256"]) == 64
    assert data["after"] == {
        "sessions": [],
        "dm_devices": {},
        "sd_devices": [],
    }


def test_chap_wrong_fails_clean(run: GuestRun) -> None:
    """Wrong CHAP credentials fail the connect and leave nothing behind."""
    data = run.case_ok("iscsi_chap_wrong")
    assert "error_class" in data, "connect with a wrong secret succeeded"
    assert data["after"] == {
        "sessions": [],
        "dm_devices": {},
        "sd_devices": [],
    }
    assert data["node_records"] == []


def test_no_secret_in_guest_logs(run: GuestRun) -> None:
    """Neither CHAP secret shows up on the console or in os-brick's log."""
    brick_log = run.lab_dir / "artifacts" / "brick.log"
    assert brick_log.exists(), "os-brick's log was not saved"
    texts = [run.console, brick_log.read_text(errors="replace")]
    # Only worth something if os-brick logged the CHAP set-up at all.
    assert "node.session.auth.password" in texts[1]
    for secret in CHAP_SECRETS:
        for text in texts:
            assert secret not in text
