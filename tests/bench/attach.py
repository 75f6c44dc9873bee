"""attach + detach through the agent vs os-brick called directly."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hostagent import release
from hostagent.client import Client
from hostagent.devices import check_local_device
from tests.bench import procs
from tests.bench.probes import (
    COMMITS,
    DURABLE,
    CommitProbe,
    FloorProbe,
    FsyncProbe,
)
from tests.bench.stats import Row, percentile

ATTACH = "ManagedVolume.attach_volume"
DETACH = "ManagedVolume.detach_volume"


def local_info(device: str) -> dict[str, Any]:
    """connection_info of the ``local`` connector for ``device``."""
    return {"driver_volume_type": "local", "data": {"device_path": device}}


def local_connector() -> Any:
    """os-brick's LocalConnector, created the way the agent creates it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import eventlet  # noqa: F401  (see hostagent.brick)
        from os_brick.initiator import connector
    return connector.InitiatorConnector.factory("LOCAL", "")


def _tmpfs() -> str | None:
    """A tmpfs mount point to use (``/dev/shm``), if there is one."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1:3] == ["/dev/shm", "tmpfs"]:
                return "/dev/shm"
    return None


@contextlib.contextmanager
def run_dir(work: procs.Workdir, name: str) -> Iterator[tuple[Path, str]]:
    """The agent's ``storage.run_dir``, on a tmpfs as in production.

    The managed symlinks live there, and a host's ``/run`` is a tmpfs;
    on this machine's disk file system each link and unlink costs some
    100 us more, waiting behind the database's fsyncs.  Yields the
    directory and where it is, for the notes.
    """
    base = _tmpfs()
    if base is None:
        path = work.path / f"{name}-run"
        path.mkdir()
        yield path, "the disk file system (no tmpfs found)"
        return
    path = Path(tempfile.mkdtemp(prefix=f"ha-bench-{name}-", dir=base))
    try:
        yield path, f"a tmpfs ({base})"
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclasses.dataclass
class LinkedAgent:
    """A started agent whose ``run_dir`` is on a tmpfs (:func:`run_dir`)."""

    agent: procs.AgentProcess
    links: Path  # its run_dir
    where: str  # what file system that is, for the notes


@contextlib.contextmanager
def linked_agent(work: procs.Workdir, name: str) -> Iterator[LinkedAgent]:
    """An agent ``<name>-agent`` with its run_dir from :func:`run_dir`."""
    with (
        run_dir(work, name) as (links, where),
        procs.agent(
            work.path, f"{name}-agent", storage={"run_dir": str(links)}
        ) as a,
    ):
        yield LinkedAgent(a, links, where)


def attach_detach(c: Client, device: str) -> float:
    """Seconds for one attach + detach of ``device`` (a new vol_id)."""
    vol_id = str(uuid.uuid4())
    start = time.perf_counter()
    c.call(ATTACH, {"vol_id": vol_id, "connection_info": local_info(device)})
    c.call(DETACH, {"vol_id": vol_id})
    return time.perf_counter() - start


def run_pair(work: procs.Workdir, device: str, count: int) -> list[Row]:
    """p50 of attach+detach, agent vs direct, and the overhead.

    Each round does one of each: agent, direct, the safety checks, the
    probes (commits, fsync, the floor of the design),
    so the differences are taken under the same load.
    """
    conn = local_connector()
    data = local_info(device)["data"]
    agent_t: list[float] = []
    ref_t: list[float] = []
    commit_t: list[float] = []
    fsync_t: list[float] = []
    safety_t: list[float] = []
    floor_t: list[float] = []
    clock = time.perf_counter
    probe = CommitProbe(work.path)
    fsync: FsyncProbe | None = None
    floor: FloorProbe | None = None
    try:
        with linked_agent(work, "attach") as la, la.agent.client() as c:
            where = la.where
            fsync = FsyncProbe(la.agent.state_dir)
            floor = FloorProbe(la.agent.state_dir)
            for i in range(count + 5):
                agent = attach_detach(c, device)
                t = clock()
                info = conn.connect_volume(data)
                conn.disconnect_volume(data, info)
                direct = clock() - t
                t = clock()
                safety_checks(device)
                safety = clock() - t
                commits = probe.run()
                synced = fsync.run()
                t = clock()
                c.call("Host.ping")
                c.call("Host.ping")
                least = clock() - t + floor.run()
                if i >= 5:  # the first few warm up caches on both sides
                    agent_t.append(agent)
                    ref_t.append(direct)
                    commit_t.append(commits)
                    fsync_t.append(synced)
                    safety_t.append(safety)
                    floor_t.append(least)
    finally:
        probe.close()
        if fsync is not None:
            fsync.close()
        if floor is not None:
            floor.close()
    ms = 1e3
    overhead = [a - r for a, r in zip(agent_t, ref_t, strict=True)]
    own = [o - c for o, c in zip(overhead, safety_t, strict=True)]
    over = percentile(overhead, 50) * ms
    own_over = percentile(own, 50) * ms
    commit = percentile(commit_t, 50) * ms
    one_fsync = percentile(fsync_t, 50) * ms
    allowed = 1.0 + 2 * one_fsync
    least = percentile(floor_t, 50) * ms
    return [
        Row(
            "one 4 KiB write+fsync in the state dir, p50",
            one_fsync,
            "ms",
            note="measured in the same rounds as the attaches, in the "
            "agent's state_dir (beside its database): the machine's fsync",
        ),
        Row.compare(
            "attach+detach p50, local connector on a loop device",
            percentile(agent_t, 50) * ms,
            percentile(ref_t, 50) * ms,
            "ms",
        ),
        Row(
            "attach+detach overhead over os-brick, p50",
            over,
            "ms",
            note="per round: agent minus direct os-brick, the safety "
            "checks included",
        ),
        Row(
            "the safety checks of one attach+detach, p50",
            percentile(safety_t, 50) * ms,
            "ms",
            note="the local guard (issue 17: sysfs stack, mountinfo, "
            "O_EXCL open) and the detach's holder survey (issue 19: a "
            "scan of every process's open files in /proc, so it grows "
            "with the host's processes), called directly in the same "
            "rounds, as the agent calls them",
        ),
        Row(
            "attach+detach overhead beyond the safety checks, p50",
            own_over,
            "ms",
            target=f"<= 1 ms + 2 fsync (= {allowed:.2f} ms)",
            passed=own_over <= allowed,
            note=f"per round: agent minus direct os-brick minus the safety "
            f"checks; its {COMMITS} commits alone ({DURABLE} fsynced; "
            f"plain sqlite3, WAL) took {commit:.2f} ms p50 in the same "
            "rounds; the database on the disk, run_dir (managed "
            f"symlinks) on {where}",
        ),
        Row(
            "the floor of this design for one attach+detach, p50",
            least,
            "ms",
            note=f"measured in the same rounds: 2 Host.ping round trips "
            f"(the transport), the {COMMITS} commits each handed to a "
            "database thread (the agent's Lane) and 2 hand-offs to a "
            "worker pool (where os-brick runs), with no logic at all; "
            + (
                f"the target ({allowed:.2f} ms) is below it"
                if least > allowed
                else f"the target ({allowed:.2f} ms) is above it"
            ),
        ),
        Row.compare(
            "attach+detach overhead beyond the safety checks and the floor",
            percentile([o - f for o, f in zip(own, floor_t, strict=True)], 50)
            * ms,
            least,
            "ms",
            note="p50; what the agent's own logic adds (request parsing "
            "and checks, the steps, log lines, links, extra hand-offs); "
            "reference: the floor",
        ),
    ]


def safety_checks(device: str) -> None:
    """What the agent checks of a local device: attach guard, holders."""
    check_local_device(device)
    if release.survey(device) is None:
        raise RuntimeError(f"{device}: the survey found no device")


def run_concurrent(
    work: procs.Workdir, devices: list[str], count: int
) -> list[Row]:
    """``count`` attaches from ``count`` clients at once vs in a row.

    Each volume gets a loop device of its own: the agent refuses a
    second volume on a device another volume already holds (927), so
    device nodes sharing a device number would not do here.
    """
    nodes = devices[:count]
    nodes += [work.loop_device(1) for _ in range(count - len(nodes))]
    with linked_agent(work, "concurrent") as la:
        a, links_dir = la.agent, la.links
        with a.client() as c:
            warm = str(uuid.uuid4())
            c.call(
                ATTACH,
                {"vol_id": warm, "connection_info": local_info(nodes[0])},
            )
            c.call(DETACH, {"vol_id": warm})
            ids = [str(uuid.uuid4()) for _ in nodes]
            assert a.proc is not None
            pid = a.proc.pid
            cpu = procs.cpu_seconds(pid)
            t = time.perf_counter()
            for vol_id, node in zip(ids, nodes, strict=True):
                c.call(
                    ATTACH,
                    {"vol_id": vol_id, "connection_info": local_info(node)},
                )
            sequential = time.perf_counter() - t
            sequential_cpu = procs.cpu_seconds(pid) - cpu
            for vol_id in ids:
                c.call(DETACH, {"vol_id": vol_id})
        ids = [str(uuid.uuid4()) for _ in nodes]
        clients = [a.client() for _ in nodes]
        errors: list[BaseException] = []
        barrier = threading.Barrier(count + 1)

        def attach(client: Client, vol_id: str, node: str) -> None:
            barrier.wait()
            try:
                client.call(
                    ATTACH,
                    {"vol_id": vol_id, "connection_info": local_info(node)},
                )
            except BaseException as e:
                errors.append(e)

        threads = [
            threading.Thread(target=attach, args=args)
            for args in zip(clients, ids, nodes, strict=True)
        ]
        for th in threads:
            th.start()
        barrier.wait()
        cpu = procs.cpu_seconds(pid)
        t = time.perf_counter()
        for th in threads:
            th.join()
        concurrent = time.perf_counter() - t
        concurrent_cpu = procs.cpu_seconds(pid) - cpu
        for client in clients:
            client.close()
        with a.client() as c:
            attached = c.call("ManagedVolume.volumes_info")
            for vol_id in ids:
                c.call(DETACH, {"vol_id": vol_id})
        links = len(os.listdir(links_dir / "volumes"))
    ok = not errors and len(attached) == count
    speedup = sequential / concurrent
    return [
        Row(
            f"{count} concurrent attaches, speed-up over one by one",
            speedup,
            "x",
            target=">= 5x",
            passed=speedup >= 5.0,
            note=f"the agent's CPU time (all threads, /proc/PID/stat): "
            f"{sequential_cpu * 1e3:.0f} ms for the {count} in a row "
            f"({sequential_cpu / sequential:.2f} CPUs busy), "
            f"{concurrent_cpu * 1e3:.0f} ms for the {count} at once "
            f"({concurrent_cpu / concurrent:.2f} CPUs busy); its Python "
            "code runs one thread at a time (the GIL), so the at-once "
            "wall time cannot go much below that CPU time: the best "
            f"speed-up is about {sequential / max(concurrent_cpu, 1e-9):.1f}x "
            "here (the local connector waits for nothing: no I/O to "
            "overlap); "
            f"{os.cpu_count()} CPUs; the {count} clients are threads of "
            "the benchmark process, on the same CPUs",
        ),
        Row.compare(
            f"{count} attaches from {count} clients at once, wall time",
            concurrent * 1e3,
            sequential * 1e3,
            "ms",
            target="all succeed",
            passed=ok,
            note=f"speed-up {sequential / concurrent:.2f}x over the same "
            f"{count} one after another on one connection; "
            f"{count - len(errors)} succeeded; {links} links left after "
            "detaching all"
            + (f"; first error: {errors[0]}" if errors else ""),
        ),
    ]


HELPER = Path(__file__).resolve().parent / "vdsm_helper.py"


def helper_run(command: str, doc: dict[str, Any]) -> tuple[float, Any]:
    """Run the vdsm-style helper once; wall seconds and its JSON answer."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HELPER), command],
        input=json.dumps(doc).encode(),
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(
            f"vdsm_helper.py {command} failed: {proc.stderr[-2000:]!r}"
        )
    return elapsed, json.loads(proc.stdout)


