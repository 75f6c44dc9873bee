"""At info level the log is the agent's own: library noise goes to debug.

A dead-portal iSCSI attach makes os-brick really run iscsiadm against
127.0.0.1:1 (no iscsid here, so discovery fails at once): os-brick logs
tracebacks, the agent one line with the error class.  At debug level the
same tracebacks are still there, demoted, not lost.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import Agent, new_vol_id
from support import ATTACH, INFO

DEAD_PORTAL = {
    "driver_volume_type": "iscsi",
    "data": {
        "target_portal": "127.0.0.1:1",
        "target_iqn": "iqn.2026-01.invalid:dead",
        "target_lun": 0,
    },
}


def _attach_dead_portal(agent: Agent) -> str:
    vid = new_vol_id()
    e = agent.error(
        ATTACH,
        {"vol_id": vid, "connection_info": DEAD_PORTAL},
    )
    assert e.code == 926, e.message
    assert e.data["error_class"] == "TargetPortalNotFound"
    assert agent.call(INFO) == []
    return vid


def _started(agent_factory: Any, level: str) -> Agent:
    agent: Agent = agent_factory(level)
    agent.configure(log={"level": level})
    agent.start()
    return agent


@pytest.fixture(params=["info", "debug"])
def level(request: pytest.FixtureRequest) -> str:
    """The agent's log.level."""
    return str(request.param)


def test_dead_portal_attach_logs_no_traceback_at_info(
    agent_factory: Any, level: str
) -> None:
    agent = _started(agent_factory, level)
    vid = _attach_dead_portal(agent)
    agent.call("Host.getCapabilities")
    agent.call("Host.getCapabilities")
    agent.stop()
    log = agent.log()
    # The agent's own account, with the error class, at either level.
    assert re.search(
        r"WARNING hostagent\.api: ManagedVolume\.attach_volume failed: "
        r"926 .*TargetPortalNotFound",
        log,
    ), log
    assert f"volume {vid}: connecting (iscsi)" in log
    # os-brick really ran discovery against the dead portal.
    brick = [ln for ln in log.splitlines() if " os_brick." in ln]
    if level == "info":
        assert "Traceback" not in log, log
        assert "Exception encountered during portal discovery" not in log
        assert "Loading backend" not in log
        assert "hostNQN" not in log
        assert not [ln for ln in brick if ln.split()[2] == "ERROR"], brick
    else:
        # Demoted, not dropped: the tracebacks are at debug.
        assert "Traceback" in log
        assert re.search(
            r"DEBUG os_brick\.initiator\.connectors\.iscsi: Exception "
            r"encountered during portal discovery",
            log,
        ), brick
        assert re.search(r"DEBUG oslo_service\.backend: Loading backend", log)
        assert re.search(
            r"DEBUG os_brick\.initiator\.connectors\.lightos: Current host "
            r"hostNQN",
            log,
        )
