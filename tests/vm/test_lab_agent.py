"""hostagentd in the qemu lab: real attaches driven over its socket.

One guest (tests/vm/guest/job_agent.py) runs the agent with a config
file and drives it with hostagent.client / hostagent-client: iSCSI with
multipath (and a lost portal), CHAP right and wrong, NVMe/TCP, NFS,
AoE (opt-in, enabled in the job's config), and getCapabilities.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from lab import GuestRun
from labresults import NOTHING, assert_multipath_attach, only

# The guest boots in the first test's setup: allow for it.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

SECRETS = ("agent-secret-8642", "agent-wrong-9753")
SHA256 = re.compile(r"[0-9a-f]{64}")
NVME_DISK = re.compile(r"/dev/nvme[0-9]+n[0-9]+")


@pytest.fixture(scope="module")
def run(lab_job: Callable[..., GuestRun]) -> GuestRun:
    """One guest run of tests/vm/guest/job_agent.py."""
    return lab_job("job_agent.py")


def assert_info_matches(data: dict[str, Any]) -> None:
    """volumes_info says attached, exists, at the path attach returned."""
    entry = only(data["info"])
    assert entry["exists"] is True
    assert entry["state"] == "attached"
    assert entry["path"] == data["result"]["path"]


def test_agent_starts(run: GuestRun) -> None:
    """hostagentd starts with a config file and answers on its socket."""
    run.case_ok("agent_start")


def test_iscsi_reattach_after_restart_and_logout(run: GuestRun) -> None:
    """A same-info re-attach of a logged-out LUN logs in again.

    Never success with the dead path: the attach runs again and the
    answer leads to a live multipath device with a path under it.
    """
    data = run.case_ok("agent_iscsi_reattach")
    assert data["sessions_gone"] == []
    gone = only(data["info_gone"])
    assert gone["state"] == "attached"
    assert gone["this_boot"] is True
    assert data["again_logged"] is True
    again = data["reattach"]
    assert again["path"] == data["result"]["path"]
    assert data["dm_after"] is not None
    assert len(data["dm_slaves_after"]) == 1
    assert data["managed_realpath"] == f"/dev/{data['dm_after']}"
    assert len(data["sessions_after"]) == 1
    entry = only(data["info_after"])
    assert (entry["exists"], entry["last_error"]) == (True, None)
    assert data["after"] == NOTHING
    assert data["links_after"] == []


def test_capabilities(run: GuestRun) -> None:
    """getCapabilities (via hostagent-client) has initiator, nqn, mpath."""
    data = run.case_ok("agent_capabilities")
    assert data["cli_status"] == 0
    assert data["ping"] is True
    info = data["capabilities"]["connector_info"]
    assert info["initiator"] == data["initiator_file"]
    assert info["nqn"] == data["hostnqn_file"]
    assert info["multipath"] is True


def test_iscsi_multipath_attach(run: GuestRun) -> None:
    """path is /dev/mapper/<wwid>; dm uuid mpath-<wwid>; two paths."""
    data = run.case_ok("agent_iscsi_multipath")
    assert_multipath_attach(data, paths=2)
    assert len(data["sessions_attached"]) == 2
    assert_info_matches(data)


def test_iscsi_multipath_dm_node_owned_for_qemu(run: GuestRun) -> None:
    """The dm node gets [storage] device_owner/group/mode, kept by the
    udev rule across a change event; detach removes the rule."""
    data = run.case_ok("agent_iscsi_multipath")
    assert data["dm_state"] == [65534, 65534, 0o640]
    assert data["dm_state_changed"] == [65534, 65534, 0o640]
    assert data["rules"] == [f"99-hostagent-managed_{data['vol_id']}.rules"]
    assert data["rules_after"] == []


def test_iscsi_multipath_io(run: GuestRun) -> None:
    """O_DIRECT I/O through the agent's path reads back."""
    assert SHA256.fullmatch(run.case_ok("agent_iscsi_multipath")["io"])


def test_iscsi_multipath_survives_lost_portal(run: GuestRun) -> None:
    """One portal gone: the path fails, exists stays true, I/O goes on."""
    data = run.case_ok("agent_iscsi_multipath")
    assert data["path_failed_seen"], data["paths_one_lost"]
    assert only(data["info_one_lost"])["exists"] is True
    assert SHA256.fullmatch(data["io_one_lost"]), data["io_one_lost"]


def test_iscsi_multipath_detach_leaves_nothing(run: GuestRun) -> None:
    """After detach: no row, link, session, dm device or node record."""
    data = run.case_ok("agent_iscsi_multipath")
    assert data["info_after"] == []
    assert data["after"] == NOTHING
    assert data["links_after"] == []
    assert data["node_records_after"] == []


