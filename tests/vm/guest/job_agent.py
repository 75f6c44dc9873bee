"""Guest job: the real hostagentd attaching real transports.

The agent runs with a config file and is driven over its Unix socket
with ``hostagent.client.Client`` (and ``hostagent-client`` for
capabilities).  Cases: agent_start, agent_capabilities,
agent_iscsi_multipath, agent_iscsi_chap, agent_iscsi_chap_wrong,
agent_iscsi_reattach, agent_nvme, agent_nfs, agent_aoe, agent_stop.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import labguest as g

CHAP = ("agent-user", "agent-secret-8642")
# Attached nodes get these for qemu ([storage] device_owner/group/mode).
OWNER = 65534
MODE = "0640"
RULES = "/run/udev/rules.d"
WRONG = "agent-wrong-9753"


def node_state(path: str) -> list[int]:
    """uid, gid and permission bits of the node ``path`` leads to."""
    st = os.stat(os.path.realpath(path))
    return [st.st_uid, st.st_gid, st.st_mode & 0o7777]


def agent_rules() -> list[str]:
    """The agent's udev rules in /run/udev/rules.d."""
    if not os.path.isdir(RULES):
        return []
    return sorted(n for n in os.listdir(RULES) if "hostagent" in n)


def file_sha(path: Path | str, offset: int = 1 << 20) -> str:
    """sha256 of the MiB at ``offset`` of a target's backing file.

    ``io_check`` writes its random MiB there: equal digests mean the
    data written through the agent's path reached this file.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        return hashlib.sha256(f.read(1 << 20)).hexdigest()


def node_records() -> list[str]:
    """Lines of ``iscsiadm -m node``: the node records left."""
    return g.sh("iscsiadm", "-m", "node", check=False).stdout.splitlines()


def io_within(path: str, timeout: float) -> str:
    """``io_check`` that gives up after ``timeout`` seconds.

    A path that lost its transport can block I/O for a long time; the
    case then records that instead of hanging the whole job.
    """
    box: dict[str, str] = {}

    def run() -> None:
        try:
            box["sha"] = g.io_check(path)
        except Exception as exc:
            box["error"] = repr(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f"blocked for more than {timeout}s"
    return box.get("sha") or box.get("error", "?")


def path_failed() -> bool:
    """Whether multipathd shows a path failed (dm) or faulty (checker)."""
    paths = g.sh("multipathd", "show", "paths").stdout
    return "failed" in paths or "faulty" in paths


def case_capabilities(agent: g.Agent) -> None:
    """Host.getCapabilities through hostagent-client."""
    with g.Case("agent_capabilities") as case:
        proc = agent.cli("Host", "getCapabilities")
        case.data["cli_status"] = proc.returncode
        caps = json.loads(proc.stdout)
        case.data["capabilities"] = caps
        initiator = Path("/etc/iscsi/initiatorname.iscsi").read_text()
        case.data["initiator_file"] = initiator.strip().split("=", 1)[1]
        case.data["hostnqn_file"] = (
            Path("/etc/nvme/hostnqn").read_text().strip()
        )
        with agent.client() as c:
            case.data["ping"] = c.call("Host.ping")


def case_iscsi_multipath(agent: g.Agent) -> None:
    """Attach over two portals, lose one, detach: nothing left."""
    with g.Case("agent_iscsi_multipath") as case:
        target = g.lab_lun("agent-mpath")
        conn_info = target.connection_info(multipath=True)
        vol_id = g.new_vol_id()
        case.data["vol_id"] = vol_id
        with agent.client() as c:
            with case.step("attach"):
                result = c.call(
                    "ManagedVolume.attach_volume",
                    {"vol_id": vol_id, "connection_info": conn_info},
                )
            g.note_multipath_attach(case, c, vol_id, result, paths=2)
            case.data["sessions_attached"] = g.iscsi_sessions()
            case.data["dm_state"] = node_state(result["path"])
            case.data["rules"] = agent_rules()
            with case.step("udev_change"):
                # udev's own rules put root:disk back on an event; the
                # agent's rule must win.
                g.sh(
                    "udevadm", "trigger", "--action=change", "--settle",
                    os.path.realpath(result["path"]),
                )  # fmt: skip
                case.data["dm_state_changed"] = node_state(result["path"])
            with case.step("io"):
                case.data["io"] = io_within(result["path"], 60)

            with case.step("lose_portal"):
                target.remove_portal("127.0.0.3:3260")
                # multipathd's checker marks the path failed once the
                # session's connection drops.
                try:
                    g.wait_for(
                        path_failed,
                        timeout=60,
                        what="multipathd to fail the lost path",
                    )
                    case.data["path_failed_seen"] = True
                except TimeoutError:
                    case.data["path_failed_seen"] = False
            case.data["paths_one_lost"] = g.sh(
                "multipathd", "show", "paths"
            ).stdout
            case.data["info_one_lost"] = g.volumes_info(c, vol_id)
            with case.step("io_one_lost"):
                case.data["io_one_lost"] = io_within(result["path"], 60)

            with case.step("detach"):
                case.data["detach"] = c.call(
                    "ManagedVolume.detach_volume", [vol_id]
                )
            case.data["info_after"] = g.volumes_info(c, vol_id)
        case.data["after"] = g.iscsi_leftovers()
        case.data["links_after"] = g.managed_links(agent)
        case.data["node_records_after"] = node_records()
        case.data["rules_after"] = agent_rules()


def case_iscsi_chap(agent: g.Agent, initiator: str) -> None:
    """CHAP: right secret attaches; a wrong one is 926, nothing left."""
    from hostagent.client import RpcError

    target = g.LioIscsiTarget(
        "iqn.2003-01.org.lab:agent-chap",
        g.backing_file("agent-chap.img"),
        ["127.0.0.2:3260"],
        acl=initiator,
        chap=CHAP,
        name="agentchap",
    )

    def conn_info(password: str) -> dict[str, Any]:
        return target.connection_info(
            multipath=False, chap=(CHAP[0], password)
        )

    with g.Case("agent_iscsi_chap") as case, agent.client() as c:
        vol_id = g.new_vol_id()
        with case.step("attach"):
            result = c.call(
                "ManagedVolume.attach_volume", [vol_id, conn_info(CHAP[1])]
            )
        # One portal, but the agent runs os-brick with multipath on, so
        # the path is still a dm multipath device (with one path).
        g.note_multipath_attach(case, c, vol_id, result, paths=1)
        case.data["sessions_attached"] = g.iscsi_sessions()
        with case.step("io"):
            case.data["io"] = io_within(result["path"], 60)
        with case.step("detach"):
            c.call("ManagedVolume.detach_volume", [vol_id])
        case.data["info_after"] = g.volumes_info(c, vol_id)
        case.data["after"] = g.iscsi_leftovers()
        case.data["links_after"] = g.managed_links(agent)
        case.data["node_records_after"] = node_records()

    with g.Case("agent_iscsi_chap_wrong") as case, agent.client() as c:
        vol_id = g.new_vol_id()
        with case.step("attach"):
            try:
                case.data["result"] = c.call(
                    "ManagedVolume.attach_volume", [vol_id, conn_info(WRONG)]
                )
            except RpcError as exc:
                case.data["error"] = {
                    "code": exc.code,
                    "message": exc.message,
                    "data": exc.data,
                }
        case.data["info_after"] = g.volumes_info(c, vol_id)
        case.data["all_volumes"] = c.call("ManagedVolume.volumes_info")
        case.data["after"] = g.iscsi_leftovers()
        case.data["node_records_after"] = node_records()
        case.data["links_after"] = g.managed_links(agent)


def case_iscsi_reattach(agent: g.Agent) -> None:
    """Re-attach after an agent restart and a logout (vdsm issue 433).

    The row outlives the session: the same-info re-attach must not
    answer with the dead path, but log in again and return a live one.
    """
    target = g.LioIscsiTarget(
        "iqn.2003-01.org.lab:agent-reattach",
        g.backing_file("agent-reattach.img"),
        ["127.0.0.2:3260"],
        name="agentre",
    )
    conn_info = target.connection_info(multipath=False)
    with g.Case("agent_iscsi_reattach") as case:
        vol_id = g.new_vol_id()
        with agent.client() as c, case.step("attach"):
            result = c.call("ManagedVolume.attach_volume", [vol_id, conn_info])
        case.data["result"] = result
        case.data["dm_before"] = os.path.realpath(result["path"])
        with case.step("restart_and_logout"):
            agent.stop()
            g.sh(
                "iscsiadm",
                *("-m", "node", "-T", target.iqn, "-p", "127.0.0.2:3260"),
                "-u",
            )
            case.data["sessions_gone"] = g.iscsi_sessions()
            agent.start()
        with agent.client() as c:
            case.data["info_gone"] = g.volumes_info(c, vol_id)
            case.data["links_gone"] = g.managed_links(agent)
            with case.step("reattach"):
                again = c.call(
                    "ManagedVolume.attach_volume", [vol_id, conn_info]
                )
            case.data["reattach"] = again
            wwid = again["attachment"].get("multipath_id")
            dm = g.dm_by_uuid(f"mpath-{wwid}")
            case.data["dm_after"] = dm
            case.data["dm_slaves_after"] = g.wait_slaves(dm, 1)
            case.data["managed_realpath"] = os.path.realpath(
                again["managed_path"]
            )
            case.data["sessions_after"] = g.iscsi_sessions()
            case.data["info_after"] = g.volumes_info(c, vol_id)
            with case.step("detach"):
                c.call("ManagedVolume.detach_volume", [vol_id])
        case.data["again_logged"] = (
            f"volume {vol_id}: its recorded device"
            in agent.log_path.read_text(errors="replace")
        )
        case.data["after"] = g.iscsi_leftovers()
        case.data["links_after"] = g.managed_links(agent)


def case_nvme(agent: g.Agent) -> None:
    """NVMe/TCP through the agent's nvmeof connector."""
    with g.Case("agent_nvme") as case, agent.client() as c:
        backing = g.backing_file("agent-nvme.img")
        target = g.NvmetTcpTarget("nqn.2014-08.org.lab:agent-nvme", backing)
        case.data["ns_uuid"] = target.ns_uuid
        vol_id = g.new_vol_id()
        conn_info = target.connection_info()
        with case.step("attach"):
            result = c.call("ManagedVolume.attach_volume", [vol_id, conn_info])
        case.data["result"] = result
        case.data["info"] = g.volumes_info(c, vol_id)
        case.data["controllers"] = g.nvme_controllers()
        # The namespace's uuid as the kernel reports it: the path is the
        # target's namespace, not some other NVMe disk.
        uuid_file = Path("/sys/block") / Path(result["path"]).name / "uuid"
        case.data["path_uuid"] = (
            uuid_file.read_text().strip() if uuid_file.exists() else None
        )
        with case.step("io"):
            case.data["io"] = io_within(result["path"], 60)
        case.data["backing_sha"] = file_sha(backing)
        with case.step("detach"):
            c.call("ManagedVolume.detach_volume", [vol_id])
        case.data["info_after"] = g.volumes_info(c, vol_id)
        case.data["controllers_after"] = g.nvme_controllers()
        case.data["path_exists_after"] = os.path.exists(result["path"])
        case.data["links_after"] = g.managed_links(agent)


