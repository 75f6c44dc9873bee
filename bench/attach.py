"""attach + detach through the agent vs os-brick called directly."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from bench import procs
from bench.stats import Row, percentile
from hostagent.client import Client

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


def commit_cost(directory: Path, count: int) -> float:
    """p50 seconds of one SQLite commit (WAL, synchronous=FULL) here."""
    path = directory / "commit-probe.db"
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=wal")
        con.execute("PRAGMA synchronous=full")
        con.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
        samples = []
        for i in range(count):
            t = time.perf_counter()
            con.execute("INSERT INTO t VALUES (?, ?)", (str(i), "x" * 300))
            samples.append(time.perf_counter() - t)
    finally:
        con.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return percentile(samples, 50)


def run_pair(work: procs.Workdir, device: str, count: int) -> list[Row]:
    """p50 of attach+detach, agent vs direct, and the overhead."""
    conn = local_connector()
    data = local_info(device)["data"]
    agent_t: list[float] = []
    ref_t: list[float] = []
    clock = time.perf_counter
    with procs.agent(work.path, "attach-agent") as a, a.client() as c:
        for i in range(count + 5):
            vol_id = str(uuid.uuid4())
            t = clock()
            c.call(
                ATTACH,
                {"vol_id": vol_id, "connection_info": local_info(device)},
            )
            c.call(DETACH, {"vol_id": vol_id})
            if i >= 5:  # the first few warm up caches on both sides
                agent_t.append(clock() - t)
            t = clock()
            info = conn.connect_volume(data)
            conn.disconnect_volume(data, info)
            if i >= 5:
                ref_t.append(clock() - t)
    commit = commit_cost(work.path, max(20, count))
    ms = 1e3
    p50 = percentile(agent_t, 50) * ms
    ref = percentile(ref_t, 50) * ms
    return [
        Row.compare(
            "attach+detach p50, local connector on a loop device",
            p50,
            ref,
            "ms",
        ),
        Row(
            "attach+detach overhead over os-brick, p50",
            p50 - ref,
            "ms",
            target="<= 3 ms",
            passed=p50 - ref <= 3.0,
            note="the agent's 4 durable commits (WAL, synchronous=FULL) "
            f"cost about {4 * commit * ms:.2f} ms of it on this disk "
            f"({commit * ms:.3f} ms each)",
        ),
    ]


def run_concurrent(
    work: procs.Workdir, devices: list[str], count: int
) -> list[Row]:
    """``count`` attaches from ``count`` clients at once vs in a row."""
    nodes = work.device_nodes("attach-nodes", count, devices)
    with procs.agent(work.path, "concurrent-agent") as a:
        with a.client() as c:
            warm = str(uuid.uuid4())
            c.call(
                ATTACH,
                {"vol_id": warm, "connection_info": local_info(nodes[0])},
            )
            c.call(DETACH, {"vol_id": warm})
            ids = [str(uuid.uuid4()) for _ in nodes]
            t = time.perf_counter()
            for vol_id, node in zip(ids, nodes, strict=True):
                c.call(
                    ATTACH,
                    {"vol_id": vol_id, "connection_info": local_info(node)},
                )
            sequential = time.perf_counter() - t
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
        t = time.perf_counter()
        for th in threads:
            th.join()
        concurrent = time.perf_counter() - t
        for client in clients:
            client.close()
        with a.client() as c:
            attached = c.call("ManagedVolume.volumes_info")
            for vol_id in ids:
                c.call(DETACH, {"vol_id": vol_id})
        links = len(os.listdir(a.run_dir / "volumes"))
    ok = not errors and len(attached) == count
    return [
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
        )
    ]