def test_iscsi_chap(run: GuestRun) -> None:
    """The right CHAP secret attaches at /dev/mapper/<wwid>, carries I/O."""
    data = run.case_ok("agent_iscsi_chap")
    # One portal, but multipath is on in the agent: a one-path dm device.
    assert_multipath_attach(data, paths=1)
    assert_info_matches(data)
    assert len(data["sessions_attached"]) == 1
    assert SHA256.fullmatch(data["io"])


def test_iscsi_chap_detach_leaves_nothing(run: GuestRun) -> None:
    """After a CHAP detach: no row, link, session, dm/sd or node record."""
    data = run.case_ok("agent_iscsi_chap")
    assert data["info_after"] == []
    assert data["after"] == NOTHING
    assert data["links_after"] == []
    # Only this target's: os-brick's sendtargets discovery (one portal,
    # multipath on) also records the portal's other targets and leaves
    # them (tests/vm/README.md, known limits).
    assert not [r for r in data["node_records_after"] if "agent-chap" in r]


def test_iscsi_chap_wrong_is_926(run: GuestRun) -> None:
    """A wrong CHAP secret gives 926 and leaves nothing behind."""
    data = run.case_ok("agent_iscsi_chap_wrong")
    assert "result" not in data, "attach with a wrong secret succeeded"
    assert data["error"]["code"] == 926
    assert data["info_after"] == []
    assert data["all_volumes"] == []
    assert data["after"] == NOTHING
    assert data["links_after"] == []
    assert not [r for r in data["node_records_after"] if "agent-chap" in r]


def test_no_secret_in_guest_logs(run: GuestRun) -> None:
    """No CHAP secret in the console, the agent's log or the error."""
    agent_log = run.lab_dir / "artifacts" / "hostagentd.log"
    assert agent_log.exists(), "the agent's log was not saved"
    log = agent_log.read_text(errors="replace")
    # Only worth something if the agent (os-brick, at debug level) logged
    # the CHAP set-up at all.
    assert "node.session.auth.password" in log
    error = run.case_ok("agent_iscsi_chap_wrong").get("error")
    texts = [run.console, log, repr(error)]
    for secret in SECRETS:
        for text in texts:
            assert secret not in text


def test_nvme(run: GuestRun) -> None:
    """NVMe/TCP: attach, exists, I/O, detach, no controller left."""
    data = run.case_ok("agent_nvme")
    assert NVME_DISK.fullmatch(data["result"]["path"]), data["result"]
    # The target's namespace, by the uuid the job gave it.
    assert data["path_uuid"] == data["ns_uuid"]
    assert_info_matches(data)
    assert len(data["controllers"]) == 1
    assert SHA256.fullmatch(data["io"])
    assert data["io"] == data["backing_sha"]
    assert data["info_after"] == []
    assert data["controllers_after"] == []
    assert not data["path_exists_after"]
    assert data["links_after"] == []


def test_nfs(run: GuestRun) -> None:
    """NFS: the volume file on the mounted share, exists, I/O, detach."""
    data = run.case_ok("agent_nfs")
    assert len(data["mount_points"]) == 1, data["mount_points"]
    mount_point = data["mount_points"][0]
    assert data["result"]["path"] == f"{mount_point}/volume-agent.img"
    assert_info_matches(data)
    assert SHA256.fullmatch(data["io"])
    # The data reached the file in the server's export.
    assert data["io"] == data["server_sha"]
    assert data["info_after"] == []
    assert data["links_after"] == []


def test_nfs_share_stays_while_another_volume_uses_it(run: GuestRun) -> None:
    """Detaching one of two volumes on a share keeps the share mounted."""
    data = run.case_ok("agent_nfs")
    assert len(data["nfs_mounts_while_other"]) == 1
    assert only(data["other_info"])["exists"] is True


def test_nfs_detach_unmounts_share(run: GuestRun) -> None:
    """After detaching the share's last volume, the share is unmounted."""
    assert run.case_ok("agent_nfs")["nfs_mounts_after"] == []


def test_aoe(run: GuestRun) -> None:
    """AoE: vblade's export attached as /dev/etherd/e2.3, carries I/O."""
    data = run.case_ok("agent_aoe")
    assert "aoe" in data["drivers"]
    assert data["result"]["path"] == "/dev/etherd/e2.3"
    assert_info_matches(data)
    assert SHA256.fullmatch(data["io"])
    assert data["io"] == data["backing_sha"]


def test_aoe_detach_flushes_device(run: GuestRun) -> None:
    """Detach flushes e2.3 out of the driver while vblade still serves it."""
    data = run.case_ok("agent_aoe")
    assert data["vblade_running"], "vblade died: the check would be moot"
    assert not data["path_exists_after"]
    assert not data["sysfs_after"]
    assert "e2.3" not in data["aoe_stat_after"]
    assert data["info_after"] == []
    assert data["links_after"] == []


def test_agent_stops_cleanly(run: GuestRun) -> None:
    """SIGTERM stops the agent with status 0."""
    assert run.case_ok("agent_stop")["exit_status"] == 0