def case_nfs(agent: g.Agent, share: str) -> None:
    """NFS through the agent's nfs connector, two volumes on one share."""
    with g.Case("agent_nfs") as case, agent.client() as c:
        export = Path(share.split(":", 1)[1])

        def mounts() -> list[str]:
            return [
                m
                for m in Path("/proc/mounts").read_text().splitlines()
                if m.startswith(share)
            ]

        def conn_info(name: str) -> dict[str, Any]:
            with open(export / name, "wb") as f:
                f.truncate(64 << 20)
            return {
                "driver_volume_type": "nfs",
                # v3: see job_nfs.py for why the guest cannot serve v4.
                "data": {
                    "export": share,
                    "name": name,
                    "options": "-o vers=3",
                },
            }

        vol_id, other = g.new_vol_id(), g.new_vol_id()
        with case.step("attach"):
            result = c.call(
                "ManagedVolume.attach_volume",
                [vol_id, conn_info("volume-agent.img")],
            )
        case.data["result"] = result
        case.data["info"] = g.volumes_info(c, vol_id)
        # Where the agent mounted the share (field 2 of /proc/mounts).
        case.data["mount_points"] = [m.split()[1] for m in mounts()]
        with case.step("io"):
            case.data["io"] = io_within(result["path"], 60)
        case.data["server_sha"] = file_sha(export / "volume-agent.img")
        with case.step("attach_second"):
            c.call(
                "ManagedVolume.attach_volume",
                [other, conn_info("volume-other.img")],
            )
        with case.step("detach"):
            c.call("ManagedVolume.detach_volume", [vol_id])
        # The share still carries the other volume: it must stay mounted.
        case.data["nfs_mounts_while_other"] = mounts()
        case.data["other_info"] = g.volumes_info(c, other)
        with case.step("detach_second"):
            c.call("ManagedVolume.detach_volume", [other])
        case.data["info_after"] = [
            *g.volumes_info(c, vol_id),
            *g.volumes_info(c, other),
        ]
        case.data["nfs_mounts_after"] = mounts()
        case.data["links_after"] = g.managed_links(agent)


