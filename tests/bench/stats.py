"""Percentiles, result rows, the printed table and the JSON file."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


def percentile(samples: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by the nearest-rank method."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Row:
    """One figure of the table.

    ``ratio`` is value / reference.  ``target`` says in words what passes;
    ``passed`` is ``None`` for figures that are only reported.
    """

    figure: str
    value: float
    unit: str
    reference: float | None = None
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    note: str = ""

    @classmethod
    def compare(
        cls,
        figure: str,
        value: float,
        reference: float,
        unit: str,
        **kwargs: Any,
    ) -> Row:
        """A row with its ratio to ``reference`` filled in."""
        ratio = value / reference if reference else None
        return cls(figure, value, unit, reference, ratio, **kwargs)


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0 or abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table."""
    head = ("figure", "value", "reference", "ratio", "target", "result")
    body = [
        (
            r.figure,
            f"{_num(r.value)} {r.unit}",
            "-" if r.reference is None else f"{_num(r.reference)} {r.unit}",
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target or "(reported)",
            {True: "PASS", False: "FAIL", None: "-"}[r.passed],
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for cells in body:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        )
    notes = [f"  {r.figure}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def write_json(path: Path, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    """Write ``{"meta": ..., "figures": [row, ...]}`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "figures": [asdict(r) for r in rows]}
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
