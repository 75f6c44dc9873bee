# lab-init: systemd
"""Guest job: hostagentd as an operator runs it, under systemd as PID 1.

The guest boots a real systemd (guest/init-systemd.sh); this job runs in
its lab-job.service.  It installs the agent the way hostagent.spec does
(the units from systemd/ unchanged, tmpfiles.d and sysusers.d entries,
/etc/hostagent/hostagent.toml, /usr/bin/hostagentd: here a link to the
virtualenv's entry point, which is what the unit's ExecStart names) and
drives it only through systemctl, the socket and the journal.  Cases:
sd_boot, sd_install, sd_socket_activation, sd_iscsi, sd_journal,
sd_watchdog, sd_stop.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import labguest as g

REPO = Path(os.environ.get("LAB_REPO", Path(__file__).parents[3]))
SOCKET = "/run/hostagent/hostagent.sock"
SERVICE = "hostagent.service"
SOCKET_UNIT = "hostagent.socket"
UNITDIR = Path("/usr/lib/systemd/system")
# The only drop-in the job adds: a shorter watchdog, so that sd_watchdog
# need not wait 30 s for the kill.  In place from the start, so every
# case also shows the agent pinging in time (start-up and attach
# included) under the stricter limit.
WATCHDOG_DROPIN = Path("/etc/systemd/system/hostagent.service.d/lab.conf")
WATCHDOG_SEC = 10


def systemctl(*args: str, timeout: float = 180) -> int:
    """Run ``systemctl ARGS``; its exit status."""
    return g.sh("systemctl", *args, check=False, timeout=timeout).returncode


def show(unit: str, *props: str) -> dict[str, str]:
    """``systemctl show`` properties of a unit."""
    out = g.sh(
        "systemctl", "show", unit, *(f"--property={p}" for p in props)
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def sha(path: Path) -> str:
    """sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ping(timeout: float = 180) -> Any:
    """Host.ping over the agent's socket (a fresh connection)."""
    from hostagent.client import Client

    with Client(SOCKET, timeout=timeout) as c:
        return c.call("Host.ping")


def journal(*match: str) -> list[dict[str, Any]]:
    """Journal entries of this boot matching ``FIELD=value`` terms."""
    # Not g.sh: its console echo of JSON lines would drown the log.
    out = subprocess.run(
        ["journalctl", "-b", "-o", "json", "--no-pager", *match],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def unit_messages(unit: str) -> list[str]:
    """MESSAGE of every journal entry about ``unit`` (its own and
    systemd's lines)."""
    entries = journal(f"_SYSTEMD_UNIT={unit}") + journal(f"UNIT={unit}")
    return [str(e.get("MESSAGE", "")) for e in entries]


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict (Seccomp, CapBnd, NoNewPrivs, ...)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        k: v.strip() for k, _, v in (line.partition(":") for line in lines)
    }


