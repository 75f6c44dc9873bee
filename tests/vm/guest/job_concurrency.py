"""Guest job: 8 iSCSI LUNs of one target, concurrently vs one by one.

One LIO target with 32 small file-backed LUNs behind two portals; one
agent (``[brick] multipath = false`` plus a ``[backend.mp]`` with
multipath on, so both modes share one os-brick import).  For each mode
8 LUNs are attached one by one, then 8 others from 8 clients at once.
Wall times go to the case's data, and so does where the time went,
read from the agent's debug log (os-brick's lock lines and oslo's
command timings, see :func:`breakdown`).  Cases: concurrency_setup,
concurrency_single, concurrency_multipath.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import labguest as g

LUNS = 8
IQN = "iqn.2003-01.org.lab:eight"
ATTACH = "ManagedVolume.attach_volume"
DETACH = "ManagedVolume.detach_volume"

# os-brick's lock lines (os_brick/initiator/connectors/base.py).
ACQUIRED = re.compile(
    r'Lock "([^"]+)" acquired by "([^"]+)" :: waited ([0-9.]+)s'
)
RELEASED = re.compile(
    r'Lock "([^"]+)" "released" by "[^"]+" :: held ([0-9.]+)s'
)
# oslo.concurrency's processutils: every command os-brick runs.
COMMAND = re.compile(r'CMD "([^"]+)" returned: -?\d+ in ([0-9.]+)s')
# The agent's own summary line per operation (hostagent's service).
DONE = re.compile(r"(attached|detached) volume \S+ (?:at \S+ )?in ([0-9.]+) s")


def add_luns(target: g.LioIscsiTarget, count: int) -> None:
    """LUNs 1..count-1 beside the target's LUN 0, in every portal group.

    The target's groups map LUNs to any initiator (dynamic ACLs), so a
    new LUN is visible to a session as soon as it is linked here.
    """
    for n in range(1, count):
        core = g.CONFIGFS / "target" / "core" / "fileio_0" / f"eight{n}"
        core.mkdir(parents=True)
        backing = g.backing_file(f"eight{n}.img", size_mb=16)
        size = backing.stat().st_size
        g.write(core / "control", f"fd_dev_name={backing},fd_dev_size={size}")
        g.write(core / "wwn" / "vpd_unit_serial", str(uuid.uuid4()))
        g.write(core / "enable", "1")
        for tpg in target.tpgs.values():
            lun = tpg / "lun" / f"lun_{n}"
            lun.mkdir()
            (lun / "storage").symlink_to(core)


def command_kind(cmd: str) -> str:
    """A command line's bucket in the breakdown."""
    words = cmd.split()
    tool = Path(words[0]).name if words else "?"
    if tool == "iscsiadm":
        if "--login" in words:
            return "iscsiadm login"
        if "--logout" in words:
            return "iscsiadm logout"
        if "--rescan" in words:
            return "iscsiadm rescan"
        return "iscsiadm other"
    if tool in ("multipath", "multipathd"):
        return "multipath/multipathd"
    if tool in ("tee", "blockdev", "sg_scan", "scsi_id", "udevadm"):
        return f"{tool}"
    return "other commands"


def breakdown(text: str) -> dict[str, Any]:
    """Where the time went in this slice of the agent's debug log.

    ``locks``: per os-brick lock name, how often it was taken and the
    seconds spent waiting for it and holding it (summed over calls).
    ``commands``: seconds per kind of command os-brick ran (summed; they
    run inside the held locks).  ``agent``: the agent's own per-volume
    times (lock wait included) as it logged them.
    """
    locks: dict[str, dict[str, float]] = {}
    commands: dict[str, dict[str, float]] = {}
    agent: list[float] = []
    for line in text.splitlines():
        m = ACQUIRED.search(line)
        if m:
            entry = locks.setdefault(
                m.group(1), {"taken": 0, "waited_s": 0.0, "held_s": 0.0}
            )
            entry["taken"] += 1
            entry["waited_s"] += float(m.group(3))
            continue
        m = RELEASED.search(line)
        if m:
            entry = locks.setdefault(
                m.group(1), {"taken": 0, "waited_s": 0.0, "held_s": 0.0}
            )
            entry["held_s"] += float(m.group(2))
            continue
        m = COMMAND.search(line)
        if m:
            kind = command_kind(m.group(1))
            c = commands.setdefault(kind, {"count": 0, "seconds": 0.0})
            c["count"] += 1
            c["seconds"] += float(m.group(2))
            continue
        m = DONE.search(line)
        if m:
            agent.append(float(m.group(2)))
    for entry in [*locks.values(), *commands.values()]:
        for key, value in entry.items():
            entry[key] = round(value, 3)
    return {"locks": locks, "commands": commands, "agent": agent}


