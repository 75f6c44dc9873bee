"""Load and validate the TOML configuration.

Every key has a default, so an empty file (or none at all for ``make run``)
is a working configuration.  Anything unknown or ill-typed stops start-up
with a message naming the key: a typo in a config that is silently ignored
is how hosts end up running with defaults nobody chose.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostagent import drivers, ownership
from hostagent.drivers import lightos

DEFAULT_PATH = "/etc/hostagent/hostagent.toml"

# What each driver is and allows: its module in hostagent/drivers/.
KNOWN_DRIVERS = drivers.known()
# Some drivers are opt-in (see their modules).
DEFAULT_DRIVERS = drivers.defaults()
# Backend options that only make sense for one driver.
DRIVER_ONLY_OPTIONS = drivers.driver_options()
BACKEND_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
JOURNAL_MODES = ("auto", "yes", "no")


class ConfigError(Exception):
    """A config file cannot be used; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: listeners and per-connection limits."""

    unix_socket: str = "/run/hostagent/hostagent.sock"
    socket_group: str = ""
    tls_listen: str = ""
    tls_cert: str = "/etc/pki/hostagent/cert.pem"
    tls_key: str = "/etc/pki/hostagent/key.pem"
    tls_ca: str = "/etc/pki/hostagent/ca.pem"
    tls_allowed_subjects: list[str] = field(default_factory=list)
    max_message_bytes: int = 1048576
    max_connections: int = 1024
    # Of max_connections, kept for root's Unix clients.
    reserved_connections: int = 16
    max_connections_per_uid: int = 256
    max_connections_per_subject: int = 1024
    # TLS handshakes in progress from one source address.
    max_handshakes: int = 16
    max_in_flight: int = 64
    max_batch: int = 100
    idle_timeout: float = 300.0
    read_timeout: float = 30.0
    handshake_timeout: float = 5.0


@dataclass(frozen=True)
class StorageConfig:
    """``[storage]``: where the DB, os-brick locks and symlinks live."""

    state_dir: str = "/var/lib/hostagent"
    run_dir: str = "/run/hostagent"
    lock_timeout: float = 30.0
    # What an attached device node gets for qemu (vdsm: vdsm:qemu 0660),
    # kept by a udev rule in udev_rules_dir; empty owner and group: the
    # node is left as udev made it.  A name or a number each.
    device_owner: str = ""
    device_group: str = ""
    device_mode: str = "0660"
    udev_rules_dir: str = "/run/udev/rules.d"
    # A failed detach is retried in the background after this many
    # seconds, the wait doubling up to detach_retry_max.
    detach_retry_initial: float = 5.0
    detach_retry_max: float = 300.0


@dataclass(frozen=True)
class BrickConfig:
    """``[brick]``: which connectors may run and how."""

    drivers: list[str] = field(default_factory=lambda: list(DEFAULT_DRIVERS))
    multipath: bool = True
    enforce_multipath: bool = False
    my_ip: str = ""
    device_scan_attempts: int = 3
    workers: int = 16
    # lightos: where Lightbits' discovery-client watches and answers,
    # and how long its connector waits for the device (os-brick's
    # [os_brick] lightos_discovery_client_* options).
    lightos_discovery_dir: str = lightos.DEFAULT_DISCOVERY_DIR
    lightos_discovery_address: str = lightos.DEFAULT_DISCOVERY_ADDRESS
    lightos_discovery_port: int = lightos.DEFAULT_DISCOVERY_PORT
    lightos_device_wait: float = lightos.DEFAULT_DEVICE_WAIT
    # Globs a ``local`` device path must match (the resolved device or
    # the normal path as given); [] = any free block device.
    local_allowed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BackendConfig:
    """``[backend.NAME]``: a driver type plus its options on this host.

    The host-side half of the Xen storage manager's "backends": the
    engine names a backend in ``attach_volume`` and the agent attaches
    with these options instead of the driver type's ``[brick]``
    defaults.  Keys not given take their value from ``[brick]``.
    """

    driver: str = ""
    multipath: bool = True
    enforce_multipath: bool = False
    device_scan_attempts: int = 3
    # Driver-only options (DRIVER_ONLY_OPTIONS; the driver's module says
    # what each is for).
    storpool_conf: str = ""
    ceph_conf: str = ""
    name: str = field(default="", compare=False)


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: verbosity and destination."""

    level: str = "info"
    # "auto": journald when systemd connected stderr to the journal
    # (JOURNAL_STREAM), "yes": always journald, "no": always stderr.
    journal: str = "auto"