def case_aoe(agent: g.Agent) -> None:
    """AoE through the agent's aoe connector, when it has one."""
    with g.Case("agent_aoe") as case, agent.client() as c:
        # main() enables aoe (it is opt-in): without it the attach below
        # fails with 2009, and so does the case.
        case.data["drivers"] = c.call("Host.getCapabilities")["drivers"]
        backing = g.backing_file("agent-aoe.img")
        vblade = g.start_vblade(backing, shelf=2, slot=3)
        try:
            vol_id = g.new_vol_id()
            conn_info = {
                "driver_volume_type": "aoe",
                "data": {"target_shelf": 2, "target_lun": 3},
            }
            with case.step("attach"):
                result = c.call(
                    "ManagedVolume.attach_volume", [vol_id, conn_info]
                )
            case.data["result"] = result
            case.data["info"] = g.volumes_info(c, vol_id)
            with case.step("io"):
                case.data["io"] = io_within(result["path"], 60)
            case.data["backing_sha"] = file_sha(backing)
            with case.step("detach"):
                c.call("ManagedVolume.detach_volume", [vol_id])
            # vblade still serves the target here: the device is gone
            # only because the agent flushed it out of the driver.
            case.data["vblade_running"] = vblade.poll() is None
            case.data["path_exists_after"] = os.path.exists(result["path"])
            case.data["sysfs_after"] = os.path.exists("/sys/block/etherd!e2.3")
            case.data["aoe_stat_after"] = g.sh("aoe-stat", check=False).stdout
            case.data["info_after"] = g.volumes_info(c, vol_id)
            case.data["links_after"] = g.managed_links(agent)
        finally:
            vblade.terminate()
            vblade.wait(timeout=10)


