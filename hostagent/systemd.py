"""systemd integration: the sd_notify protocol through systemd-python.

Outside systemd (no ``NOTIFY_SOCKET``) every call here does nothing, so the
daemon calls it unconditionally.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``READY=1``-style fields to the service manager, if any."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    try:
        import systemd.daemon as daemon
    except ImportError:
        log.warning("systemd-python is missing; cannot notify systemd")
        return False
    return bool(daemon.notify("\n".join(fields)))