def run_anchor(work: procs.Workdir, device: str, rounds: int) -> list[Row]:
    """vdsm's way (a fresh os-brick process per call) vs one agent call.

    Each round attaches and detaches the same loop device four times,
    interleaved: through the agent (attach, detach), then through the
    helper process (attach, detach).
    """
    info = local_info(device)
    agent_a: list[float] = []
    agent_d: list[float] = []
    vdsm_a: list[float] = []
    vdsm_d: list[float] = []
    clock = time.perf_counter
    with linked_agent(work, "anchor") as la, la.agent.client() as c:
        for i in range(rounds + 1):
            vol_id = str(uuid.uuid4())
            t = clock()
            c.call(ATTACH, {"vol_id": vol_id, "connection_info": info})
            attach = clock() - t
            t = clock()
            c.call(DETACH, {"vol_id": vol_id})
            detach = clock() - t
            helper_attach, attachment = helper_run("attach", info)
            if attachment.get("path") != device:
                raise RuntimeError(f"helper attached {attachment!r}")
            helper_detach, _ = helper_run(
                "detach", {"connection_info": info, "attachment": attachment}
            )
            if i >= 1:  # the first warms the page cache for the imports
                agent_a.append(attach)
                agent_d.append(detach)
                vdsm_a.append(helper_attach)
                vdsm_d.append(helper_detach)
    ms = 1e3
    note = (
        f"p50 of {rounds} rounds; tests/bench/vdsm_helper.py takes the "
        "steps of vdsm's managedvolume-helper (fresh python, import "
        "os-brick, get_connector_properties, connector, call, JSON out); "
        "vdsm runs one per attach and one per detach (through supervdsm, "
        "not counted here); reference: the same call through the agent"
    )
    return [
        Row.compare(
            "attach, vdsm way (a helper process per call), p50",
            percentile(vdsm_a, 50) * ms,
            percentile(agent_a, 50) * ms,
            "ms",
            note=note,
        ),
        Row.compare(
            "detach, vdsm way (a helper process per call), p50",
            percentile(vdsm_d, 50) * ms,
            percentile(agent_d, 50) * ms,
            "ms",
            note="as above, for the detach",
        ),
    ]
