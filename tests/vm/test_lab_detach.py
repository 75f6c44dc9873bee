"""Detach that always finishes, safely, on real iSCSI + dm-multipath.

One guest (tests/vm/guest/job_detach.py): the agent with the
documented multipath drop-in; partition maps the host made from a
partition table on the LUN, removed by a detach retried in the
background after its first disconnect failed; a device held by a
process (932, then force); the target gone with a writer's I/O in
flight.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from lab import GuestRun
from labresults import NOTHING, only

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def run(lab_job: Callable[..., GuestRun]) -> GuestRun:
    """One guest run of tests/vm/guest/job_detach.py."""
    return lab_job("job_detach.py")


def test_multipath_settings_reported(run: GuestRun) -> None:
    """With the contrib drop-in, check-config and getCapabilities agree:
    friendly names off, bounded queueing, flush on last delete."""
    data = run.case_ok("detach_start")
    check = data["check_config"]
    assert check["status"] == 0, check
    assert "multipath settings (multipathd show config)" in check["stdout"]
    assert "multipath WARNING" not in check["stdout"], check["stdout"]
    settings = data["multipath_settings"]
    assert settings["user_friendly_names"] == "no"
    assert settings["no_path_retry"] == "16"
    assert settings["flush_on_last_del"] in ("yes", "always")
    assert settings["problems"] == []


def test_failed_detach_is_retried(run: GuestRun) -> None:
    """926 keeps the row detaching (attempts, last_error); the retry in
    the background clears it and sends the detached event."""
    data = run.case_ok("detach_partitions")
    assert data["error"]["code"] == 926
    info = only(data["info_failed"])
    assert info["state"] == "detaching"
    assert info["attempts"] == 1
    assert "ProcessExecutionError" in info["last_error"]
    event = data["event"]
    assert event is not None, "no ManagedVolume.changed (detached) came"
    assert event["params"]["detached"] is True
    assert data["info_after"] == []
    assert data["after"] == NOTHING
    assert data["links_after"] == []


def test_held_device_refused_naming_the_holder(run: GuestRun) -> None:
    """932 with the holder's pid; nothing torn down."""
    data = run.case_ok("detach_held")
    error = data["error"]
    assert error["code"] == 932
    assert str(data["holder_pid"]) in error["message"]
    pids = [p["pid"] for p in error["data"]["holders"]["processes"]]
    assert pids == [data["holder_pid"]]
    assert only(data["info_refused"])["state"] == "attached"
    assert len(data["links_refused"]) == 1
    assert len(data["sessions_refused"]) == 2


def test_force_detaches_held_device(run: GuestRun) -> None:
    """force logs out at once; the map goes when the holder exits."""
    data = run.case_ok("detach_held")
    assert data["info_forced"] == []
    assert data["sessions_forced"] == []
    assert data["after"] == NOTHING
    assert data["links_after"] == []


def test_partition_maps_removed(run: GuestRun) -> None:
    """kpartx's maps on the LUN go with the (retried) detach."""
    data = run.case_ok("detach_partitions")
    parts = [u for u in data["dm_with_parts"].values() if u.startswith("part")]
    assert len(parts) == 2, data["dm_with_parts"]
    assert data["info_after"] == []
    assert data["after"] == NOTHING
    assert data["links_after"] == []


def test_lost_target_detach_is_bounded(run: GuestRun) -> None:
    """Target gone, I/O in flight: 932 for the writer, then force
    finishes within the bound, the agent answering all along."""
    data = run.case_ok("detach_lost")
    assert "queue_if_no_path" in data["table"]
    assert data["writer_running"], "the writer was not blocked"
    assert data["error"]["code"] == 932
    assert (
        data["error"]["data"]["holders"]["processes"][0]["pid"]
        == (data["writer_pid"])
    )
    assert data["force_error"] is None
    assert data["force_seconds"] < data["bound"]
    assert data["pings"] >= 3
    # Round trips seen by a guest thread under TCG: seconds at most,
    # never the detach's whole length.
    assert data["ping_max"] < min(10, data["force_seconds"]), data
    assert data["writer_status"] not in (None, 0)
    assert data["info_after"] == []
    assert data["after"] == NOTHING
    assert data["links_after"] == []


def test_agent_stops_cleanly(run: GuestRun) -> None:
    """SIGTERM stops the agent with status 0 after all that."""
    assert run.case_ok("detach_stop")["exit_status"] == 0
