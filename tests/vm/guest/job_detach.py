"""Guest job: detaches that must finish, safely, on iSCSI + multipath.

The real hostagentd, driven over its socket, with the host multipath
settings the agent documents (contrib/multipath-hostagent.conf in
/etc/multipath/conf.d: maps queue for 80 s with all paths down).
Cases, in this order (the fail point hits the first disconnect only):

- detach_start: iscsid, multipathd with the drop-in, the agent, and
  ``hostagentd --check-config`` / getCapabilities on those settings;
- detach_partitions: a partition table written on the LUN gives the
  host partition maps (udev's kpartx rule); the detach removes them,
  then its disconnect fails (fail point): 926, the row stays
  ``detaching`` with attempts and last_error; the background retry
  removes the map, the paths and the sessions, and a
  ``ManagedVolume.changed`` (detached) arrives;
- detach_held: a process holds the map: 932 naming its pid, nothing
  torn down; ``force`` detaches; the map goes once the holder exits;
- detach_lost: both portals gone with a writer's I/O in flight: 932
  (the writer), then force finishes within the bound while the agent
  keeps answering pings.

Every case ends with no session, dm map or SCSI disk of its LUN left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import labguest as g

REPO = Path(__file__).resolve().parents[3]
DROP_IN = REPO / "contrib" / "multipath-hostagent.conf"
# The bound the issue sets for a detach with the target gone.
LOST_BOUND = 60.0
# The first disconnect of the job fails once (detach_partitions').
FAILPOINTS = "HOSTAGENT_FAILPOINTS"
ONCE = "brick.before_disconnect_volume=1*raise"
# One LIO LUN per case: cases cannot leave each other anything.


def rpc_error(fn: Any) -> dict[str, Any] | None:
    """Run ``fn``; the RpcError it raised as a dict, None if none."""
    from hostagent.client import RpcError

    try:
        fn()
    except RpcError as e:
        return {"code": e.code, "message": e.message, "data": e.data}
    return None


def attach(
    case: g.Case, c: Any, t: g.LioIscsiTarget
) -> tuple[str, dict[str, Any]]:
    """A new volume of ``t`` attached over both portals (the case's
    "attach" step), both paths under its map; its id and the answer."""
    vol_id = g.new_vol_id()
    with case.step("attach"):
        result: dict[str, Any] = c.call(
            "ManagedVolume.attach_volume",
            {"vol_id": vol_id, "connection_info": t.connection_info()},
        )
        wwid = result["attachment"]["multipath_id"]
        g.wait_slaves(g.dm_by_uuid(f"mpath-{wwid}"), 2)
        g.sh("udevadm", "settle", "--timeout=30", check=False)
    return vol_id, result


def no_dm_device() -> bool:
    """No dm device left (one being removed reads EINVAL: not yet)."""
    try:
        return not g.dm_devices()
    except OSError:
        return False


def holder(path: str) -> subprocess.Popen[bytes]:
    """A process that opens ``path`` and keeps it open (a running VM)."""
    proc = subprocess.Popen(
        [
            "python3",
            "-c",
            "import sys, time\n"
            "f = open(sys.argv[1], 'rb')\n"
            "print('open', flush=True)\n"
            "time.sleep(600)\n",
            path,
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # the device is open from here on
    return proc


def case_start(agent: g.Agent) -> None:
    """Services, the drop-in, the agent; its view of those settings."""
    with g.Case("detach_start") as case:
        with case.step("iscsid"):
            g.start_iscsid()
            g.set_iscsi_timeouts()
        with case.step("multipathd"):
            Path("/etc/multipath/conf.d").mkdir(parents=True, exist_ok=True)
            shutil.copy(DROP_IN, "/etc/multipath/conf.d/hostagent.conf")
            g.start_multipathd()
        case.data["show_config_no_path_retry"] = [
            line.strip()
            for line in g.sh("multipathd", "show", "config").stdout.split("\n")
            if "no_path_retry" in line
        ][:3]
        with case.step("hostagentd"):
            case.data["start_seconds"] = agent.start(env={FAILPOINTS: ONCE})
        check = agent_check_config(agent)
        case.data["check_config"] = check
        with agent.client() as c:
            caps = c.call("Host.getCapabilities")
        case.data["multipath_settings"] = caps.get("multipath_settings")


def agent_check_config(agent: g.Agent) -> dict[str, Any]:
    """``hostagentd --check-config`` on the agent's config file."""
    proc = g.sh(
        *g.entry_point("hostagentd", "hostagent.daemon"),
        "--config",
        str(agent.config_path),
        "--check-config",
        check=False,
    )
    return {
        "status": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


def wait_detached(watcher: Any, vol_id: str, timeout: float) -> Any:
    """The ``ManagedVolume.changed`` notification that says detached."""
    deadline = time.monotonic() + timeout
    watcher.sock.settimeout(5)
    while time.monotonic() < deadline:
        for n in watcher.notifications:
            params = n.get("params") or {}
            if params.get("vol_id") == vol_id and params.get("detached"):
                return n
        watcher.notifications.clear()
        try:
            watcher.notifications.append(watcher.recv())
        except TimeoutError:
            continue
    return None


def case_held(agent: g.Agent) -> None:
    """A holder makes detach refuse (932); force detaches anyway."""
    with g.Case("detach_held") as case, agent.client() as c:
        t = g.lab_lun("held")
        vol_id, result = attach(case, c, t)
        proc = holder(result["path"])
        case.data["holder_pid"] = proc.pid
        try:
            with case.step("detach_refused"):
                case.data["error"] = rpc_error(
                    lambda: c.call("ManagedVolume.detach_volume", [vol_id])
                )
            case.data["info_refused"] = g.volumes_info(c, vol_id)
            case.data["links_refused"] = g.managed_links(agent)
            case.data["sessions_refused"] = g.iscsi_sessions()
            with case.step("detach_force"):
                c.call(
                    "ManagedVolume.detach_volume",
                    {"vol_id": vol_id, "force": True},
                )
            case.data["info_forced"] = g.volumes_info(c, vol_id)
            case.data["sessions_forced"] = g.iscsi_sessions()
        finally:
            proc.kill()
            proc.wait()
        # The map the holder kept open goes when it lets go of it.
        with case.step("map_gone"), contextlib.suppress(TimeoutError):
            g.wait_for(no_dm_device, timeout=20, what="no dm map")
        case.data["after"] = g.iscsi_leftovers()
        case.data["links_after"] = g.managed_links(agent)


def case_partitions(agent: g.Agent) -> None:
    """Host partition maps on the LUN's map go first; the disconnect
    fails once (fail point) and the background retry finishes."""
    with g.Case("detach_partitions") as case:
        t = g.lab_lun("parts")
        with agent.client() as c, agent.client() as watcher:
            watcher.call("Host.subscribe")
            vol_id, result = attach(case, c, t)
            with case.step("partition"):
                g.sh(
                    "sfdisk",
                    result["path"],
                    input="label: dos\n,16M\n,16M\n",
                )
                g.sh("udevadm", "settle", "--timeout=30", check=False)
                wwid = result["attachment"]["multipath_id"]
                dm = g.dm_by_uuid(f"mpath-{wwid}")
                g.wait_for(
                    lambda: len(os.listdir(f"/sys/block/{dm}/holders")) >= 2,
                    timeout=20,
                    what="kpartx's partition maps",
                )
            case.data["dm_with_parts"] = g.dm_devices()
            with case.step("detach_fails"):
                case.data["error"] = rpc_error(
                    lambda: c.call("ManagedVolume.detach_volume", [vol_id])
                )
            case.data["info_failed"] = g.volumes_info(c, vol_id)
            with case.step("retried"):
                case.data["event"] = wait_detached(watcher, vol_id, 90)
            case.data["info_after"] = g.volumes_info(c, vol_id)
        case.data["after"] = g.iscsi_leftovers()
        case.data["links_after"] = g.managed_links(agent)


def case_lost(agent: g.Agent) -> None:
    """Target gone with I/O in flight: refused, then forced, bounded."""
    with g.Case("detach_lost") as case, agent.client() as c:
        t = g.lab_lun("lost")
        vol_id, result = attach(case, c, t)
        mapper = result["path"]
        case.data["table"] = g.sh("dmsetup", "table", mapper).stdout
        writer = subprocess.Popen(
            [
                "dd",
                "if=/dev/zero",
                f"of={mapper}",
                "bs=64k",
                "count=100000",
                "oflag=direct",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        case.data["writer_pid"] = writer.pid
        time.sleep(1)
        with case.step("lose_target"):
            for portal in list(t.portals):
                t.remove_portal(portal)
            # The writer's I/O is queued by the map from here on.
            time.sleep(3)
        case.data["status_lost"] = g.sh("dmsetup", "status", mapper).stdout
        case.data["writer_running"] = writer.poll() is None
        pings: list[float] = []
        stop = threading.Event()

        def ping() -> None:
            with agent.client(timeout=30) as p:
                while not stop.is_set():
                    start = time.monotonic()
                    p.call("Host.ping")
                    pings.append(time.monotonic() - start)
                    # Another volume's view goes on too (the db thread).
                    p.call("ManagedVolume.volumes_info")
                    time.sleep(0.5)

        pinger = threading.Thread(target=ping, daemon=True)
        pinger.start()
        try:
            with case.step("detach_refused"):
                case.data["error"] = rpc_error(
                    lambda: c.call("ManagedVolume.detach_volume", [vol_id])
                )
            start = time.monotonic()
            with case.step("detach_force"):
                case.data["force_error"] = rpc_error(
                    lambda: c.call(
                        "ManagedVolume.detach_volume",
                        {"vol_id": vol_id, "force": True},
                    )
                )
            case.data["force_seconds"] = round(time.monotonic() - start, 2)
        finally:
            stop.set()
            pinger.join(40)
        case.data["pings"] = len(pings)
        case.data["ping_max"] = round(max(pings), 3) if pings else None
        try:
            writer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            writer.kill()
        case.data["writer_status"] = writer.returncode
        case.data["info_after"] = g.volumes_info(c, vol_id)
        with case.step("map_gone"), contextlib.suppress(TimeoutError):
            g.wait_for(no_dm_device, timeout=20, what="no dm map")
        case.data["after"] = g.iscsi_leftovers()
        case.data["links_after"] = g.managed_links(agent)
        case.data["bound"] = LOST_BOUND


def main() -> None:
    """Start the host side and the agent, then run the cases."""
    agent = g.Agent(
        extra_storage="detach_retry_initial = 2.0\ndetach_retry_max = 10.0\n"
    )
    case_start(agent)
    case_partitions(agent)
    case_held(agent)
    case_lost(agent)
    with g.Case("detach_stop") as case:
        case.data["exit_status"] = agent.stop()
    g.save_artifacts(str(agent.log_path), "/tmp/brick.log")
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
