"""The os-brick adapter: the only module that imports os_brick.

os-brick runs in this process as root: the privsep contexts are switched to
"client mode off", so their entrypoints run in-process instead of through
sudo and a privsep daemon (the agent is the privileged daemon).  Every call
here blocks; the volume service runs them on worker threads.

Any exception a connector raises becomes :class:`ConnectorFailed` (926)
with the exception's class name in ``data``, its text scrubbed of secrets.

Fail points (see flow.py) around the connector calls:
``brick.before_connect_volume``, ``brick.after_connect_volume`` (the
connection is up but os-brick has not returned: nothing recorded it),
``brick.before_disconnect_volume`` and ``brick.after_disconnect_volume``.
There, ``raise`` raises oslo's ``ProcessExecutionError``, what os-brick
lets through when a command it runs (``iscsiadm``, ``multipath -f``)
fails, so a tested failure takes the same path as a real one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import warnings
from pathlib import Path
from typing import Any

from hostagent.config import BrickConfig
from hostagent.errors import BrickUnavailable, ConnectorFailed
from hostagent.flow import FailPointError, FailPoints
from hostagent.redact import SCRUBBER

log = logging.getLogger(__name__)

# Drivers whose devices may be multipathed through dm-multipath.
MULTIPATH_DRIVERS = frozenset({"iscsi", "fibre_channel"})

_MAX_ERROR_TEXT = 2000


class Brick:
    """Connector properties, connect and disconnect through os-brick."""

    def __init__(
        self,
        config: BrickConfig,
        lock_dir: Path,
        mount_dir: Path,
        failpoints: FailPoints | None = None,
    ):
        self.config = config
        self.failpoints = failpoints or FailPoints.from_env()
        self.lock_dir = lock_dir
        self.mount_dir = mount_dir
        self._lock = threading.Lock()
        self._loaded = False
        self._error: str | None = None
        self._connectors: dict[str, Any] = {}
        _import_eventlet_here()

    @property
    def loaded(self) -> bool:
        """True once os-brick was imported and set up."""
        return self._loaded

    def load(self) -> None:
        """Import and configure os-brick (about half a second; idempotent).

        Raises :class:`BrickUnavailable` when it cannot be imported; the
        reason is kept and repeated on later calls.
        """
        with self._lock:
            if self._loaded:
                return
            if self._error is not None:
                raise BrickUnavailable(data={"reason": self._error})
            try:
                self._setup()
            except Exception as e:
                self._error = f"{type(e).__name__}: {e}"
                log.error("os-brick is not usable: %s", self._error)
                raise BrickUnavailable(data={"reason": self._error}) from e
            self._loaded = True

    def _setup(self) -> None:
        with warnings.catch_warnings():
            # oslo.privsep imports eventlet only to warn that it is
            # deprecated; the warning says nothing about this agent.
            warnings.simplefilter("ignore")
            import os_brick
            from os_brick import privileged
            from os_brick.initiator import connector  # noqa: F401
            from oslo_concurrency import lockutils
            from oslo_config import cfg

        self.lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lockutils.set_defaults(lock_path=str(self.lock_dir))
        cfg.CONF(
            [],
            project="hostagent",
            default_config_files=[],
            default_config_dirs=[],
        )
        os_brick.setup(cfg.CONF)
        # The agent already runs as root: run privileged calls in-process
        # rather than through sudo and a privsep helper daemon.
        privileged.default.set_client_mode(False)
        privileged.brick_privsep_hide_output.set_client_mode(False)

    def my_ip(self) -> str:
        """``brick.my_ip``, or the address of the default route."""
        if self.config.my_ip:
            return self.config.my_ip
        # A UDP connect sends nothing; it only asks the kernel which local
        # address would be used to reach that (documentation) address.
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("192.0.2.1", 9))
                return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"

    def connector_properties(self) -> dict[str, Any]:
        """os-brick's ``get_connector_properties`` for this host."""
        self.load()
        from os_brick.initiator import connector

        try:
            props: dict[str, Any] = connector.get_connector_properties(
                "",
                self.my_ip(),
                self.config.multipath,
                self.config.enforce_multipath,
            )
        except Exception as e:
            raise _failed("get_connector_properties", None, e) from e
        return props

    def connect(self, driver: str, data: dict[str, Any]) -> dict[str, Any]:
        """Run the connector's ``connect_volume``; return the device info."""
        conn = self._connector(driver)
        try:
            self._failpoint("brick.before_connect_volume")
            info = conn.connect_volume(data)
            self._failpoint("brick.after_connect_volume")
        except Exception as e:
            raise _failed("connect_volume", driver, e) from e
        if not isinstance(info, dict):
            raise ConnectorFailed(
                f"{driver} connector returned no device information",
                {"driver": driver, "error_class": type(info).__name__},
            )
        return dict(info)

    def disconnect(
        self,
        driver: str,
        data: dict[str, Any],
        attachment: dict[str, Any] | None,
        force: bool = False,
    ) -> None:
        """Run the connector's ``disconnect_volume``."""
        conn = self._connector(driver)
        try:
            self._failpoint("brick.before_disconnect_volume")
            # An attach killed before os-brick returned has no device
            # info; connectors then find the devices from ``data`` alone
            # (iSCSI: the sessions of target_iqn(s)/target_portal(s)).
            conn.disconnect_volume(data, attachment or {}, force=force)
            self._failpoint("brick.after_disconnect_volume")
        except Exception as e:
            raise _failed("disconnect_volume", driver, e) from e

    def _failpoint(self, name: str) -> None:
        try:
            self.failpoints.hit(name)
        except FailPointError as e:
            from oslo_concurrency import processutils

            raise processutils.ProcessExecutionError(
                stderr=str(e), exit_code=1, cmd=name
            ) from e

    def uses_multipath(self, driver: str) -> bool:
        """Whether volumes of ``driver`` are attached through multipath."""
        return self.config.multipath and driver in MULTIPATH_DRIVERS

    def _connector(self, driver: str) -> Any:
        self.load()
        conn = self._connectors.get(driver)
        if conn is not None:
            return conn
        from os_brick.initiator import connector

        kwargs: dict[str, Any] = {}
        if driver == "nfs":
            self.mount_dir.mkdir(parents=True, exist_ok=True)
            kwargs["nfs_mount_point_base"] = str(self.mount_dir)
        try:
            conn = connector.InitiatorConnector.factory(
                driver.upper(),
                "",
                use_multipath=self.uses_multipath(driver),
                device_scan_attempts=self.config.device_scan_attempts,
                enforce_multipath=self.config.enforce_multipath,
                **kwargs,
            )
        except Exception as e:
            raise _failed("create connector", driver, e) from e
        with self._lock:
            return self._connectors.setdefault(driver, conn)


def _import_eventlet_here() -> None:
    """Import eventlet on the calling (main) thread.

    oslo.privsep and oslo.service import eventlet.  Imported first from a
    worker thread, eventlet leaves that thread impossible to join, so the
    interpreter hangs at exit after a clean shutdown (eventlet 0.41).  The
    rest of os-brick can then load on a worker without delaying READY.
    Its DNS module is skipped: os-brick never resolves names through it.
    """
    os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
    # Without eventlet there is no os-brick either; load() reports that.
    with warnings.catch_warnings(), contextlib.suppress(ImportError):
        warnings.simplefilter("ignore")
        import eventlet  # noqa: F401


def _failed(operation: str, driver: str | None, e: BaseException) -> Exception:
    text = SCRUBBER.scrub(str(e))[:_MAX_ERROR_TEXT]
    cls = type(e).__name__
    what = f"{driver} {operation}" if driver else operation
    log.warning("%s failed: %s: %s", what, cls, text)
    return ConnectorFailed(
        f"{what} failed: {cls}: {text.splitlines()[0] if text else ''}",
        {
            "driver": driver,
            "operation": operation,
            "error_class": cls,
            "error": text,
        },
    )
