"""Daemon start-up time and idle memory vs importing os-brick alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.bench import procs
from tests.bench.stats import Row, percentile

IMPORT = "import os_brick.initiator.connector"


def import_os_brick() -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``python -c '<IMPORT>'``."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", IMPORT],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{IMPORT!r} failed")
    return elapsed, usage.ru_maxrss / 1024


def run(work: procs.Workdir, runs: int) -> list[Row]:
    """Start-to-ping time and idle RSS, p50 of ``runs`` fresh daemons."""
    starts: list[float] = []
    rss: list[float] = []
    ref_time: list[float] = []
    ref_rss: list[float] = []
    for i in range(runs):
        elapsed, peak = import_os_brick()
        ref_time.append(elapsed)
        ref_rss.append(peak)
        a = procs.AgentProcess(work.path, f"start-agent-{i}")
        try:
            starts.append(a.start())
            rss.append(a.rss_when_idle())
        finally:
            a.stop()
    start = percentile(starts, 50)
    mem = percentile(rss, 50)
    return [
        Row.compare(
            "daemon start until Host.ping answers, p50",
            start,
            percentile(ref_time, 50),
            "s",
            target="<= 1.0 s",
            passed=start <= 1.0,
            note=f"{runs} starts on a fresh state dir; reference: "
            f"python -c '{IMPORT}'",
        ),
        Row.compare(
            "daemon RSS when idle (os-brick loaded)",
            mem,
            percentile(ref_rss, 50),
            "MB",
            target="<= 70 MB",
            passed=mem <= 70.0,
            note="VmRSS once it stops changing; reference: peak RSS of "
            "the import alone",
        ),
    ]
