#!/usr/bin/env python3
"""Write hostagentd.8 and hostagent-client.1 from the programs' parsers.

Usage: contrib/make-man.py OUTDIR

The RPM build runs it (hostagent.spec, %build) with the build host's
python3: hostagent.cmdline needs nothing beyond the standard library.
The pages carry no date, so the same tree always gives the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hostagent import __version__, cmdline

PAGES = {
    "hostagentd": (
        8,
        cmdline.daemon_parser,
        "per-host storage attachment agent (JSON-RPC over os-brick)",
    ),
    "hostagent-client": (
        1,
        cmdline.client_parser,
        "call a hostagentd from a shell",
    ),
}


def roff(text: str) -> str:
    """``text`` safe in a roff line: backslashes, dashes, leading dots."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + ln if ln.startswith((".", "'")) else ln
        for ln in text.splitlines()
    )


def _arguments(
    parser: argparse.ArgumentParser,
) -> list[argparse.Action]:
    # argparse has no public way to list a parser's arguments; this is
    # the attribute argparse-manpage and shtab read too.
    return [a for a in parser._actions if a.help != argparse.SUPPRESS]


def _term(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"\\fI{action.dest.upper()}\\fR"
    names = ", ".join(f"\\fB{roff(o)}\\fR" for o in action.option_strings)
    if action.nargs == 0:
        return names
    return f"{names} \\fI{roff(action.metavar or action.dest.upper())}\\fR"


def page(name: str) -> str:
    """The man page of program ``name`` (a key of :data:`PAGES`)."""
    section, build, summary = PAGES[name]
    parser = build()
    usage = parser.format_usage().removeprefix("usage: ")
    usage = " ".join(usage.split()).removeprefix(name).strip()
    out = [
        f'.TH {name.upper()} {section} "" "hostagent {__version__}"',
        ".SH NAME",
        f"{roff(name)} \\- {roff(summary)}",
        ".SH SYNOPSIS",
        f"\\fB{roff(name)}\\fR {roff(usage)}",
        ".SH DESCRIPTION",
        roff(" ".join((parser.description or "").split())),
        ".SH OPTIONS",
    ]
    for action in _arguments(parser):
        out += [".TP", _term(action), roff(action.help or "")]
    for title, items in cmdline.MAN_SECTIONS.get(name, []):
        out.append(f".SH {title}")
        for term, text in items:
            if term:
                out += [".TP", f"\\fB{roff(term)}\\fR", roff(text)]
            else:
                out += [".PP", roff(text)]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    """Write every page into the directory ``argv[0]``."""
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, (section, _, _) in PAGES.items():
        (out / f"{name}.{section}").write_text(page(name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
