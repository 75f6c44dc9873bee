"""``volumes_info`` with many attached volumes vs plain sqlite3 reads."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from hostagent import db
from hostagent.client import decode
from hostagent.db import Database, VolumeRecord
from tests.bench import procs
from tests.bench.attach import attach_detach, run_dir
from tests.bench.stats import Row, percentile
from tests.support import recv_lines

IQN = "iqn.2010-10.org.openstack"
INFO_REQUEST = (
    b'{"jsonrpc":"2.0","id":1,"method":"ManagedVolume.volumes_info"}\n'
)


@dataclass(frozen=True)
class Targets:
    """What one table size must meet; ``None``: not checked at that size."""

    info_ms: float
    start_s: float | None = None
    rss_mb: float | None = None


def records(nodes: list[str]) -> list[VolumeRecord]:
    """Attached iSCSI-shaped volumes, one per device node.

    The connection info is what Cinder hands out for an iSCSI volume with
    CHAP, so the agent's per-row work (decode, redact secrets) is the
    production work; ``path`` is a real block device node.
    """
    now = time.time()
    out = []
    for i, node in enumerate(nodes):
        vol_id = str(uuid.UUID(int=i + 1, version=4))
        out.append(
            VolumeRecord(
                vol_id=vol_id,
                connection_info={
                    "driver_volume_type": "iscsi",
                    "data": {
                        "target_discovered": False,
                        "target_iqn": f"{IQN}:volume-{vol_id}",
                        "target_portal": "192.0.2.10:3260",
                        "target_lun": i % 256,
                        "volume_id": vol_id,
                        "auth_method": "CHAP",
                        "auth_username": f"user{i}",
                        "auth_password": f"secret-{i:08d}",
                        "encrypted": False,
                        "qos_specs": None,
                        "access_mode": "rw",
                    },
                },
                path=node,
                attachment={
                    "type": "block",
                    "scsi_wwn": f"36001405{i:024x}",
                    "path": node,
                },
                multipath_id=None,
                state=db.ATTACHED,
                last_error=None,
                created=now,
                updated=now,
            )
        )
    return out


def reference(con: sqlite3.Connection) -> list[tuple[object, ...]]:
    """The same rows read with plain sqlite3, ``os.path.exists`` each."""
    rows = con.execute(
        "SELECT vol_id, connection_info, path, attachment, state,"
        " last_error FROM volume ORDER BY vol_id"
    ).fetchall()
    return [(*r, os.path.exists(r[2])) for r in rows]


def with_json(con: sqlite3.Connection) -> int:
    """:func:`reference` plus the JSON any JSON-RPC answer needs.

    The rows' JSON columns decoded, the answer encoded as one line and
    parsed again, as a client must: no RPC, no redaction, no media check.
    Returns the size of the answer in bytes.
    """
    rows = reference(con)
    result = [
        {
            "vol_id": vol_id,
            "connection_info": json.loads(str(ci)),
            "path": path,
            "attachment": None if att is None else json.loads(str(att)),
            "exists": exists,
            "state": state,
            "last_error": last_error,
        }
        for vol_id, ci, path, att, state, last_error, exists in rows
    ]
    line = json.dumps(
        {"jsonrpc": "2.0", "result": result, "id": 1},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    json.loads(line)
    return len(line)


def run(
    work: procs.Workdir,
    devices: list[str],
    count: int,
    calls: int,
    scale: str,
    targets: Targets,
    starts: int = 1,
) -> list[Row]:
    """``volumes_info`` over ``count`` volumes, agent vs sqlite3.

    Also the start-up with those rows (reconcile included) and the
    daemon's RSS once it has answered, with targets for the large table.
    ``scale`` labels the figures ("1k", "10k") whatever ``count`` is, so
    a smoke run's rows carry the same names.
    """
    nodes = work.device_nodes(f"info-nodes-{scale}", count, devices)
    # A device of its own for the attaches made beside the rows.
    spare = work.loop_device()
    with run_dir(work, f"info-{scale}") as (links, where):
        return _run(
            work,
            nodes,
            links,
            where,
            len(devices),
            calls,
            scale,
            targets,
            starts,
            spare,
        )


def _run(
    work: procs.Workdir,
    nodes: list[str],
    links: Path,
    where: str,
    loops: int,
    calls: int,
    scale: str,
    targets: Targets,
    starts: int,
    spare: str,
) -> list[Row]:
    count = len(nodes)
    a = procs.AgentProcess(
        work.path, f"info-agent-{scale}", storage={"run_dir": str(links)}
    )
    database = Database(a.db_path)
    database.open()
    try:
        db.insert_many(database, records(nodes))
    finally:
        database.close()
    agent_t: list[float] = []
    ref_t: list[float] = []
    json_t: list[float] = []
    parse_t: list[float] = []
    client_t: list[float] = []
    start_t: list[float] = []
    pair_t: list[float] = []
    clock = time.perf_counter
    con = sqlite3.connect(a.db_path)
    try:
        # Each start as after a reboot: /run (a tmpfs) empty, so start-up
        # reconcile makes every attached volume's link again.
        for _ in range(starts - 1):  # the last start is kept running
            shutil.rmtree(links / "volumes", ignore_errors=True)
            start_t.append(a.start())
            a.stop()
        shutil.rmtree(links / "volumes", ignore_errors=True)
        start_t.append(a.start())
        a.settle()
        with (
            a.client() as c,
            contextlib.closing(procs.connect_unix(a.socket)) as raw,
        ):
            t = clock()
            first = c.call("ManagedVolume.volumes_info")
            cold = clock() - t
            if len(first) != count or not all(v["exists"] for v in first):
                raise RuntimeError("volumes_info does not show every volume")
            if any(
                v["connection_info"]["data"]["auth_password"] != "***"
                for v in first
            ):
                raise RuntimeError("volumes_info shows a secret")
            del first
            for _ in range(calls):
                # To the answer's last byte: what the agent takes.  The
                # parsing is the client's (its parser, its language),
                # timed apart and reported beside.
                t = clock()
                raw.sendall(INFO_REQUEST)
                (line,) = recv_lines(raw, 1)
                agent_t.append(clock() - t)
                t = clock()
                answer = decode(line)
                parse_t.append(clock() - t)
                if len(answer["result"]) != count:
                    raise RuntimeError("volumes_info lost volumes")
                del answer, line
                t = clock()
                c.call("ManagedVolume.volumes_info")
                client_t.append(clock() - t)
                t = clock()
                rows = reference(con)
                ref_t.append(clock() - t)
                assert len(rows) == count
                t = clock()
                size = with_json(con)
                json_t.append(clock() - t)
            # Each asks whether another row has the device or the
            # connection: the lookups must not read every row.
            pair_t += [attach_detach(c, spare) for _ in range(calls + 2)]
        assert a.proc is not None
        rss, peak = procs.rss_mb(a.proc.pid)
    finally:
        con.close()
        a.stop()
    ms = 1e3
    p50 = percentile(agent_t, 50) * ms
    ref = percentile(ref_t, 50) * ms
    start = percentile(start_t, 50)
    rows_out = [
        Row.compare(
            f"volumes_info [{scale}], {count} volumes, p50",
            p50,
            ref,
            "ms",
            target=f"<= {targets.info_ms:g} ms and <= 3x",
            passed=p50 <= targets.info_ms and p50 <= 3 * ref,
            note="request sent to the answer's last byte received, on "
            "a Unix socket; "
            f"rows written with db.insert_many; {count} mknod "
            f"block nodes over {loops} real loop devices (see "
            "procs.Workdir.device_nodes); the reference selects all rows "
            "on an open connection and stats each path; the agent stats "
            "(and checks the media of) each path on every call, and reads "
            "the table again only when it changed; it knows the rows' 2 "
            "secrets each (CHAP), as after a restart",
        ),
        Row.compare(
            f"volumes_info [{scale}], p50, vs reference + JSON",
            p50,
            percentile(json_t, 50) * ms,
            "ms",
            note=f"the reference plus decoding the rows' JSON, encoding the "
            f"{size / 1e3:.0f} kB answer and parsing it again, in one "
            "process, as a plain implementation would",
        ),
        Row.compare(
            f"volumes_info [{scale}], p50 with the client's parsing",
            percentile(client_t, 50) * ms,
            p50,
            "ms",
            note="hostagent.client.Client.call, the answer parsed (orjson; "
            f"the parse alone: {percentile(parse_t, 50) * ms:.1f} ms p50); "
            "reference: the same call to the last byte",
        ),
        Row.compare(
            f"volumes_info [{scale}], first call",
            cold * ms,
            ref,
            "ms",
            note="the agent keeps the table and each volume's entry "
            "(decoded, secrets masked) while the table and the known "
            "secrets stay the same; the first call reads and builds all",
        ),
    ]
    rows_out.append(
        Row(
            f"attach+detach [{scale}], p50, beside {count} volumes",
            percentile(pair_t[2:], 50) * ms,
            "ms",
            note="the local connector on a loop device of its own, "
            f"through the agent that has the {count} rows (compare "
            "'attach+detach p50' with none); what another volume has "
            "(device, path, connection) is looked up by index",
        )
    )
    if targets.start_s is not None:
        rows_out.append(
            Row(
                f"start-up with [{scale}] attached rows, until Host.ping",
                start,
                "s",
                target=f"<= {targets.start_s:g} s",
                passed=start <= targets.start_s,
                note=f"p50 of {starts} start(s) on the {count}-row "
                "database, each as after a reboot (run_dir, on "
                f"{where}, emptied: every link made again); start-up "
                "reconcile (every row's device checked) runs before the "
                "agent listens, so it is included",
            )
        )
    if targets.rss_mb is not None:
        rows_out.append(
            Row(
                f"agent RSS with [{scale}] attached rows",
                rss,
                "MB",
                target=f"<= {targets.rss_mb:g} MB",
                passed=rss <= targets.rss_mb,
                note=f"VmRSS after {calls + 1} volumes_info calls (its "
                f"caches full), os-brick loaded; peak (VmHWM) {peak:.0f} MB",
            )
        )
    return rows_out