def agent_processes() -> list[str]:
    """Command lines of processes running hostagentd."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"/hostagentd") for a in argv[:2]):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


def case_boot() -> None:
    """PID 1 is systemd and the boot reached the job."""
    with g.Case("sd_boot") as case:
        case.data["pid1"] = Path("/proc/1/comm").read_text().strip()
        case.data["uptime_at_job"] = g.uptime()
        # Units the masked generators (sysv, getty, ...) would have made.
        late = Path("/run/systemd/generator.late")
        case.data["generated_late"] = (
            sorted(p.name for p in late.iterdir()) if late.exists() else []
        )
        case.data["failed_units"] = g.sh(
            "systemctl", "--failed", "--plain", "--no-legend", check=False
        ).stdout.split()
        case.data["journald"] = show(
            "systemd-journald.service", "ActiveState"
        )["ActiveState"]


def install() -> None:
    """Put the files where hostagent.spec's %install puts them, then do
    what its %pre/%post do (group, tmpfiles, preset as enable)."""
    for name in ("hostagent.service", "hostagent.socket"):
        shutil.copy(REPO / "systemd" / name, UNITDIR / name)
    shutil.copy(
        REPO / "systemd" / "hostagent.tmpfiles",
        "/usr/lib/tmpfiles.d/hostagent.conf",
    )
    shutil.copy(
        REPO / "systemd" / "hostagent.sysusers",
        "/usr/lib/sysusers.d/hostagent.conf",
    )
    # The package's config file as shipped, with my_ip set as an operator
    # would (the guest has no network device to derive one from).
    etc = Path("/etc/hostagent")
    etc.mkdir(exist_ok=True)
    text = (REPO / "contrib" / "hostagent.toml").read_text()
    if 'my_ip = ""' not in text:
        raise AssertionError('contrib/hostagent.toml has no my_ip = ""')
    (etc / "hostagent.toml").write_text(
        text.replace('my_ip = ""', 'my_ip = "127.0.0.1"')
    )
    # The unit's ExecStart is /usr/bin/hostagentd: the RPM's entry point
    # script; here the virtualenv's, same main().
    venv = Path(sys.executable).parent
    for name in ("hostagentd", "hostagent-client"):
        link = Path("/usr/bin") / name
        link.unlink(missing_ok=True)
        link.symlink_to(venv / name)
    g.sh("systemd-sysusers", "/usr/lib/sysusers.d/hostagent.conf")
    g.sh("systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/hostagent.conf")
    WATCHDOG_DROPIN.parent.mkdir(parents=True, exist_ok=True)
    WATCHDOG_DROPIN.write_text(
        "# Lab only: a short watchdog so the kill comes in seconds.\n"
        f"[Service]\nWatchdogSec={WATCHDOG_SEC}s\n"
    )
    # One reload for all of it (enable alone would reload too).
    g.sh("systemctl", "enable", "--no-reload", SERVICE)
    g.sh("systemctl", "daemon-reload")


def start_storage_services() -> str:
    """iscsid and multipathd as the host's systemd units, configured as
    the other lab jobs configure them; the initiator name."""
    g.modprobe("iscsi_tcp", "dm_multipath", "dm_round_robin")
    iname = g.sh("iscsi-iname", "-p", "iqn.2004-10.org.debian:lab").stdout
    iname = iname.strip()
    g.write("/etc/iscsi/initiatorname.iscsi", f"InitiatorName={iname}\n")
    shutil.rmtree("/etc/iscsi/nodes", ignore_errors=True)
    shutil.rmtree("/etc/iscsi/send_targets", ignore_errors=True)
    g.write("/etc/multipath.conf", g.MULTIPATH_CONF)
    Path("/etc/multipath").mkdir(exist_ok=True)
    for name in ("wwids", "bindings"):
        g.write(f"/etc/multipath/{name}", "")
    g.sh("systemctl", "start", "iscsid.service", "multipathd.service")
    return iname


def case_install() -> None:
    """The package's files in place, group and directories made."""
    with g.Case("sd_install") as case:
        with case.step("install"):
            install()
        with case.step("iscsid_multipathd"):
            case.data["initiator"] = start_storage_services()
        case.data["units_as_shipped"] = all(
            sha(UNITDIR / n) == sha(REPO / "systemd" / n)
            for n in ("hostagent.service", "hostagent.socket")
        )
        # One systemctl per question: each costs a second or more under
        # TCG.
        answers = g.sh(
            "systemctl", "is-enabled", SERVICE, SOCKET_UNIT, check=False
        ).stdout.split()
        case.data["enabled"] = dict(
            zip((SERVICE, SOCKET_UNIT), answers, strict=True)
        )
        case.data["group"] = g.sh(
            "getent", "group", "hostagent", check=False
        ).stdout.strip()
        case.data["modes"] = {
            d: oct(os.stat(d).st_mode & 0o7777)
            for d in ("/run/hostagent", "/var/lib/hostagent")
        }
        units = ("iscsid.service", "multipathd.service")
        states = g.sh(
            "systemctl", "show", *units, "--property=ActiveState", "--value"
        ).stdout.split()
        case.data["storage_units"] = dict(zip(units, states, strict=True))


def case_socket_activation() -> None:
    """The socket unit listens; the first connection starts the agent."""
    with g.Case("sd_socket_activation") as case:
        with case.step("start_socket"):
            case.data["start_status"] = systemctl("start", SOCKET_UNIT)
        case.data["socket_unit"] = show(SOCKET_UNIT, "ActiveState", "SubState")
        case.data["service_before"] = show(SERVICE, "ActiveState")
        st = os.stat(SOCKET)
        case.data["socket_mode"] = oct(st.st_mode & 0o777)
        import grp

        case.data["socket_group"] = grp.getgrgid(st.st_gid).gr_name
        with case.step("first_ping"):
            case.data["ping"] = ping()
        props = show(
            SERVICE,
            "ActiveState",
            "SubState",
            "MainPID",
            "StatusText",
            "TriggeredBy",
            "DropInPaths",
        )
        case.data["service_after"] = props
        pid = int(props["MainPID"])
        status = proc_status(pid)
        case.data["main_status"] = {
            k: status.get(k) for k in ("Seccomp", "CapBnd", "NoNewPrivs")
        }
        case.data["agent_log"] = unit_messages(SERVICE)


def case_iscsi() -> str:
    """Attach and detach an iSCSI LUN (two portals, multipath) through
    the socket-activated agent; returns the vol_id."""
    vol_id = g.new_vol_id()
    with g.Case("sd_iscsi") as case:
        from hostagent.client import Client

        target = g.lab_lun("systemd")
        case.data["vol_id"] = vol_id
        with Client(SOCKET, timeout=300) as c:
            with case.step("attach"):
                result = c.call(
                    "ManagedVolume.attach_volume",
                    {
                        "vol_id": vol_id,
                        "connection_info": target.connection_info(),
                    },
                )
            g.note_multipath_attach(case, c, vol_id, result, paths=2)
            with case.step("io"):
                case.data["io"] = g.io_check(result["path"])
            with case.step("detach"):
                c.call("ManagedVolume.detach_volume", {"vol_id": vol_id})
        case.data["after"] = g.iscsi_leftovers()
        case.data["link_after"] = os.path.lexists(result["managed_path"])
    return vol_id


