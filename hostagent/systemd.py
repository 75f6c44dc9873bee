"""systemd integration through systemd-python: notify, fds, journal.

* :func:`notify` speaks the sd_notify protocol (``READY=1``, ``STATUS=``,
  ``WATCHDOG=1``, ``STOPPING=1``); outside systemd (no ``NOTIFY_SOCKET``)
  it does nothing, so the daemon calls it unconditionally.
* :func:`watchdog_interval` reads ``WATCHDOG_USEC``/``WATCHDOG_PID``.
* :func:`listen_sockets` adopts the sockets passed by socket activation
  (``LISTEN_FDS``/``LISTEN_PID``).
* :class:`JournalHandler` logs to journald over its native protocol with
  structured fields (``VOL_ID=``, ``METHOD=``, ``REQUEST_ID=`` ...).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, TextIO

from hostagent.redact import SCRUBBER

log = logging.getLogger(__name__)

JOURNAL_SOCKET = "/run/systemd/journal/socket"

# Record attributes (``extra={...}``) sent as journal fields of the same
# name; everything else about a record goes into MESSAGE.
JOURNAL_FIELDS = ("VOL_ID", "METHOD", "REQUEST_ID", "PEER_UID", "ERROR_ID")
_MAX_FIELD = 512

_PRIORITY = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)


def notify(*fields: str) -> bool:
    """Send ``READY=1``-style fields to the service manager, if any."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    try:
        import systemd.daemon as daemon
    except ImportError:
        log.warning("systemd-python is missing; cannot notify systemd")
        return False
    try:
        return bool(daemon.notify("\n".join(fields)))
    except OSError as e:
        # The manager went away or the socket is full: the service keeps
        # working; systemd (if any) will notice through its own timeouts.
        log.debug("sd_notify failed: %s", e)
        return False


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or ``None`` without watchdog.

    Half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) recommends, so
    one late ping does not get the service killed.  A ``WATCHDOG_PID`` that
    is not this process means the watchdog is someone else's.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number", usec[:40])
        return None
    if value <= 0:
        return None
    return value / 2e6


def listen_sockets() -> list[socket.socket]:
    """The sockets systemd passed to this process, as socket objects.

    Empty unless ``LISTEN_FDS`` is set and ``LISTEN_PID`` is this process
    (sd_listen_fds(3) checks it).  The variables are removed afterwards so
    the helpers os-brick spawns do not believe they were passed sockets.
    A passed descriptor that is not a socket is closed and reported.
    """
    if not os.environ.get("LISTEN_FDS"):
        return []
    import systemd.daemon as daemon

    # sd_listen_fds() checks LISTEN_PID, marks the fds close-on-exec and
    # unsets the C environment; os.environ is a copy, clear it too.
    fds = daemon.listen_fds(True)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sockets = []
    for fd in fds:
        try:
            sockets.append(socket.socket(fileno=fd))
        except OSError as e:
            log.warning("ignoring passed fd %d: %s", fd, e.strerror)
            os.close(fd)
    return sockets


def journal_available() -> bool:
    """True when journald's native socket exists."""
    return os.path.exists(JOURNAL_SOCKET)


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd connected.

    ``JOURNAL_STREAM`` is ``DEVICE:INODE`` of that stream; comparing it
    with stderr (as systemd.exec(5) advises) keeps a ``2>file`` redirect
    under systemd going to the file.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def priority(levelno: int) -> int:
    """The syslog priority of a :mod:`logging` level."""
    for level, prio in _PRIORITY:
        if levelno >= level:
            return prio
    return 7


class JournalHandler(logging.Handler):
    """Send records to journald with structured fields.

    Unlike systemd-python's own handler this one sends a fixed set of
    fields (``MESSAGE``, ``PRIORITY``, ``SYSLOG_IDENTIFIER``, ``LOGGER``,
    ``THREAD_NAME``, ``CODE_*`` and the :data:`JOURNAL_FIELDS` a record
    carries), never a record's raw arguments or exception object, so the
    scrubbing done by :class:`hostagent.redact.ScrubFilter` holds.  If
    journald cannot be reached the line goes to stderr instead of being
    lost.
    """

    def __init__(
        self, identifier: str, fallback: TextIO | None = None
    ) -> None:
        super().__init__()
        self.identifier = identifier
        self.fallback = fallback
        self._send: Any = None

    def _sender(self) -> Any:
        if self._send is None:
            import systemd.journal as journal

            self._send = journal.send
        return self._send

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        """The journal fields for ``record`` besides MESSAGE and CODE_*."""
        out = {
            "PRIORITY": str(priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self.identifier,
            "LOGGER": record.name,
            "THREAD_NAME": record.threadName or "",
        }
        for key in JOURNAL_FIELDS:
            value = getattr(record, key, None)
            if value is not None and value != "":
                out[key] = SCRUBBER.scrub(str(value))[:_MAX_FIELD]
        return out

    def emit(self, record: logging.LogRecord) -> None:
        """Send one record; fall back to stderr if journald is away."""
        try:
            message = self.format(record)
            self._sender()(
                message,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                **self.fields(record),
            )
        except OSError:
            stream = self.fallback or sys.stderr
            try:
                stream.write(f"{record.levelname} {record.name}: ")
                stream.write(self.format(record) + "\n")
                stream.flush()
            except Exception:
                self.handleError(record)
        except Exception:
            self.handleError(record)