@dataclass(frozen=True)
class Config:
    """The whole configuration, one attribute per TOML section."""

    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    brick: BrickConfig = field(default_factory=BrickConfig)
    log: LogConfig = field(default_factory=LogConfig)
    backend: dict[str, BackendConfig] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        """The SQLite file holding the volume records."""
        return Path(self.storage.state_dir) / "hostagent.db"

    @property
    def lock_dir(self) -> Path:
        """Where os-brick (oslo.concurrency) keeps its lock files."""
        return Path(self.storage.state_dir) / "locks"

    @property
    def volumes_dir(self) -> Path:
        """Where the managed ``<vol_id>`` symlinks live."""
        return Path(self.storage.run_dir) / "volumes"

    @property
    def managed_dir(self) -> Path:
        """Where the ``<sd_id>_<vol_id>`` symlinks live (vdsm's naming)."""
        return Path(self.storage.run_dir) / "managedvolumes"

    @property
    def owns_devices(self) -> bool:
        """Whether attached device nodes get an owner or group."""
        return bool(self.storage.device_owner or self.storage.device_group)


def default_path() -> str:
    """The config path used when ``--config`` is not given."""
    return os.environ.get("HOSTAGENT_CONFIG", DEFAULT_PATH)


def load(path: str | os.PathLike[str] | None) -> Config:
    """Read ``path`` and return a validated :class:`Config`.

    ``None`` means "no file": all defaults.  Raises :class:`ConfigError`
    with the offending key in the message.
    """
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from parsed TOML, checking every key."""
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for name, value in raw.items():
        if name not in hints:
            raise ConfigError(f"unknown section [{name}]")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
        if name == "backend":
            continue  # needs [brick] for its defaults; built below
        if name == "storage":
            value = _numbers_as_text(value)
        sections[name] = _build_section(name, hints[name], value)
    brick = sections.get("brick", BrickConfig())
    sections["backend"] = {
        n: _build_backend(n, v, brick)
        for n, v in raw.get("backend", {}).items()
    }
    config = Config(**sections)
    _check(config)
    return config


def _build_backend(name: str, raw: Any, brick: BrickConfig) -> BackendConfig:
    where = f"backend.{name}"
    if not BACKEND_NAME.match(name):
        raise ConfigError(
            f"[{where}]: a backend name is 1-64 letters, digits, - or _"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table")
    if "name" in raw:
        raise ConfigError(f"unknown key {where}.name")
    values: dict[str, Any] = {
        "multipath": brick.multipath,
        "enforce_multipath": brick.enforce_multipath,
        "device_scan_attempts": brick.device_scan_attempts,
    }
    values.update(_build_section(where, BackendConfig, raw).__dict__)
    for key in ("multipath", "enforce_multipath", "device_scan_attempts"):
        if key not in raw:
            values[key] = getattr(brick, key)
    values["name"] = name
    b = BackendConfig(**values)
    if not b.driver:
        raise ConfigError(f"{where}.driver is required")
    if b.driver not in KNOWN_DRIVERS:
        raise ConfigError(
            f"{where}.driver: unknown driver {b.driver!r}; known: "
            + ", ".join(KNOWN_DRIVERS)
        )
    if b.driver not in brick.drivers:
        raise ConfigError(
            f"{where}.driver: {b.driver!r} is not in brick.drivers; "
            "add it there to allow it on this host"
        )
    for key, only in DRIVER_ONLY_OPTIONS.items():
        value = getattr(b, key)
        if value and b.driver != only:
            raise ConfigError(f"{where}.{key} applies to {only} backends only")
        if value and not os.path.isabs(value):
            raise ConfigError(f"{where}.{key} must be an absolute path")
    _positive(f"{where}.device_scan_attempts", b.device_scan_attempts)
    return b


def _build_section(name: str, cls: type[Any], raw: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"unknown key {name}.{key}")
        values[key] = _coerce(f"{name}.{key}", hints[key], value)
    return cls(**values)


# Keys that take a name or a number (a uid, a gid, an octal mode).
_NAME_OR_NUMBER = ("device_owner", "device_group", "device_mode")


def _numbers_as_text(raw: dict[str, Any]) -> dict[str, Any]:
    """``device_group = 107`` as ``"107"``, ``device_mode = 0o640`` as
    ``"0640"``: the keys' type is text."""
    out = dict(raw)
    for k in _NAME_OR_NUMBER:
        v = raw.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            out[k] = f"{v:04o}" if k == "device_mode" else str(v)
    return out