def case_journal(vol_id: str) -> None:
    """``journalctl VOL_ID=<id>`` finds the agent's attach/detach lines."""
    with g.Case("sd_journal") as case:

        def both() -> list[dict[str, Any]]:
            found = journal(f"VOL_ID={vol_id}")
            methods = {e.get("METHOD") for e in found}
            wanted = {
                "ManagedVolume.attach_volume",
                "ManagedVolume.detach_volume",
            }
            return found if wanted <= methods else []

        entries = []
        try:
            entries = g.wait_for(both, timeout=20, what="journal entries")
        except TimeoutError:
            entries = journal(f"VOL_ID={vol_id}")
        case.data["entries"] = [
            {
                k: e.get(k)
                for k in (
                    "MESSAGE",
                    "METHOD",
                    "VOL_ID",
                    "PEER_UID",
                    "REQUEST_ID",
                    "PRIORITY",
                    "SYSLOG_IDENTIFIER",
                    "LOGGER",
                    "_SYSTEMD_UNIT",
                    "CODE_FILE",
                )
            }
            for e in entries
        ]


def case_watchdog() -> None:
    """SIGSTOP the main process: the watchdog kills and restarts it."""
    with g.Case("sd_watchdog") as case:
        before = show(SERVICE, "MainPID", "NRestarts", "WatchdogUSec")
        case.data["before"] = before
        old = int(before["MainPID"])
        case.data["ping_before"] = ping()
        with case.step("hang_to_restarted"):
            os.kill(old, signal.SIGSTOP)
            stopped_at = time.monotonic()

            def restarted() -> dict[str, str] | None:
                now = show(SERVICE, "MainPID", "NRestarts", "ActiveState")
                if (
                    now["ActiveState"] == "active"
                    and int(now["NRestarts"]) > int(before["NRestarts"])
                    and now["MainPID"] not in ("0", str(old))
                ):
                    return now
                return None

            case.data["after"] = g.wait_for(
                restarted,
                timeout=WATCHDOG_SEC + 150,
                interval=1,
                what="the watchdog restart",
            )
            case.data["seconds_to_active"] = round(
                time.monotonic() - stopped_at, 1
            )
        case.data["old_pid_gone"] = not Path(f"/proc/{old}").exists()
        case.data["ping_after"] = ping()
        # os-brick loads and works in the new process too (and is loaded
        # before sd_stop, so the stop does not wait for its import).
        from hostagent.client import Client

        with Client(SOCKET, timeout=300) as c:
            caps = c.call("Host.getCapabilities")
        case.data["initiator_after"] = caps["connector_info"]["initiator"]
        case.data["systemd_lines"] = [
            m for m in unit_messages(SERVICE) if "atchdog" in m
        ]


def case_stop() -> None:
    """``systemctl stop`` ends the agent cleanly; the socket stays."""
    with g.Case("sd_stop") as case:
        pid = int(show(SERVICE, "MainPID")["MainPID"])
        case.data["pid"] = pid
        with case.step("stop"):
            case.data["stop_status"] = systemctl("stop", SERVICE)
        case.data["service"] = show(
            SERVICE,
            "ActiveState",
            "Result",
            "ExecMainCode",
            "ExecMainStatus",
            "MainPID",
            "ControlGroup",
        )
        case.data["pid_gone"] = not Path(f"/proc/{pid}").exists()
        case.data["processes"] = agent_processes()
        case.data["socket_unit"] = show(SOCKET_UNIT, "ActiveState", "SubState")
        case.data["socket_exists"] = os.path.exists(SOCKET)
        # The stopped daemon's own lines, start to exit.
        case.data["agent_lines"] = [
            str(e.get("MESSAGE"))
            for e in journal(f"_SYSTEMD_UNIT={SERVICE}", f"_PID={pid}")
        ]
        with case.step("stop_socket"):
            case.data["socket_stop_status"] = systemctl("stop", SOCKET_UNIT)
        case.data["socket_exists_after_socket_stop"] = os.path.exists(SOCKET)


def main() -> int:
    """Run the cases in order; the guest's journal goes to artifacts."""
    try:
        case_boot()
        case_install()
        case_socket_activation()
        vol_id = case_iscsi()
        case_journal(vol_id)
        case_watchdog()
        case_stop()
    finally:
        art = g.LAB / "artifacts"
        art.mkdir(exist_ok=True)
        out = subprocess.run(
            ["journalctl", "-b", "-o", "short-monotonic", "--no-pager"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
        (art / "journal.txt").write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
