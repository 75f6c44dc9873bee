"""The detach path's device checks: the /proc holder scan, the guard."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable

from hostagent import devices
from tests.bench.stats import Row, percentile

# A busy hypervisor: many processes, each with many descriptors (qemu
# holds sockets, eventfds, image files); /dev/null stands for the ones
# the scan has to stat.
HOLDER = (
    "import os, sys, time\n"
    "n = int(sys.argv[1])\n"
    "keep = [os.open('/dev/null', os.O_RDONLY) for _ in range(n // 2)]\n"
    "keep += [fd for _ in range(n // 4) for fd in os.pipe()]\n"
    "print('ready', flush=True)\n"
    "time.sleep(3600)\n"
)


def _times(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _fd_count() -> int:
    total = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def run(device: str, scans: int, procs: int, fds: int) -> list[Row]:
    """holders() and check_local_device() p50, then with ``procs`` more.

    ``device`` is a free loop device.  The extra processes each hold
    ``fds`` descriptors; they are killed before returning.
    """
    base_fds = _fd_count()
    guard = percentile(
        _times(lambda: devices.check_local_device(device), scans), 50
    )
    scan = percentile(_times(lambda: devices.holders(device), scans), 50)
    kids = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(fds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    try:
        for k in kids:
            assert k.stdout is not None
            k.stdout.readline()
        busy_fds = _fd_count()
        busy = percentile(
            _times(lambda: devices.holders(device), max(1, scans // 5)), 50
        )
    finally:
        for k in kids:
            k.kill()
        for k in kids:
            k.wait()
    return [
        Row(
            "check_local_device (local attach guard), p50",
            guard * 1000,
            "ms",
            target="<= 5 ms",
            passed=guard <= 0.005,
            note="stat, sysfs stack, mountinfo, O_EXCL open",
        ),
        Row(
            "holders() scan of /proc, p50",
            scan * 1000,
            "ms",
            target="<= 100 ms",
            passed=scan <= 0.1,
            note=f"this machine as it is: {base_fds} open fds",
        ),
        Row(
            f"holders() with {procs} more processes, p50",
            busy * 1000,
            "ms",
            note=f"{busy_fds} open fds, half on /dev/null (stat'ed)",
        ),
    ]
