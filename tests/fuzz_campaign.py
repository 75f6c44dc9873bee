"""``make fuzz``: a long fuzz campaign against one running daemon.

    python tests/fuzz_campaign.py [--messages N] [--workers W]

Runs the generators and the oracle of ``tests/fuzzing.py`` (the same code
as the property test in ``make check``) in W processes at once against
one daemon, until N messages (lines) were sent in all, then prints the
totals: messages, requests, problems, daemon crashes and the answers seen
by error code.  Exits 1 if anything was wrong.  Needs root (loop devices).
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import agent_with_loops, release
from fuzzing import (
    POOL,
    Stats,
    db_problems,
    run_stream,
    streams,
)
from hypothesis import HealthCheck, Phase, given, settings
from test_fuzz import fuzz_config

ROUND = 500  # examples per Hypothesis run; each run reseeds


def worker(
    socket_path: str,
    devices: list[str],
    target: int,
    results: Any,
) -> None:
    """Fuzz until ``target`` messages were sent; put the Stats on a queue."""
    warnings.simplefilter("ignore")
    stats = Stats()
    problems: list[str] = []
    streak = [0]  # consecutive failed exchanges: the daemon is gone

    @settings(
        max_examples=ROUND,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(streams(devices))
    def one(stream: bytes) -> None:
        if stats.messages >= target or streak[0] > 50:
            return
        found = run_stream(socket_path, stream, stats)
        streak[0] = streak[0] + 1 if any("exchange" in p for p in found) else 0
        for p in found:
            if len(problems) < 50:
                problems.append(f"{p}\n    stream: {stream[:300]!r}")
        stats.failures.extend(found)

    while stats.messages < target and streak[0] <= 50:
        one()
    results.put((stats, problems))


def main() -> int:
    """Run the campaign; the exit status says whether it found anything."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hostagent-fuzz-"))
    agent, loops = agent_with_loops(tmp)
    fuzz_config(agent)
    agent.start()
    devices = [loops.create(), loops.create()]
    started = time.monotonic()
    results: Any = multiprocessing.Queue()
    share = -(-args.messages // args.workers)
    procs = [
        multiprocessing.Process(
            target=worker, args=(agent.socket, devices, share, results)
        )
        for _ in range(args.workers)
    ]
    for p in procs:
        p.start()
    total = Stats()
    shown: list[str] = []
    for _ in procs:
        stats, problems = results.get()
        total.streams += stats.streams
        total.messages += stats.messages
        total.requests += stats.requests
        total.codes.update(stats.codes)
        total.failures += stats.failures
        shown += problems
    for p in procs:
        p.join()
    seconds = time.monotonic() - started
    crashes = 0 if agent.alive() else 1
    final: list[str] = []
    if not crashes:
        final = db_problems(str(agent.db_path))
    # The log stays (under tmp) when something was wrong; the loop
    # devices and the socket go either way.
    release(agent, loops, POOL)
    tracebacks = agent.log().count("Traceback")
    codes: Counter[Any] = total.codes
    print(f"fuzz campaign: {seconds:.0f} s, {args.workers} workers")
    print(f"  connections: {total.streams}")
    print(
        f"  messages:    {total.messages} ({total.messages / seconds:.0f}/s)"
    )
    print(f"  requests:    {total.requests}")
    print(f"  crashes:     {crashes}")
    print(f"  tracebacks in the daemon log: {tracebacks}")
    print(f"  problems:    {len(total.failures)}")
    print(f"  DB at the end: {'; '.join(final) or 'integrity ok'}")
    print(
        "  answers by code: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items(), key=str))
    )
    print(
        f"  distinct error codes: {sorted(c for c in codes if c != 'result')}"
    )
    for p in shown[:20]:
        print("  !", p)
    if crashes or tracebacks or total.failures or final:
        print(f"  daemon log: {agent.log_path}")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
