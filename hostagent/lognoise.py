"""Library log records an operator does not need at info level.

os-brick logs a full traceback (``LOG.exception``) for failures the agent
then reports itself, in one line with the error class; oslo.service says
which backend it loaded at every start; the LightOS connector logs the
host NQN on every ``get_connector_properties``.  This filter moves such
records to debug: they are still there with ``log.level = "debug"``.
"""

from __future__ import annotations

import logging

# Loggers whose records with a traceback go to debug.
LIBRARIES = ("os_brick", "oslo")

# (logger name, start of the message) of routine library lines.
ROUTINE = (
    ("oslo_service.backend", "Loading backend:"),
    ("oslo_service.backend", "Backend '"),
    ("os_brick.initiator.connectors.lightos", "Current host hostNQN"),
)


def _library(name: str) -> bool:
    return any(name == lib or name.startswith(lib) for lib in LIBRARIES)


class LibraryNoiseFilter(logging.Filter):
    """Demote library tracebacks and routine lines to debug.

    Put on a handler: a demoted record is dropped unless the root logger
    lets debug through (the level may change at SIGHUP, so it is read
    for each record).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite a noisy record's level; keep it only at debug."""
        if record.levelno <= logging.DEBUG or not _library(record.name):
            return True
        noisy = record.exc_info is not None or any(
            record.name == name
            and isinstance(record.msg, str)
            and record.msg.startswith(start)
            for name, start in ROUTINE
        )
        if not noisy:
            return True
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)
