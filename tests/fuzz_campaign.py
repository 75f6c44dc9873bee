"""``make fuzz``: a long fuzz campaign against one running daemon.

    python tests/fuzz_campaign.py [--messages N] [--workers W]

Runs the generators and the oracle of ``tests/fuzzing.py`` (the same code
as the property test in ``make check``) in W processes at once against
one daemon, until N messages (lines) were sent in all, then prints the
totals: messages, requests, problems, daemon crashes and the answers seen
by error code.  Exits 1 if anything was wrong.  Needs root (loop devices).

A daemon that dies during the run is counted as a crash (with its exit
status and when) and started again, and the campaign goes on: the
workers wait for it to answer again, and the streams its death cut
short count as problems.  ``tests/test_fuzz.py`` runs a short campaign
(and one with a daemon killed halfway) in ``make check``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import Agent, agent_with_loops, release
from fuzzing import (
    POOL,
    SECRET_MARK,
    Stats,
    db_problems,
    run_stream,
    streams,
)
from hypothesis import HealthCheck, Phase, given, settings
from support import PING, exchange
from test_fuzz import fuzz_config

ROUND = 500  # examples per Hypothesis run; each run reseeds
# How long a worker waits for a daemon that stopped answering (the
# campaign restarts a dead one) before it gives up.
COMEBACK = 60.0


def answers_again(socket_path: str, timeout: float = COMEBACK) -> bool:
    """Wait until the daemon answers a ping on ``socket_path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if exchange(socket_path, PING, timeout=5):
                return True
        except (OSError, AssertionError):
            pass
        time.sleep(0.1)
    return False


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
    gone = [False]  # the daemon stopped answering for good

    def one(stream: bytes) -> None:
        if stats.messages >= target or gone[0]:
            return
        found = run_stream(socket_path, stream, stats)
        for p in found:
            if len(problems) < 50:
                problems.append(f"{p}\n    stream: {stream[:300]!r}")
        stats.failures.extend(found)
        if any("exchange failed" in p for p in found):
            # Dead (the campaign restarts it) or stuck: wait for it
            # rather than fail every stream meanwhile.
            gone[0] = not answers_again(socket_path)

    while stats.messages < target and not gone[0]:
        # Each example sends a message at least: no more examples than
        # messages to go, since Hypothesis generates all it was told to
        # (a short campaign would mostly generate streams it never sends).
        run = settings(
            max_examples=min(ROUND, target - stats.messages),
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(given(streams(devices))(one))
        run()
    results.put((stats, problems))


def restart(agent: Agent, started: float) -> str:
    """Note a dead daemon's end and start it again; the note."""
    assert agent.proc is not None
    note = (
        f"exit status {agent.proc.returncode} after "
        f"{time.monotonic() - started:.1f} s"
    )
    print(f"  daemon died ({note}); starting it again", flush=True)
    agent.start()  # reconciles what the death interrupted, then serves
    return note


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
    assert agent.proc is not None
    print(
        f"fuzz campaign: daemon pid {agent.proc.pid}, log {agent.log_path}",
        flush=True,
    )
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
    deaths: list[str] = []
    reported = 0
    while reported < len(procs):
        try:
            stats, problems = results.get(timeout=0.2)
        except queue.Empty:
            if not agent.alive():
                try:
                    deaths.append(restart(agent, started))
                except AssertionError as e:  # it does not come back
                    deaths.append(f"not restarted: {str(e)[:300]}")
                    for p in procs:
                        p.terminate()
                    break
            if not any(p.is_alive() for p in procs) and results.empty():
                # A worker died without its totals (its traceback is
                # above); the others have reported or never will.
                shown.append("a worker ended without reporting")
                break
            continue
        reported += 1
        total.streams += stats.streams
        total.messages += stats.messages
        total.requests += stats.requests
        total.codes.update(stats.codes)
        total.failures += stats.failures
        shown += problems
    for p in procs:
        p.join()
    seconds = time.monotonic() - started
    if agent.alive():
        final = db_problems(str(agent.db_path))
    else:  # died after the last worker reported, or not restarted
        if agent.proc is not None:
            deaths.append(f"exit status {agent.proc.returncode} at the end")
        final = ["not checked: the daemon is not running"]
    crashes = len(deaths)
    # The log stays (under tmp) when something was wrong; the loop
    # devices and the socket go either way.
    release(agent, loops, POOL)
    log_text = agent.log()
    tracebacks = log_text.count("Traceback")
    # Secrets the traffic carried, and raw NULs (request values reach the
    # log escaped): both findings.
    leaked = log_text.count(SECRET_MARK) + log_text.count("\x00")
    codes: Counter[Any] = total.codes
    print(f"fuzz campaign: {seconds:.0f} s, {args.workers} workers")
    print(f"  connections: {total.streams}")
    print(
        f"  messages:    {total.messages} ({total.messages / seconds:.0f}/s)"
    )
    print(f"  requests:    {total.requests}")
    print(f"  crashes:     {crashes}")
    for d in deaths:
        print(f"    {d}")
    print(f"  tracebacks in the daemon log: {tracebacks}")
    print(f"  secrets or NULs in the daemon log: {leaked}")
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
    lost = reported < len(procs)
    if crashes or tracebacks or leaked or total.failures or final or lost:
        print(f"  daemon log: {agent.log_path}")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