class Phases:
    """Timed phases of one case, each with its slice of the agent log."""

    def __init__(self, case: g.Case, agent: g.Agent) -> None:
        self.case = case
        self.agent = agent
        self.walls: dict[str, float] = {}
        self.where: dict[str, Any] = {}

    def run(self, name: str, fn: Any) -> None:
        """Run ``fn`` as phase ``name``: its wall time and its log slice."""
        start = self.agent.log_path.stat().st_size
        t = time.monotonic()
        with self.case.step(name):
            fn()
        self.walls[name] = round(time.monotonic() - t, 3)
        with open(self.agent.log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        self.where[name] = breakdown(text)


def one_by_one(
    agent: g.Agent, method: str, params: list[dict[str, Any]]
) -> list[Any]:
    """Each call after the last, on one connection."""
    with agent.client() as c:
        return [c.call(method, p) for p in params]


def all_at_once(
    agent: g.Agent, method: str, params: list[dict[str, Any]]
) -> list[Any]:
    """Each call from its own client, all released together."""
    results: list[Any] = [None] * len(params)
    errors: list[BaseException] = []
    clients = [agent.client() for _ in params]
    barrier = threading.Barrier(len(params))

    def call(i: int) -> None:
        barrier.wait()
        try:
            results[i] = clients[i].call(method, params[i])
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=call, args=(i,)) for i in range(len(params))
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for c in clients:
        c.close()
    if errors:
        raise errors[0]
    return results


def run_mode(
    agent: g.Agent,
    target: g.LioIscsiTarget,
    name: str,
    multipath: bool,
    luns: range,
) -> None:
    """One case: 8 LUNs one by one, then 8 others all at once.

    Distinct LUNs for the two rounds, and no detach in between: under
    TCG an iSCSI detach costs about what an attach does, and detaching
    is job_agent.py's subject; here only attach concurrency is timed.
    The volumes stay attached until the guest powers off.
    """
    with g.Case(name) as case:
        phases = Phases(case, agent)
        case.data["walls"] = phases.walls
        case.data["where"] = phases.where
        ids: list[str] = []
        for rnd, first in (("serial", 0), ("concurrent", LUNS)):
            params = [
                {
                    "vol_id": str(uuid.uuid4()),
                    "connection_info": target.connection_info(
                        lun=n, multipath=multipath
                    ),
                    **({"backend": "mp"} if multipath else {}),
                }
                for n in luns[first : first + LUNS]
            ]
            ids += [p["vol_id"] for p in params]
            call = one_by_one if rnd == "serial" else all_at_once
            results: list[Any] = []
            phases.run(
                f"{rnd}_attach",
                lambda c=call, p=params, r=results: r.extend(
                    c(agent, ATTACH, p)
                ),
            )
            case.data[f"{rnd}_paths"] = [r["path"] for r in results]
        with agent.client() as c:
            info = c.call("ManagedVolume.volumes_info")
        case.data["exists"] = sorted(
            v["exists"] for v in info if v["vol_id"] in ids
        )


def main() -> None:
    """Services, the target, one agent; then both modes."""
    with g.Case("concurrency_setup") as case:
        with case.step("services"):
            g.start_initiator()
        with case.step("target"):
            target = g.LioIscsiTarget(
                IQN,
                g.backing_file("eight0.img", size_mb=16),
                g.PORTALS,
                name="eight0",
            )
            add_luns(target, 4 * LUNS)
        agent = g.Agent(
            "hostagentd-conc",
            extra_brick=(
                "multipath = false\n"
                "[backend.mp]\n"
                'driver = "iscsi"\n'
                "multipath = true\n"
            ),
        )
        with case.step("agent_start"):
            agent.start()
        with case.step("brick_import"), agent.client() as c:
            c.call("Host.getCapabilities")
    try:
        run_mode(
            agent,
            target,
            "concurrency_single",
            multipath=False,
            luns=range(2 * LUNS),
        )
        run_mode(
            agent,
            target,
            "concurrency_multipath",
            multipath=True,
            luns=range(2 * LUNS, 4 * LUNS),
        )
    finally:
        agent.stop()
        g.save_artifacts(str(agent.log_path))


if __name__ == "__main__":
    main()
