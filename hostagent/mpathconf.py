"""The host's multipath settings that hostagent relies on, checked.

- ``user_friendly_names no``: the agent returns ``/dev/mapper/<wwid>``;
  with friendly names (or a ``multipaths`` alias) the map is called
  ``mpathN`` and that path does not exist.
- a bounded ``no_path_retry`` (a number or ``fail``, not ``queue``):
  with queueing forever and the target gone, I/O on the map and every
  command that touches it (the detach's flush) hangs without end.
- ``flush_on_last_del yes`` (``always`` from multipath-tools 0.9.8):
  stop queueing when the last path is deleted, so a detach can finish.

The effective configuration comes from ``multipathd show config`` when
the daemon answers (it includes the built-in device table), else from
/etc/multipath.conf and /etc/multipath/conf.d/*.conf.  Precedence is
multipath.conf(5)'s: ``overrides`` beats ``multipaths`` and ``devices``
entries, which beat ``defaults``; a later file beats an earlier one.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CONF_FILE = Path("/etc/multipath.conf")
CONF_DIR = Path("/etc/multipath/conf.d")
SHOW_CONFIG = ("multipathd", "show", "config")
# The longest a map may queue with all paths down before I/O fails:
# vdsm's 16 retries x 5 s polling is 80 s; beyond this a detach with the
# target gone is no longer "about a minute".
MAX_QUEUE_SECONDS = 120
DEFAULT_POLLING_INTERVAL = 5
KEYS = ("user_friendly_names", "no_path_retry", "flush_on_last_del")


@dataclass
class Section:
    """A ``name { ... }`` block: its attributes and nested sections."""

    name: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Section] = field(default_factory=list)


def _tokens(line: str) -> list[str]:
    # Quoted strings keep their spaces; "#" and "!" start a comment
    # outside quotes, as in multipath-tools' parser.
    out: list[str] = []
    for m in re.finditer(r'"((?:[^"]|"")*)"|([{}])|([^\s"{}]+)', line):
        quoted, brace, word = m.groups()
        if word is not None and word[0] in "#!":
            break
        if quoted is not None:
            out.append(quoted.replace('""', '"'))
        else:
            out.append(brace or word)
    return out


def parse(text: str) -> list[Section]:
    """The top-level sections of a multipath.conf or ``show config``.

    A section's ``{`` may also open the line after its name.
    """
    root = Section("")
    stack = [root]
    lines = [t for t in map(_tokens, text.splitlines()) if t]
    for n, toks in enumerate(lines):
        if len(toks) == 1 and n + 1 < len(lines) and lines[n + 1][0] == "{":
            toks.append(lines[n + 1].pop(0))
        while toks:
            tok = toks.pop(0)
            if tok == "}":
                if len(stack) > 1:
                    stack.pop()
            elif toks and toks[0] == "{":
                toks.pop(0)
                child = Section(tok)
                stack[-1].children.append(child)
                stack.append(child)
            else:
                value: list[str] = []
                while toks and toks[0] not in "{}":
                    value.append(toks.pop(0))
                stack[-1].attrs[tok] = " ".join(value)
    return root.children


@dataclass
class Config:
    """Merged sections: later files override earlier ones."""

    defaults: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    devices: list[dict[str, str]] = field(default_factory=list)
    multipaths: list[dict[str, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def add(self, sections: list[Section]) -> None:
        """Merge one file's (or one ``show config``'s) sections."""
        for s in sections:
            if s.name == "defaults":
                self.defaults.update(s.attrs)
            elif s.name == "overrides":
                self.overrides.update(s.attrs)
            elif s.name == "devices":
                self.devices += [c.attrs for c in s.children]
            elif s.name == "multipaths":
                self.multipaths += [c.attrs for c in s.children]


def read_files(
    conf_file: Path = CONF_FILE, conf_dir: Path = CONF_DIR
) -> Config:
    """``conf_file`` then ``conf_dir/*.conf`` in name order, merged.

    Missing files are no error (multipathd runs on built-in defaults).
    ``config_dir`` in the file is ignored, as multipath-tools 0.9 does.
    """
    cfg = Config()
    paths = [conf_file]
    with contextlib.suppress(OSError):
        paths += sorted(p for p in conf_dir.glob("*.conf") if p.is_file())
    for p in paths:
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        cfg.add(parse(text))
        cfg.files.append(str(p))
    return cfg


# ---------------------------------------------------------------- checks


def _entry(attrs: dict[str, str]) -> str:
    if "wwid" in attrs:
        return f"multipath {attrs['wwid']}"
    vendor, product = attrs.get("vendor", "?"), attrs.get("product", "?")
    return f"device {vendor}/{product}"


def _retry_problem(value: str | None, polling: int) -> str | None:
    if value is None:
        return "is not set (maps may queue I/O forever)"
    if value == "fail":
        return None
    if value == "queue":
        return "is queue (I/O queues forever with all paths down)"
    if not value.isdigit():
        return f"is {value!r}, not a number or fail"
    if int(value) * polling > MAX_QUEUE_SECONDS:
        return (
            f"is {value}: {int(value) * polling} s of queueing at "
            f"polling_interval {polling}, above {MAX_QUEUE_SECONDS} s"
        )
    return None


def _problem(key: str, value: str | None, polling: int) -> str | None:
    """Why ``value`` of ``key`` is not what the agent needs (None: fine)."""
    if key == "user_friendly_names":
        # Unset is the built-in "no".
        if value in (None, "no"):
            return None
        return f"is {value!r}: maps get mpathN names, not their WWID"
    if key == "no_path_retry":
        return _retry_problem(value, polling)
    if value in ("yes", "always"):
        return None
    if value is None:
        return "is not set (the built-in default does not flush)"
    return f"is {value!r}, not yes/always"


def _entry_problems(
    key: str, entries: Sequence[dict[str, str]], polling: int
) -> Iterator[str]:
    bad = [
        (_entry(e), why)
        for e in entries
        if key in e and (why := _problem(key, e[key], polling))
    ]
    if bad:
        shown = "; ".join(f"{name}: {key} {why}" for name, why in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        yield (
            f"{len(bad)} devices/multipaths entries set {key} badly and "
            f"beat defaults ({shown}{more}); set it in overrides"
        )


@dataclass(frozen=True)
class MultipathSettings:
    """The settings the agent relies on and what is wrong with them.

    A value is the one that applies to maps no ``devices`` or
    ``multipaths`` entry overrides: from ``overrides``, else
    ``defaults``; None when neither sets it.
    """

    source: str  # the command, or the files read
    user_friendly_names: str | None
    no_path_retry: str | None
    flush_on_last_del: str | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def as_data(self) -> dict[str, object]:
        """JSON-friendly form for getCapabilities / --check-config."""
        return {
            "source": self.source,
            "user_friendly_names": self.user_friendly_names,
            "no_path_retry": self.no_path_retry,
            "flush_on_last_del": self.flush_on_last_del,
            "problems": list(self.problems),
        }


def check(cfg: Config, source: str, *, full: bool) -> MultipathSettings:
    """The settings of ``cfg`` and their problems, in words.

    ``full``: ``cfg`` includes the built-in device table (it came from
    ``multipathd show config``).  Without it, the table is unknown and
    ``no_path_retry`` must be in ``overrides``: the built-in entries of
    several arrays say ``queue`` and beat ``defaults``.
    """
    polling_text = cfg.defaults.get("polling_interval", "")
    polling = (
        int(polling_text)
        if polling_text.isdigit()
        else DEFAULT_POLLING_INTERVAL
    )
    values: dict[str, str | None] = {}
    problems: list[str] = []
    for key in KEYS:
        where = cfg.overrides if key in cfg.overrides else cfg.defaults
        value = values[key] = where.get(key)
        why = _problem(key, value, polling)
        if key in cfg.overrides:
            # Beats every devices and multipaths entry: nothing else counts.
            if why:
                problems.append(f"{key} {why} (overrides)")
            continue
        if why:
            problems.append(f"{key} {why}")
        elif key == "no_path_retry" and not full:
            problems.append(
                "no_path_retry is not set in overrides: multipath's "
                "built-in device table sets queue for some arrays, "
                "which beats defaults"
            )
        problems += _entry_problems(key, cfg.devices + cfg.multipaths, polling)
    for m in cfg.multipaths:
        if "alias" in m:
            problems.append(
                f"multipath {m.get('wwid', '?')} has alias "
                f"{m['alias']!r}: its map is not /dev/mapper/<wwid>"
            )
    return MultipathSettings(
        source,
        values["user_friendly_names"],
        values["no_path_retry"],
        values["flush_on_last_del"],
        tuple(problems),
    )


def read_settings(
    conf_file: Path = CONF_FILE,
    conf_dir: Path = CONF_DIR,
    *,
    command: Sequence[str] | None = SHOW_CONFIG,
    timeout: float = 10,
) -> MultipathSettings:
    """The host's multipath settings and their problems.

    Asks the running daemon (``command``) first: what it uses is what
    counts, built-in device table included.  When it does not answer
    (not running, not installed, ``command`` None) the files are read.
    """
    if command:
        try:
            done = subprocess.run(
                list(command),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            pass
        else:
            if done.returncode == 0 and done.stdout.strip():
                cfg = Config()
                cfg.add(parse(done.stdout))
                return check(cfg, " ".join(command), full=True)
    cfg = read_files(conf_file, conf_dir)
    source = ", ".join(cfg.files) or "built-in defaults (no files)"
    return check(cfg, source, full=False)