def _coerce(key: str, hint: Any, value: Any) -> Any:
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list")
        return [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    if isinstance(hint, types.UnionType):
        raise AssertionError(f"unsupported type for {key}")
    # TOML has distinct bool and int types; Python's bool is an int, so
    # test bool first and never accept one for the other.
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"{key} must be of type {hint.__name__}")
    return value


def _check(c: Config) -> None:
    """Range and format checks that types alone cannot express."""
    s = c.server
    _positive("server.max_message_bytes", s.max_message_bytes, minimum=1024)
    _positive("server.max_connections", s.max_connections)
    _positive("server.max_handshakes", s.max_handshakes)
    _positive("server.max_connections_per_uid", s.max_connections_per_uid)
    _positive(
        "server.max_connections_per_subject", s.max_connections_per_subject
    )
    # (At most half of max_connections is ever kept back: see limits.)
    _positive("server.reserved_connections", s.reserved_connections, 0)
    _positive("server.max_in_flight", s.max_in_flight)
    _positive("server.max_batch", s.max_batch)
    if not s.unix_socket and not s.tls_listen:
        raise ConfigError(
            "server.unix_socket: empty, and server.tls_listen is empty too; "
            "the agent would have no listener"
        )
    if s.unix_socket and not os.path.isabs(s.unix_socket):
        raise ConfigError("server.unix_socket must be an absolute path")
    if s.tls_listen:
        parse_hostport("server.tls_listen", s.tls_listen)
        for key in ("tls_cert", "tls_key", "tls_ca"):
            if not os.path.isabs(getattr(s, key)):
                raise ConfigError(f"server.{key} must be an absolute path")
    for i, cn in enumerate(s.tls_allowed_subjects):
        if not cn.strip():
            raise ConfigError(f"server.tls_allowed_subjects[{i}] is empty")
    if s.idle_timeout < 0:
        raise ConfigError("server.idle_timeout must be >= 0 (0 = no limit)")
    if s.read_timeout <= 0:
        raise ConfigError("server.read_timeout must be > 0")
    if s.handshake_timeout <= 0:
        raise ConfigError("server.handshake_timeout must be > 0")
    for key in ("state_dir", "run_dir"):
        if not os.path.isabs(getattr(c.storage, key)):
            raise ConfigError(f"storage.{key} must be an absolute path")
    if c.storage.lock_timeout < 0:
        raise ConfigError("storage.lock_timeout must be >= 0")
    _check_ownership(c.storage)
    if c.storage.detach_retry_initial <= 0:
        raise ConfigError("storage.detach_retry_initial must be > 0")
    if c.storage.detach_retry_max < c.storage.detach_retry_initial:
        raise ConfigError(
            "storage.detach_retry_max must be >= storage.detach_retry_initial"
        )
    for i, d in enumerate(c.brick.drivers):
        if d not in KNOWN_DRIVERS:
            raise ConfigError(
                f"brick.drivers[{i}]: unknown driver {d!r}; known: "
                + ", ".join(KNOWN_DRIVERS)
            )
    if c.brick.my_ip:
        try:
            ipaddress.ip_address(c.brick.my_ip)
        except ValueError:
            raise ConfigError(
                "brick.my_ip must be an IP address or empty"
            ) from None
    _check_lightos(c.brick)
    _positive("brick.device_scan_attempts", c.brick.device_scan_attempts)
    _positive("brick.workers", c.brick.workers)
    for i, glob in enumerate(c.brick.local_allowed):
        _check_local_glob(f"brick.local_allowed[{i}]", glob)
    if c.log.level not in LOG_LEVELS:
        raise ConfigError("log.level must be one of " + ", ".join(LOG_LEVELS))
    if c.log.journal not in JOURNAL_MODES:
        raise ConfigError(
            "log.journal must be one of " + ", ".join(JOURNAL_MODES)
        )


