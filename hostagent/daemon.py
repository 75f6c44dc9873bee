"""``hostagentd``: start-up, signals, shutdown and logging set-up."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TextIO

from hostagent import __version__, config, systemd
from hostagent.api import Api
from hostagent.brick import Brick
from hostagent.config import Config, ConfigError
from hostagent.db import Database, DatabaseError
from hostagent.redact import ScrubFilter
from hostagent.transport import ListenError, Server
from hostagent.udev import Udev
from hostagent.volumes import VolumeService

log = logging.getLogger("hostagent")

SHUTDOWN_TIMEOUT = 60.0
EXIT_CONFIG = 2
EXIT_STARTUP = 1

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(cfg: Config, stream: TextIO | None = None) -> None:
    """Log to stderr, with secrets scrubbed from every line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.log_level(cfg))


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
        self.service = VolumeService(cfg, db, brick, Udev())
        self.api = Api(self.service, cfg.server.max_batch)
        self.server = Server(cfg.server, self.api.answer)
        self._lock_fd = -1

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

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, shut down; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            self._take_instance_lock()
            await self.service.open()
        except (DatabaseError, ListenError, OSError) as e:
            log.critical("cannot start: %s", e)
            return EXIT_STARTUP
        self.service.start_brick_load()
        try:
            if self.cfg.server.unix_socket:
                await self.server.listen_unix(
                    self.cfg.server.unix_socket, self.cfg.server.socket_group
                )
        except ListenError as e:
            log.critical("cannot start: %s", e)
            await self.service.close()
            return EXIT_STARTUP
        systemd.notify("READY=1", "STATUS=serving")
        log.info("hostagentd %s ready (pid %d)", __version__, os.getpid())
        await self.stop.wait()
        log.info("shutting down")
        systemd.notify("STOPPING=1", "STATUS=shutting down")
        await self.server.close(SHUTDOWN_TIMEOUT)
        await self.service.close()
        if self.cfg.server.unix_socket:
            Path(self.cfg.server.unix_socket).unlink(missing_ok=True)
        log.info("stopped")
        return 0

    def reload(self) -> None:
        """SIGHUP: re-read the config file and apply its log level."""
        try:
            fresh = config.load(self.config_path)
        except ConfigError as e:
            log.error("SIGHUP: keeping the old log level: %s", e)
            return
        logging.getLogger().setLevel(config.log_level(fresh))
        log.info("SIGHUP: log level is now %s", fresh.log.level)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hostagentd``."""
    parser = argparse.ArgumentParser(
        prog="hostagentd",
        description="Per-host storage attachment agent (JSON-RPC).",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config file (default: $HOSTAGENT_CONFIG or "
        f"{config.DEFAULT_PATH}; a missing default file means defaults)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config file and exit",
    )
    parser.add_argument(
        "--version", action="version", version=f"hostagentd {__version__}"
    )
    args = parser.parse_args(argv)
    path: str | None = args.config or config.default_path()
    if args.config is None and path and not os.path.exists(path):
        path = None
    try:
        cfg = config.load(path)
    except ConfigError as e:
        print(f"hostagentd: bad configuration: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"hostagentd: {path or 'built-in defaults'}: OK")
        return 0
    setup_logging(cfg)
    if path is None:
        log.info("no config file; using built-in defaults")
    return asyncio.run(Daemon(cfg, path).run())


if __name__ == "__main__":
    sys.exit(main())
