"""``hostagentd``: start-up, signals, shutdown and logging set-up."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TextIO

from hostagent import (
    __version__,
    api,
    cmdline,
    config,
    hostcheck,
    mpathconf,
    systemd,
)
from hostagent.api import Api
from hostagent.brick import Brick
from hostagent.config import Config, ConfigError
from hostagent.db import Database, DatabaseError, DatabaseNeedsOperator
from hostagent.lognoise import LibraryNoiseFilter
from hostagent.logtext import EscapeFilter
from hostagent.redact import ScrubFilter
from hostagent.service import VolumeService
from hostagent.service.host import Host
from hostagent.transport import (
    ListenError,
    Server,
    raise_nofile_limit,
    tls_context,
)
from hostagent.udev import Udev

log = logging.getLogger("hostagent")

SHUTDOWN_TIMEOUT = 60.0
EXIT_CONFIG = 2
EXIT_STARTUP = 1
# The database needs an operator (damaged, moved aside, too new): a
# restart cannot help, so the unit's RestartPreventExitStatus= names it.
EXIT_NEEDS_OPERATOR = 3

# Without a watchdog, how often STATUS= is refreshed (only when it changed).
STATUS_PERIOD = 5.0

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(message)s"
SYSLOG_IDENTIFIER = "hostagentd"


class RequestIdFilter(logging.Filter):
    """Tag records with the id of the JSON-RPC request being handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add ``REQUEST_ID`` when the record does not carry one."""
        if getattr(record, "REQUEST_ID", None) is None:
            record.REQUEST_ID = api.current_request_id()
        return True


def use_journal(cfg: Config) -> bool:
    """Whether ``log.journal`` (and the environment) selects journald."""
    mode = cfg.log.journal
    if mode == "no":
        return False
    wanted = mode == "yes" or systemd.stderr_is_journal()
    return wanted and systemd.journal_available()


def setup_logging(cfg: Config, stream: TextIO | None = None) -> str:
    """Log to journald or to stderr, scrubbed and escaped on both paths.

    Returns ``"journal"`` or ``"stderr"``.
    """
    handler: logging.Handler
    if use_journal(cfg):
        handler = systemd.JournalHandler(SYSLOG_IDENTIFIER, fallback=stream)
        handler.setFormatter(logging.Formatter(JOURNAL_FORMAT))
        where = "journal"
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        where = "stderr"
    handler.addFilter(LibraryNoiseFilter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(ScrubFilter())
    # Last: secrets are found in the raw text, then it is made one line.
    handler.addFilter(EscapeFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.log_level(cfg))
    if cfg.log.journal == "yes" and where == "stderr":
        log.warning(
            'log.journal = "yes" but %s does not exist; logging to stderr',
            systemd.JOURNAL_SOCKET,
        )
    return where


def _is_unix_listener(sock: socket.socket) -> bool:
    try:
        accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        return False
    return (
        sock.family == socket.AF_UNIX
        and sock.type == socket.SOCK_STREAM
        and bool(accepting)
    )


def _unix_name(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, bytes):  # abstract namespace
        return "@" + name[1:].decode(errors="replace")
    return str(name) or "(unnamed)"


class Daemon:
    """One running agent: database, service, listeners."""

    def __init__(self, cfg: Config, config_path: str | None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.stop = asyncio.Event()
        db = Database(cfg.db_path)
        brick = Brick(
            cfg.brick, cfg.lock_dir, Path(cfg.storage.state_dir) / "mnt"
        )
        self.service = VolumeService(Host(cfg, db, brick, Udev()))
        self.api = Api(self.service, cfg.server.max_batch)
        self.server = Server(
            cfg.server,
            self.api.answer,
            listening=self.service.events.is_subscribed,
            events=self.service.events,
        )
        self.listeners: list[str] = []
        self.ready = False
        self._lock_fd = -1
        self._opened = False
        self._bound_socket: str | None = None
        self._status_sent: str | None = None

    # -- systemd -----------------------------------------------------------

    def status(self, text: str, *fields: str) -> None:
        """Tell systemd what the daemon is doing (``STATUS=``)."""
        self._status_sent = text
        systemd.notify(*fields, f"STATUS={text}")

    def serving_status(self) -> str:
        """The ``STATUS=`` line while serving."""
        return (
            f"serving on {', '.join(self.listeners) or 'nothing'}: "
            f"{self.server.connection_count} connection(s), "
            f"{self.server.request_count} request(s) in flight"
        )

    async def heartbeat(self) -> None:
        """Ping the watchdog and refresh ``STATUS=`` from the event loop.

        Running on the loop (not a thread) is the point: if the loop is
        stuck, the pings stop and systemd restarts the service.
        """
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        watchdog = systemd.watchdog_interval()
        if watchdog is not None:
            log.debug("watchdog: pinging every %.3f s", watchdog)
        while True:
            fields = ["WATCHDOG=1"] if watchdog is not None else []
            if self.ready and not self.stop.is_set():
                status = self.serving_status()
                if status != self._status_sent:
                    self._status_sent = status
                    fields.append(f"STATUS={status}")
            if fields:
                systemd.notify(*fields)
            await asyncio.sleep(
                watchdog if watchdog is not None else STATUS_PERIOD
            )

    # -- start-up ----------------------------------------------------------

    def _take_instance_lock(self) -> None:
        state = Path(self.cfg.storage.state_dir)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state / "hostagent.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ListenError(
                f"another hostagentd is running with state_dir {state}"
            ) from None
        self._lock_fd = fd

    async def _listen(self) -> None:
        """Serve the sockets systemd passed, or bind ``unix_socket``."""
        passed = []
        for sock in systemd.listen_sockets():
            if _is_unix_listener(sock):
                passed.append(sock)
            else:
                log.warning(
                    "ignoring a socket passed by systemd that is not a "
                    "listening Unix stream socket: %s",
                    sock,
                )
                sock.close()
        for sock in passed:
            name = _unix_name(sock)
            await self.server.serve_socket(sock)
            self.listeners.append(f"unix:{name}")
            log.info("listening on unix:%s (socket activation)", name)
            if name != self.cfg.server.unix_socket:
                log.warning(
                    "server.unix_socket is %s but systemd passed %s; "
                    "serving the passed socket",
                    self.cfg.server.unix_socket or '""',
                    name,
                )
        if not passed and self.cfg.server.unix_socket:
            path = self.cfg.server.unix_socket
            await self.server.listen_unix(path, self.cfg.server.socket_group)
            self._bound_socket = path
            self.listeners.append(f"unix:{path}")
        if self.cfg.server.tls_listen:
            await self.server.listen_tls(self.cfg.server.tls_listen)
            self.listeners.append(f"tls:{self.cfg.server.tls_listen}")

    async def startup(self) -> None:
        """Everything before ``READY=1``; raises when the agent cannot run.

        Each step says what it does in ``STATUS=``; the watchdog is already
        being pinged, so a slow step is not mistaken for a hang.
        """
        self.status("taking the instance lock")
        self._take_instance_lock()
        self.status("opening the database")
        await self.service.open()
        self._opened = True
        self.service.start_brick_load()
        # Before listening: no client may see a half-done attach or detach.
        self.status("reconciling interrupted operations")
        await self.service.reconcile()
        # After reconciling: the device states noted are the settled ones.
        self.status("watching device events")
        await self.service.events.start()
        raise_nofile_limit(self.cfg.server.max_connections)
        self.status("listening")
        await self._listen()
        # Off the start-up path: lvmconfig and multipathd take tens of
        # milliseconds.
        self.service.check_host()

    async def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish, close the DB."""
        self.ready = False
        n = self.server.request_count
        log.info("shutting down; %d request(s) in flight", n)
        self.status(
            f"stopping: waiting up to {SHUTDOWN_TIMEOUT:g} s for {n} "
            "request(s) in flight",
            "STOPPING=1",
        )
        await self.server.close(SHUTDOWN_TIMEOUT)
        await self.service.events.stop()
        self.status("stopping: closing the database")
        await self.service.close()
        self._opened = False
        # A socket passed by systemd is systemd's: it stays, and queues
        # connections for the next start.  Only our own bind is removed.
        if self._bound_socket:
            Path(self._bound_socket).unlink(missing_ok=True)

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, shut down; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        beat = asyncio.create_task(self.heartbeat())
        try:
            try:
                await self.startup()
            except (DatabaseError, ListenError, OSError) as e:
                log.critical("cannot start: %s", e)
                self.status(f"cannot start: {e}")
                await self.server.close(0)
                if self._opened:
                    await self.service.events.stop()
                    await self.service.close()
                # e.g. the TLS listener failed after the Unix one bound.
                if self._bound_socket:
                    Path(self._bound_socket).unlink(missing_ok=True)
                if isinstance(e, DatabaseNeedsOperator):
                    return EXIT_NEEDS_OPERATOR
                return EXIT_STARTUP
            # A SIGTERM during start-up: never claim to be ready.
            if not self.stop.is_set():
                self.ready = True
                self.status(self.serving_status(), "READY=1")
                log.info(
                    "hostagentd %s ready (pid %d), serving on %s",
                    __version__,
                    os.getpid(),
                    ", ".join(self.listeners),
                )
                await self.stop.wait()
            await self.shutdown()
        finally:
            beat.cancel()
        log.info("stopped")
        return 0

    def reload(self) -> None:
        """SIGHUP: re-read the config file and apply its log level."""
        # RELOADING=1 ... READY=1 brackets the reload for systemctl; during
        # start-up READY=1 would be a lie, so only once serving.
        if self.ready:
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            systemd.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
        try:
            fresh = config.load(self.config_path)
        except ConfigError as e:
            log.error("SIGHUP: keeping the old log level: %s", e)
        else:
            # Logged under the more verbose of the two levels, so raising
            # the level to "warning" still leaves a trace of it.
            root = logging.getLogger()
            level, before = config.log_level(fresh), root.level
            if level >= before:
                log.info("SIGHUP: log level is now %s", fresh.log.level)
            root.setLevel(level)
            if level < before:
                log.info("SIGHUP: log level is now %s", fresh.log.level)
        if self.ready:
            systemd.notify("READY=1")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hostagentd``."""
    parser = cmdline.daemon_parser()
    args = parser.parse_args(argv)
    path: str | None = args.config or config.default_path()
    if args.config is None and path and not os.path.exists(path):
        path = None
    try:
        cfg = config.load(path)
        config.check_dirs(cfg)
    except ConfigError as e:
        print(f"hostagentd: bad configuration: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        try:
            if cfg.server.tls_listen:
                tls_context(cfg.server)
        except ListenError as e:
            print(f"hostagentd: bad configuration: {e}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"hostagentd: {path or 'built-in defaults'}: OK")
        if hostcheck.multipath_used(cfg):
            # The host's settings, not the agent's file: reported, never
            # a failed check (the agent serves without multipath).
            for line in hostcheck.multipath_lines(mpathconf.read_settings()):
                print(f"hostagentd: {line}")
        return 0
    where = setup_logging(cfg)
    log.debug("logging to %s", where)
    if path is None:
        log.info("no config file; using built-in defaults")
    return asyncio.run(Daemon(cfg, path).run())


if __name__ == "__main__":
    sys.exit(main())
