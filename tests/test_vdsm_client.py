"""vdsm's own client library against the agent: a documented manual check.

Runs ``contrib/vdsm-client-check.py`` (see its docstring) against a TLS
agent when ``VDSM_SRC`` names a vdsm source tree.  CI has no network to
fetch vdsm, so without it the test is skipped; run it by hand with::

    git clone https://github.com/oVirt/vdsm /tmp/vdsm
    VDSM_SRC=/tmp/vdsm .venv/bin/pytest tests/test_vdsm_client.py
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pki import ENGINE, start_tls_agent

CHECK = Path(__file__).resolve().parent.parent / "contrib"
CHECK = CHECK / "vdsm-client-check.py"
VDSM_SRC = os.environ.get("VDSM_SRC", "")

pytestmark = [
    pytest.mark.skipif(
        not VDSM_SRC, reason="VDSM_SRC (a vdsm source tree) is not set"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("decorator") is None,
        reason="vdsm's client needs 'decorator' (pip install -e .[vdsm])",
    ),
]


def test_unmodified_vdsm_client(agent_factory: Any, pki: Any) -> None:
    tls = start_tls_agent(agent_factory, pki, tls_allowed_subjects=[ENGINE])
    creds = pki.client(ENGINE)
    run = subprocess.run(
        [
            sys.executable,
            str(CHECK),
            VDSM_SRC,
            "--port",
            str(tls.port),
            "--cert",
            creds.cert,
            "--key",
            creds.key,
            "--ca",
            creds.ca,
            "--timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(run.stdout, run.stderr)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    for name in (
        "Host.ping",
        "Host.getCapabilities",
        "ManagedVolume.attach_volume",
        "ManagedVolume.attach_volume again (idempotent)",
        "ManagedVolume.volumes_info",
        "event on jms.queue.events after losetup -d",
        "ManagedVolume.detach_volume",
    ):
        assert any(line.startswith(f"ok   {name}:") for line in lines), name
    assert lines[-1] == "all steps passed"
    # Every frame the client sent was taken as it is.
    log = tls.agent.log()
    assert "speaks STOMP" in log
    assert "bad STOMP frame" not in log
    assert "no subscription there" not in log