def main() -> None:
    """Start the host side and the agent, then run the cases."""
    # AoE is opt-in (brick.drivers); the lab has the aoe driver and vblade.
    agent = g.Agent(
        extra_brick='drivers = ["iscsi", "fibre_channel", "nvmeof", '
        '"rbd", "nfs", "local", "aoe"]\n',
        extra_storage=f'device_owner = "{OWNER}"\n'
        f'device_group = "{OWNER}"\ndevice_mode = "{MODE}"\n',
    )
    initiator = ""
    share = ""
    with g.Case("agent_start") as case:
        with case.step("iscsid"):
            initiator = g.start_iscsid()
            g.set_iscsi_timeouts()
        with case.step("multipathd"):
            g.start_multipathd()
        case.data["hostnqn"] = g.nvme_host_ids()
        with case.step("nfs_server"):
            share = g.start_nfs_server()
        with case.step("hostagentd"):
            case.data["start_seconds"] = agent.start()
    case_capabilities(agent)
    case_iscsi_multipath(agent)
    case_iscsi_chap(agent, initiator)
    case_iscsi_reattach(agent)
    case_nvme(agent)
    case_nfs(agent, share)
    case_aoe(agent)
    with g.Case("agent_stop") as case:
        case.data["exit_status"] = agent.stop()
    g.save_artifacts(str(agent.log_path))


if __name__ == "__main__":
    main()
