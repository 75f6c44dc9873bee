"""The benchmark code runs (tiny sizes) and writes its JSON; no timings."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from support import ROOT

ROW_KEYS = {
    "figure",
    "value",
    "unit",
    "reference",
    "ratio",
    "target",
    "passed",
    "note",
}


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["meta"]["smoke"] is True
    figures = doc["figures"]
    names = [f["figure"] for f in figures]
    # Every figure of the table, each with its target.
    targets = {
        "Host.ping round trip p50": "1.5x echo",
        "Host.ping throughput": "0.5x echo",
        "[1k], 5 volumes, p50": "10 ms",
        "[10k], 20 volumes, p50": "100 ms",
        "start-up with [10k] attached rows": "2 s",
        "RSS with [10k] attached rows": "100 MB",
        "overhead beyond the safety checks": "1 ms + 2 fsync",
        "concurrent attaches, speed-up": "5x",
        "attaches from": "all succeed",
        "daemon start": "1.0 s",
        "daemon RSS": "70 MB",
        "check_local_device": "5 ms",
        "holders() scan": "100 ms",
        "STOMP ping p50": "2.0x NDJSON",
    }
    targeted = [f for f in figures if f["target"]]
    assert len(targeted) == len(targets), names
    for expected, target in targets.items():
        (row,) = (f for f in targeted if expected in f["figure"])
        assert target in row["target"], row
    assert len(names) == len(set(names)), names
    for f in figures:
        assert set(f) == ROW_KEYS
        assert isinstance(f["value"], float) and math.isfinite(f["value"])
        assert f["passed"] in (True, False, None)
        if f["reference"] is not None:
            assert f["ratio"] == f["value"] / f["reference"]
        assert (f["passed"] is None) == (not f["target"]), f
        # the printed table carries the same figures
        assert f["figure"] in proc.stdout
    # Correctness, not speed: every concurrent attach must have worked.
    (concurrent,) = (f for f in figures if "attaches from" in f["figure"])
    assert concurrent["passed"] is True, concurrent["note"]
    # The vdsm-style helper ran (and attached the device it was given).
    for op in ("attach", "detach"):
        (anchor,) = (
            f for f in figures if f["figure"].startswith(f"{op}, vdsm")
        )
        assert anchor["reference"] is not None and anchor["value"] > 0
    # The fsync the overhead target is counted in was measured.
    (fsync,) = (f for f in figures if "write+fsync" in f["figure"])
    assert fsync["value"] > 0
