"""``python -m tests.bench [--smoke] [--json PATH]``: run every figure."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hostagent import __version__
from tests.bench import (
    attach,
    devchecks,
    info,
    ping,
    procs,
    start,
    stomp_ping,
)
from tests.bench.stats import Row, table, write_json

DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"


@dataclass(frozen=True)
class Sizes:
    """How much of everything one run does."""

    pings: int
    connections: int
    per_connection: int
    volumes: int
    info_calls: int
    volumes_large: int
    info_calls_large: int
    large_starts: int
    anchor_rounds: int
    attaches: int
    concurrent: int
    starts: int
    scans: int
    holder_procs: int


# Each size: the full run's, the smoke test's (``--smoke``: every
# figure once, quickly, to see that it still runs).
_SIZES = {
    "pings": (20000, 20),
    "connections": (16, 2),
    "per_connection": (3000, 10),
    "volumes": (1000, 5),
    "info_calls": (50, 2),
    "volumes_large": (10000, 20),
    "info_calls_large": (20, 2),
    "large_starts": (3, 1),
    "anchor_rounds": (7, 1),
    "attaches": (300, 2),
    "concurrent": (100, 3),
    "starts": (5, 1),
    "scans": (50, 2),
    "holder_procs": (300, 2),
}
FULL = Sizes(**{name: full for name, (full, _) in _SIZES.items()})
SMOKE = Sizes(**{name: smoke for name, (_, smoke) in _SIZES.items()})


GROUPS = (
    "ping",
    "info",
    "attach",
    "anchor",
    "concurrent",
    "start",
    "devices",
)


def run(sizes: Sizes, only: frozenset[str] = frozenset(GROUPS)) -> list[Row]:
    """Every figure (or the groups in ``only``), in one run."""
    rows: list[Row] = []
    with procs.workdir() as work:
        devices = [work.loop_device() for _ in range(4)]
        if "ping" in only:
            rows += ping.run(
                work.path, sizes.pings, sizes.connections, sizes.per_connection
            )
            rows += stomp_ping.run(work.path, sizes.pings // 4)
        if "info" in only:
            rows += info.run(
                work,
                devices,
                sizes.volumes,
                sizes.info_calls,
                "1k",
                info.Targets(info_ms=10.0),
            )
            rows += info.run(
                work,
                devices,
                sizes.volumes_large,
                sizes.info_calls_large,
                "10k",
                info.Targets(info_ms=100.0, start_s=2.0, rss_mb=100.0),
                starts=sizes.large_starts,
            )
        if "attach" in only:
            rows += attach.run_pair(work, devices[0], sizes.attaches)
        if "anchor" in only:
            rows += attach.run_anchor(work, devices[1], sizes.anchor_rounds)
        if "concurrent" in only:
            rows += attach.run_concurrent(work, devices, sizes.concurrent)
        if "start" in only:
            rows += start.run(work, sizes.starts)
        if "devices" in only:
            rows += devchecks.run(
                work.loop_device(), sizes.scans, sizes.holder_procs, 100
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON; 1 if a target was missed."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes: checks the code runs, the numbers mean nothing",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"where to write the results (default {DEFAULT_JSON})",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=GROUPS,
        help="run only this group of figures (repeatable; for development)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (loop devices, mknod)", file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else FULL
    started = time.time()
    load_before = os.getloadavg()
    rows = run(sizes, frozenset(args.only or GROUPS))
    load_after = os.getloadavg()
    meta = {
        "smoke": args.smoke,
        "version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "sizes": asdict(sizes),
        "only": sorted(args.only or GROUPS),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    write_json(args.json, rows, meta)
    print(table(rows))
    print(
        "\nload average (1, 5, 15 min) before: "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after: "
        + ", ".join(f"{x:.2f}" for x in load_after)
        + f"; {os.cpu_count()} CPUs"
    )
    print(f"\nwritten to {args.json}")
    if args.smoke:
        return 0
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
