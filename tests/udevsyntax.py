"""A udev rules checker, for hosts whose udevadm has no ``verify`` (< 253).

It follows systemd's rule grammar (udev-rules.c, udev(7)): a line is
comma-separated ``KEY[{attr}] OP "value"`` tokens; match keys take ``==``
or ``!=``, assignment keys ``=``, ``+=``, ``-=`` or ``:=``; keys that need
an attribute name have one.  Good enough to catch what a generator can
get wrong: a missing quote or comma, a wrong operator, an unknown key.
"""

from __future__ import annotations

import re
import shutil
import subprocess

MATCH_ONLY = {
    "ACTION", "DEVPATH", "KERNEL", "SUBSYSTEM", "DRIVER", "KERNELS",
    "SUBSYSTEMS", "DRIVERS", "ATTRS", "TAGS", "TEST", "PROGRAM", "RESULT",
    "CONST", "SYSCTL",
}  # fmt: skip
ASSIGN_ONLY = {
    "OWNER", "GROUP", "MODE", "OPTIONS", "RUN", "GOTO", "LABEL", "IMPORT",
    "SECLABEL",
}  # fmt: skip
BOTH = {"NAME", "SYMLINK", "ENV", "TAG", "ATTR"}
NEEDS_ATTR = {"ENV", "ATTR", "ATTRS", "IMPORT", "SECLABEL", "CONST"}
MAY_HAVE_ATTR = NEEDS_ATTR | {"RUN", "TEST", "SYSCTL"}

_TOKEN = re.compile(
    r"(?P<key>[A-Z]+)(?:\{(?P<attr>[^}]*)\})?\s*"
    r"(?P<op>==|!=|\+=|-=|:=|=)\s*"
    r'"(?P<value>(?:[^"\\]|\\.)*)"'
)


def check_line(line: str) -> list[str]:
    """Problems of one rule line (empty when it parses)."""
    problems: list[str] = []
    rest = line.strip()
    if not rest or rest.startswith("#"):
        return problems
    matches = assigns = 0
    while rest:
        m = _TOKEN.match(rest)
        if m is None:
            return [*problems, f"cannot parse at {rest[:40]!r}"]
        key, attr, op = m["key"], m["attr"], m["op"]
        if key not in MATCH_ONLY | ASSIGN_ONLY | BOTH:
            problems.append(f"unknown key {key}")
        is_match = op in ("==", "!=")
        if is_match and key in ASSIGN_ONLY:
            problems.append(f"{key} cannot be matched")
        if not is_match and key in MATCH_ONLY:
            problems.append(f"{key} cannot be assigned")
        if key in NEEDS_ATTR and not attr:
            problems.append(f"{key} needs {{attribute}}")
        if attr is not None and key not in MAY_HAVE_ATTR:
            problems.append(f"{key} takes no {{attribute}}")
        matches += is_match
        assigns += not is_match
        rest = rest[m.end() :].lstrip()
        if rest:
            if not rest.startswith(","):
                return [*problems, f"missing comma before {rest[:40]!r}"]
            rest = rest[1:].lstrip()
            if not rest:
                problems.append("trailing comma")
    if not assigns:
        problems.append("a rule with no assignment does nothing")
    return problems


def check_text(text: str) -> list[str]:
    """Problems of a whole rules file, each with its line number."""
    return [
        f"line {n}: {p}"
        for n, line in enumerate(text.splitlines(), 1)
        for p in check_line(line)
    ]


def udevadm_verify(path: str) -> tuple[bool, str] | None:
    """``udevadm verify`` of ``path``, or None where udevadm lacks it."""
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        return None
    r = subprocess.run(
        [udevadm, "verify", "--no-style", path],
        capture_output=True,
        text=True,
        check=False,
    )
    if "Unknown command verb" in r.stderr or "unrecognized" in r.stderr:
        return None
    return r.returncode == 0, r.stdout + r.stderr
