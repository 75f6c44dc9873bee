"""What this host can attach: the tools and kernel interfaces per driver.

``Host.getCapabilities`` reports, for each driver type and each
``[backend.NAME]``, whether what its connector runs is present, so an
engine can pick hosts that fit before it asks for an attach.  Only cheap
checks: a PATH lookup, a sysfs or /dev entry; nothing is started.  The
one command run is the attach's own test for enforced multipath, whether
multipathd runs (``multipathd show status``), given by the caller.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

from hostagent import drivers as registry
from hostagent.config import BackendConfig, BrickConfig

log = logging.getLogger(__name__)

# Whether multipathd runs, for a driver and an optional backend: the
# attach's own test (Brick.multipath_ready), so that "ready" and the
# attach's 928 "multipathd is not running" cannot disagree.
MultipathProbe = Callable[[str, BackendConfig | None], bool]

MULTIPATH_TOOLS = ("multipath", "multipathd")
# systemd gives services a PATH with the sbin directories; a shell
# started by a user may not have them.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def which(tool: str) -> bool:
    """True when ``tool`` is an executable on PATH (or in an sbin dir)."""
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    search = os.pathsep.join(path + [p for p in _EXTRA_PATH if p not in path])
    return shutil.which(tool, path=search) is not None


def status(
    driver: str,
    multipath: bool,
    enforce_multipath: bool,
    options: dict[str, str] | None = None,
    multipathd_running: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """``{"ready", "tools", "problems"}`` for one driver with options.

    ``ready`` is false when an attach could not work here; a missing
    multipath tool only counts when multipath is enforced (otherwise
    os-brick falls back to a single path), and so does multipathd not
    running (asked of ``multipathd_running`` once the tools are there).
    ``options`` are a backend's driver-only options (see
    :attr:`hostagent.drivers.base.Driver.options`).
    """
    d = registry.get(driver)
    tools = {t: which(t) for t in d.tools}
    problems = [f"{t} not found" for t, ok in tools.items() if not ok]
    if multipath and d.multipath:
        for t in MULTIPATH_TOOLS:
            tools[t] = which(t)
            if not tools[t] and enforce_multipath:
                problems.append(f"{t} not found and multipath is enforced")
        if (
            enforce_multipath
            and multipathd_running is not None
            and all(tools[t] for t in MULTIPATH_TOOLS)
        ):
            problems += _multipathd_problems(multipathd_running)
    problems += d.host_problems(options or {})
    return {"ready": not problems, "tools": tools, "problems": problems}


def _multipathd_problems(running: Callable[[], bool]) -> list[str]:
    try:
        ok = running()
    except Exception as e:
        # os-brick cannot be loaded (925): the attach cannot tell either.
        log.warning("cannot tell whether multipathd runs: %s", e)
        return ["cannot tell whether multipathd is running"]
    if ok:
        return []
    return ["multipathd is not running and multipath is enforced"]


def drivers(
    brick: BrickConfig, probe: MultipathProbe | None = None
) -> dict[str, dict[str, Any]]:
    """:func:`status` of every allowed driver with the [brick] options.

    ``probe`` tells whether multipathd runs (see :data:`MultipathProbe`).
    """
    return {
        d: status(
            d,
            brick.multipath,
            brick.enforce_multipath,
            {o: str(getattr(brick, o)) for o in registry.get(d).brick_options},
            multipathd_running=_bind(probe, d, None),
        )
        for d in brick.drivers
    }


def backend(
    b: BackendConfig, probe: MultipathProbe | None = None
) -> dict[str, Any]:
    """:func:`status` of one backend with its own options."""
    options = {o: str(getattr(b, o)) for o in registry.get(b.driver).options}
    return status(
        b.driver,
        b.multipath,
        b.enforce_multipath,
        options,
        multipathd_running=_bind(probe, b.driver, b),
    )


def _bind(
    probe: MultipathProbe | None, driver: str, b: BackendConfig | None
) -> Callable[[], bool] | None:
    if probe is None:
        return None
    return lambda: probe(driver, b)