def _check_lightos(b: BrickConfig) -> None:
    if not os.path.isabs(b.lightos_discovery_dir):
        raise ConfigError(
            "brick.lightos_discovery_dir must be an absolute path"
        )
    if not b.lightos_discovery_address.strip() or any(
        c.isspace() for c in b.lightos_discovery_address
    ):
        raise ConfigError(
            "brick.lightos_discovery_address must be a host name or address"
        )
    if not 1 <= b.lightos_discovery_port <= 65535:
        raise ConfigError("brick.lightos_discovery_port must be 1..65535")
    if b.lightos_device_wait <= 0:
        raise ConfigError("brick.lightos_device_wait must be > 0")


def _check_ownership(s: StorageConfig) -> None:
    """The owner, group and mode must mean something on this host."""
    try:
        if s.device_owner:
            ownership.parse_owner(s.device_owner)
        if s.device_group:
            ownership.parse_group(s.device_group)
        ownership.parse_mode(s.device_mode)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not os.path.isabs(s.udev_rules_dir):
        raise ConfigError("storage.udev_rules_dir must be an absolute path")


def _check_local_glob(key: str, glob: str) -> None:
    """A ``local_allowed`` glob must be able to match a device path.

    Matching is by path segment on normal absolute paths (see
    :func:`hostagent.devices.allowed`): a relative glob, one with
    ``.``/``..``/``//`` segments or control characters would match
    nothing, or not what its writer meant.
    """
    if not glob.startswith("/"):
        raise ConfigError(f"{key} must be an absolute path glob")
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in glob):
        raise ConfigError(f"{key} holds control characters")
    if os.path.normpath(glob) != glob or glob == "/":
        raise ConfigError(
            f"{key} must be a normal path glob (no '.', '..', '//' or "
            "trailing '/'), e.g. \"/dev/loop*\""
        )
    if glob.startswith(("/proc/", "/sys/")):
        raise ConfigError(f"{key}: /proc and /sys never hold a VM's disk")


def check_dirs(c: Config) -> None:
    """Check that ``storage.state_dir`` and ``storage.run_dir`` are usable.

    Each must be a writable directory, or be creatable: its nearest
    existing ancestor is a writable directory.  Raises
    :class:`ConfigError` naming the key: a read-only or misplaced
    directory otherwise surfaces later as an ``[Errno 30]`` on some file
    inside it, with nothing that points at the config.
    """
    for key in ("state_dir", "run_dir"):
        path = Path(getattr(c.storage, key))
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        where = f"storage.{key} {path}"
        if probe != path:
            where += f" (to be created in {probe})"
        if not probe.is_dir():
            raise ConfigError(f"{where}: {probe} is not a directory")
        # access(2) reports EROFS for a read-only mount even to root.
        if not os.access(probe, os.W_OK | os.X_OK):
            why = (
                "read-only file system"
                if _read_only(probe)
                else ("not writable")
            )
            raise ConfigError(f"{where}: {why}")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _positive(key: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}")


def parse_hostport(key: str, value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too), naming ``key`` on error."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key} must be HOST:PORT, got {value!r}")
    return host, int(port)


def log_level(c: Config) -> int:
    """The :mod:`logging` level for ``log.level``."""
    return int(getattr(logging, c.log.level.upper()))


def backend_options(b: BackendConfig) -> dict[str, Any]:
    """A backend's options as plain data (capabilities, logs)."""
    out = dataclasses.asdict(b)
    del out["name"]
    return {k: v for k, v in out.items() if v != ""}


def as_dict(c: Config) -> dict[str, Any]:
    """The configuration as plain data (for logging the effective config)."""
    return dataclasses.asdict(c)
