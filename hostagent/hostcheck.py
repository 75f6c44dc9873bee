"""The host settings the agent relies on, for operators.

Today: multipath (see :mod:`hostagent.mpathconf` for what and why).
``getCapabilities`` reports them, ``hostagentd --check-config`` prints
them, and the daemon logs a warning at start-up when they are not what
a detach with the target gone needs.
"""

from __future__ import annotations

import logging

from hostagent import mpathconf
from hostagent.config import Config
from hostagent.mpathconf import MultipathSettings

log = logging.getLogger(__name__)

DROP_IN = "contrib/multipath-hostagent.conf"


def multipath_used(cfg: Config) -> bool:
    """Whether any volume may be attached through dm-multipath."""
    return cfg.brick.multipath or any(
        b.multipath for b in cfg.backend.values()
    )


def capabilities(cfg: Config) -> dict[str, object]:
    """``getCapabilities``' ``multipath_settings`` (none without
    multipath); runs ``multipathd show config``: call it on a worker."""
    if not multipath_used(cfg):
        return {}
    return {"multipath_settings": mpathconf.read_settings().as_data()}


def multipath_lines(settings: MultipathSettings) -> list[str]:
    """``--check-config``'s lines about the multipath settings."""
    lines = [
        f"multipath settings ({settings.source}): "
        f"user_friendly_names {settings.user_friendly_names or '(unset)'}, "
        f"no_path_retry {settings.no_path_retry or '(unset)'}, "
        f"flush_on_last_del {settings.flush_on_last_del or '(unset)'}"
    ]
    lines += [f"multipath WARNING: {p}" for p in settings.problems]
    if settings.problems:
        lines.append(
            "multipath: install the hostagent drop-in in "
            f"/etc/multipath/conf.d/ ({DROP_IN}) and run "
            "'multipathd reconfigure'"
        )
    return lines


def warn_multipath(cfg: Config) -> None:
    """Log a warning per multipath problem (blocks: on a worker).

    Run at start-up off the path to READY: ``multipathd show config``
    is a command, and the agent serves without multipath anyway.
    """
    if not multipath_used(cfg):
        return
    settings = mpathconf.read_settings()
    for problem in settings.problems:
        log.warning(
            "multipath settings (%s): %s; a detach with the storage gone "
            "may not finish or the path returned may be wrong (see %s)",
            settings.source,
            problem,
            DROP_IN,
        )
    if settings.ok:
        log.info("multipath settings OK (%s)", settings.source)
