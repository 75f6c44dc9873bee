"""Guest job: hostagentd killed mid-attach, with a real iSCSI session.

The agent runs with the fail point ``attach.after_connect=kill``: it
logs in (two portals, multipath) and is SIGKILLed before the database
records the attachment.  Restarted without the fail point, it must
reconcile: no session left, no stale row, and the next attach and
detach of the same volume work.  Case: agent_kill_mid_attach.
"""

from __future__ import annotations

from pathlib import Path

import labguest as g

STATE = "/var/lib/hostagent-crash"
RUN = "/run/hostagent-crash"
# SIGKILL right after os-brick's connect_volume returned: the sessions
# are up, the database still says "attaching".
FAILPOINT = "attach.after_connect=kill"


def main() -> None:
    """Crash the agent after the iSCSI login, restart it, check."""
    from hostagent.client import RpcError

    with g.Case("agent_kill_mid_attach") as case:
        with case.step("services"):
            g.start_initiator()
            target = g.lab_lun("crash")
        conn_info = target.connection_info(multipath=True)
        vol_id = g.new_vol_id()
        case.data["vol_id"] = vol_id

        first = g.Agent("hostagentd-crash1", state_dir=STATE, run_dir=RUN)
        with case.step("start_with_failpoint"):
            first.start(env={"HOSTAGENT_FAILPOINTS": FAILPOINT})
        with case.step("attach_killed"):
            try:
                with first.client() as c:
                    c.call("ManagedVolume.attach_volume", [vol_id, conn_info])
                case.data["attach_outcome"] = "returned"
            except (ConnectionError, OSError) as exc:
                case.data["attach_outcome"] = type(exc).__name__
            case.data["exit_status"] = first.wait_exit(timeout=60)
        # The crash happened after the login: the sessions are there.
        case.data["after_kill"] = g.iscsi_leftovers()

        second = g.Agent("hostagentd-crash2", state_dir=STATE, run_dir=RUN)
        with case.step("restart"):
            case.data["restart_seconds"] = second.start()
        # start() returned on the first answered ping.  Reconciliation
        # runs before the agent listens, so it is over by now: look at
        # once, without waiting, or a rollback that ran in the
        # background after READY would pass unnoticed.
        case.data["after_restart"] = g.iscsi_leftovers()
        log_text = second.log_path.read_text(errors="replace")
        case.data["reconcile_log"] = [
            line for line in log_text.splitlines() if "reconcil" in line
        ]
        with second.client() as c:
            case.data["info_after_restart"] = c.call(
                "ManagedVolume.volumes_info"
            )
            links = Path(RUN) / "volumes"
            case.data["links_after_restart"] = (
                sorted(p.name for p in links.iterdir())
                if links.exists()
                else []
            )

            # The volume must be usable again: attach, then detach.
            with case.step("reattach"):
                try:
                    result = c.call(
                        "ManagedVolume.attach_volume", [vol_id, conn_info]
                    )
                    case.data["reattach"] = result
                    case.data["reattach_io"] = g.io_check(result["path"])
                except RpcError as exc:
                    case.data["reattach_error"] = {
                        "code": exc.code,
                        "message": exc.message,
                    }
            with case.step("detach"):
                try:
                    c.call("ManagedVolume.detach_volume", [vol_id])
                    case.data["detach_ok"] = True
                except RpcError as exc:
                    case.data["detach_error"] = {
                        "code": exc.code,
                        "message": exc.message,
                    }
            case.data["info_final"] = c.call("ManagedVolume.volumes_info")
        case.data["final"] = g.iscsi_leftovers()
        case.data["second_exit_status"] = second.stop()
    g.save_artifacts(
        "/tmp/hostagentd-crash1.log", "/tmp/hostagentd-crash2.log"
    )


if __name__ == "__main__":
    main()
