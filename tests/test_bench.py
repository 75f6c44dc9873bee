"""The benchmark code runs (tiny sizes) and writes its JSON; no timings."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
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
    for expected in (
        "Host.ping round trip p50",
        "Host.ping round trip p99",
        "Host.ping throughput",
        "volumes_info",
        "attach+detach p50",
        "attach+detach overhead over",
        "attach+detach overhead beyond",
        "attaches from",
        "daemon start",
        "daemon RSS",
    ):
        assert sum(expected in n for n in names) == 1, names
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
