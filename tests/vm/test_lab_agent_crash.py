"""Crash mid-attach in the qemu lab, with a real iSCSI session.

tests/vm/guest/job_agent_crash.py SIGKILLs hostagentd (fail point
``attach.after_connect=kill``) after the iSCSI login and before the
database records the attachment, then restarts it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from lab import GuestRun
from labresults import NOTHING

# The guest boots in the first test's setup: allow for it.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

# hostagent/service/reconcile.py's summary line, once per start-up.
SUMMARY = re.compile(r"reconciled (\d+) volume record\(s\) in [0-9.]+ s: (.*)")


@pytest.fixture(scope="module")
def run(lab_job: Callable[..., GuestRun]) -> GuestRun:
    """One guest run of tests/vm/guest/job_agent_crash.py."""
    return lab_job("job_agent_crash.py")


def test_killed_after_login(run: GuestRun) -> None:
    """The fail point killed the agent with both sessions logged in."""
    data = run.case_ok("agent_kill_mid_attach")
    assert data["exit_status"] == -9
    assert data["attach_outcome"] != "returned"
    assert len(data["after_kill"]["sessions"]) == 2


def test_no_session_after_restart(run: GuestRun) -> None:
    """No session or dm device left when the restarted agent first answers.

    Looked at right after the first ping, without waiting: the rollback
    must be done before the agent serves, not after.
    """
    data = run.case_ok("agent_kill_mid_attach")
    assert data["after_restart"] == NOTHING


def test_reconcile_rolled_back_the_attach(run: GuestRun) -> None:
    """The restarted agent's summary: one record, rolled back."""
    lines = run.case_ok("agent_kill_mid_attach")["reconcile_log"]
    summaries = [m for m in map(SUMMARY.search, lines) if m]
    assert len(summaries) == 1, lines
    count, decisions = summaries[0].groups()
    assert count == "1"
    assert decisions == "rolled_back 1", lines


def test_no_stale_row_after_restart(run: GuestRun) -> None:
    """The interrupted attach is rolled back, not left 'attaching'."""
    data = run.case_ok("agent_kill_mid_attach")
    assert data["info_after_restart"] == []
    assert data["links_after_restart"] == []


def test_volume_attaches_again(run: GuestRun) -> None:
    """The next attach of the same volume works (and carries I/O)."""
    data = run.case_ok("agent_kill_mid_attach")
    assert "reattach_error" not in data
    assert len(data["reattach_io"]) == 64


def test_detach_leaves_nothing(run: GuestRun) -> None:
    """A detach after the crash cleans up: no row, session or dm device."""
    data = run.case_ok("agent_kill_mid_attach")
    assert data.get("detach_ok"), data.get("detach_error")
    assert data["info_final"] == []
    assert data["final"] == NOTHING
    assert data["second_exit_status"] == 0
