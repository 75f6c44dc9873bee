"""hostagentd under a real systemd (PID 1) in the qemu lab.

One guest (tests/vm/guest/job_systemd.py, booted by
guest/init-systemd.sh) installs the agent as hostagent.spec does and
runs it as an operator would: socket activation, an iSCSI multipath
attach/detach through the socket, the journal's structured fields, the
watchdog restarting a hung daemon, and a clean ``systemctl stop``, all
under the unit's hardening as shipped.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from lab import GuestRun
from labresults import NOTHING, assert_multipath_attach
from support import ATTACH, DETACH

# The guest boots in the first test's setup: allow for it.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]

SOCKET = "/run/hostagent/hostagent.sock"
# Bits of CapBnd (capability(7) numbers).
CAP_SYS_ADMIN = 21
CAP_SYS_BOOT = 22
CAP_SYS_PTRACE = 19


@pytest.fixture(scope="module")
def run(lab_job: Callable[..., GuestRun]) -> GuestRun:
    """One guest run of tests/vm/guest/job_systemd.py."""
    return lab_job("job_systemd.py", timeout=420)


def test_guest_runs_systemd(run: GuestRun) -> None:
    """PID 1 is systemd, journald runs, no unit failed on the way."""
    data = run.case_ok("sd_boot")
    assert data["pid1"] == "systemd"
    assert data["journald"] == "active"
    assert data["failed_units"] == []
    assert run.status == 0


def test_installed_like_the_package(run: GuestRun) -> None:
    """Units unchanged, enabled (Also= takes the socket), group made,
    tmpfiles modes, iscsid/multipathd running as units."""
    data = run.case_ok("sd_install")
    assert data["units_as_shipped"] is True
    assert data["enabled"] == {
        "hostagent.service": "enabled",
        "hostagent.socket": "enabled",
    }
    assert data["group"].startswith("hostagent:")
    assert data["modes"] == {
        "/run/hostagent": "0o755",
        "/var/lib/hostagent": "0o700",
    }
    assert data["storage_units"] == {
        "iscsid.service": "active",
        "multipathd.service": "active",
    }


def test_socket_activation(run: GuestRun) -> None:
    """The socket listens (0660, group hostagent) with the service down;
    the first connection starts it, and it serves the passed socket."""
    data = run.case_ok("sd_socket_activation")
    assert data["start_status"] == 0
    assert data["socket_unit"] == {
        "ActiveState": "active",
        "SubState": "listening",
    }
    assert data["service_before"] == {"ActiveState": "inactive"}
    assert data["socket_mode"] == "0o660"
    assert data["socket_group"] == "hostagent"
    assert data["ping"] is True
    after = data["service_after"]
    assert after["ActiveState"] == "active"
    assert after["SubState"] == "running"
    assert after["TriggeredBy"] == "hostagent.socket"
    assert after["StatusText"].startswith(f"serving on unix:{SOCKET}")
    assert (
        f"listening on unix:{SOCKET} (socket activation)"
        in (data["agent_log"])
    )


def test_hardening_applied(run: GuestRun) -> None:
    """The running daemon is under the unit's seccomp filter and
    capability bounding set (CAP_SYS_BOOT gone, CAP_SYS_ADMIN kept)."""
    status = run.case_ok("sd_socket_activation")["main_status"]
    assert status["Seccomp"] == "2"
    bounding = int(status["CapBnd"], 16)
    assert not bounding & (1 << CAP_SYS_BOOT)
    assert not bounding & (1 << CAP_SYS_PTRACE)
    assert bounding & (1 << CAP_SYS_ADMIN)
    assert status["NoNewPrivs"] == "0"


def test_iscsi_attach_detach(run: GuestRun) -> None:
    """Through the socket-activated agent: /dev/mapper/<wwid> over two
    paths, I/O, then detach leaves no session, dm, sd or link."""
    data = run.case_ok("sd_iscsi")
    assert_multipath_attach(data, paths=2)
    (entry,) = data["info"]
    assert entry["exists"] is True and entry["state"] == "attached"
    assert len(data["io"]) == 64
    assert data["after"] == NOTHING
    assert data["link_after"] is False


def test_journal_fields(run: GuestRun) -> None:
    """``journalctl VOL_ID=<id>`` finds the attach and detach lines of
    hostagent.service, with METHOD, PEER_UID and REQUEST_ID."""
    vol_id = run.case_ok("sd_iscsi")["vol_id"]
    entries = run.case_ok("sd_journal")["entries"]
    assert entries
    for e in entries:
        assert e["VOL_ID"] == vol_id
        assert e["_SYSTEMD_UNIT"] == "hostagent.service"
        assert e["SYSLOG_IDENTIFIER"] == "hostagentd"
    calls = {e["METHOD"]: e for e in entries if e["METHOD"]}
    for method in (ATTACH, DETACH):
        assert method in calls, sorted(calls)
        assert calls[method]["PEER_UID"] == "0"
        assert calls[method]["REQUEST_ID"]
        assert vol_id in calls[method]["MESSAGE"]
    messages = [e["MESSAGE"] for e in entries]
    assert any(m.startswith(f"attached volume {vol_id}") for m in messages)
    assert any(m.startswith(f"detached volume {vol_id}") for m in messages)


def test_watchdog_restarts_hung_daemon(run: GuestRun) -> None:
    """SIGSTOP the main pid: systemd's watchdog kills it and restarts
    the service; the new daemon answers on the same socket."""
    data = run.case_ok("sd_watchdog")
    before, after = data["before"], data["after"]
    assert before["WatchdogUSec"] == "10s"
    assert data["ping_before"] is True
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert after["MainPID"] != before["MainPID"]
    assert data["old_pid_gone"] is True
    assert data["ping_after"] is True
    initiator = run.case_ok("sd_install")["initiator"]
    assert data["initiator_after"] == initiator
    lines = data["systemd_lines"]
    assert any("Watchdog timeout" in line for line in lines), lines
    assert any("result 'watchdog'" in line for line in lines), lines


def test_stop_is_clean(run: GuestRun) -> None:
    """``systemctl stop``: exit 0, no process left, the socket stays
    listening; stopping the socket removes its file."""
    data = run.case_ok("sd_stop")
    assert data["stop_status"] == 0
    service = data["service"]
    assert service["ActiveState"] == "inactive"
    assert service["Result"] == "success"
    assert service["ExecMainCode"] == "1"  # CLD_EXITED
    assert service["ExecMainStatus"] == "0"
    assert service["MainPID"] == "0"
    assert service["ControlGroup"] == ""
    assert data["pid_gone"] is True
    assert data["processes"] == []
    assert data["socket_unit"] == {
        "ActiveState": "active",
        "SubState": "listening",
    }
    assert data["socket_exists"] is True
    # The daemon's own shutdown ran to its end.  Not necessarily its
    # last line: an os-brick import still running in a worker thread
    # (started at start-up, off the READY path) finishes before the
    # process exits and logs its own lines.
    lines = data["agent_lines"]
    assert "stopped" in lines, lines
    assert lines.index("shutting down; 0 request(s) in flight") < (
        lines.index("stopped")
    )
    assert data["socket_stop_status"] == 0
    assert data["socket_exists_after_socket_stop"] is False
