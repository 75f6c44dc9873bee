"""The os-brick adapter: the only module that imports os_brick.

os-brick runs in this process as root: the privsep contexts are switched to
"client mode off", so their entrypoints run in-process instead of through
sudo and a privsep daemon (the agent is the privileged daemon).  Every call
here blocks; the volume service runs them on worker threads.

Any exception a connector raises becomes :class:`ConnectorFailed` (926)
with the exception's class name in ``data``, its text scrubbed of secrets.

Fail points (see failpoints.py) around the connector calls:
``brick.before_connect_volume``, ``brick.after_connect_volume`` (the
connection is up but os-brick has not returned: nothing recorded it),
``brick.before_disconnect_volume`` and ``brick.after_disconnect_volume``.
There, ``raise`` raises oslo's ``ProcessExecutionError``, what os-brick
lets through when a command it runs (``iscsiadm``, ``multipath -f``)
fails, so a tested failure takes the same path as a real one.
"""

from __future__ import annotations

import configparser
import contextlib
import functools
import logging
import os
import socket
import threading
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from hostagent import drivers
from hostagent.config import BackendConfig, BrickConfig
from hostagent.drivers.rbd import RBD_SYSFS, rbd_kernel_maps
from hostagent.drivers.storpool import read_storpool_conf
from hostagent.errors import BrickUnavailable, ConnectorFailed
from hostagent.failpoints import FailPointError, FailPoints
from hostagent.redact import SCRUBBER

log = logging.getLogger(__name__)

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

    def connector_properties(self) -> dict[str, Any]:
        """os-brick's ``get_connector_properties`` for this host."""
        self.load()
        from os_brick.initiator import connector

        try:
            props: dict[str, Any] = connector.get_connector_properties(
                "",
                host_ip(self.config),
                self.config.multipath,
                self.config.enforce_multipath,
            )
        except Exception as e:
            raise _failed("get_connector_properties", None, e) from e
        # The agent always maps RBD images on this host (see connector).
        props["do_local_attach"] = True
        return props

    def connect(
        self,
        driver: str,
        data: dict[str, Any],
        backend: BackendConfig | None = None,
    ) -> dict[str, Any]:
        """Run the connector's ``connect_volume``; return the device info.

        ``backend`` (a ``[backend.NAME]`` section) picks the connector
        options; without it the driver type's ``[brick]`` defaults apply.
        """
        conn = self.connector(driver, backend)
        try:
            self._failpoint("brick.before_connect_volume")
            drivers.get(driver).check_data(data)
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
        backend: BackendConfig | None = None,
    ) -> None:
        """``disconnect_volume``, with ``ignore_errors`` when ``force``.

        A disconnect that finds nothing of the volume can be attached
        here returns as done (logged): StorPool's API says the volume
        does not exist, or the ``rbd`` tool is missing and the kernel
        maps no such image (see :func:`_nothing_attached`).
        """
        conn = self.connector(driver, backend)
        info = dict(attachment or {})
        try:
            self._failpoint("brick.before_disconnect_volume")
            # An attach killed before os-brick returned has no device
            # info; connectors then find the devices from ``data`` alone
            # (iSCSI: the sessions of target_iqn(s)/target_portal(s)).
            if driver == "storpool":
                info = _storpool_device_info(conn, data, info)
            try:
                conn.disconnect_volume(data, info, force, force)
            except Exception as e:
                why = _nothing_attached(driver, conn, data, e)
                if why is None:
                    raise
                log.warning(
                    "%s disconnect_volume failed (%s: %s), but %s: "
                    "nothing to disconnect, done",
                    driver,
                    type(e).__name__,
                    e,
                    why,
                )
            self._failpoint("brick.after_disconnect_volume")
        except Exception as e:
            raise _failed("disconnect_volume", driver, e) from e

    def release_share(
        self,
        driver: str,
        data: dict[str, Any],
        backend: BackendConfig | None = None,
    ) -> None:
        """Unmount the share an ``nfs`` volume was on (others: nothing).

        os-brick's remote-fs connector mounts the share on connect but
        never unmounts it; the volume service calls this once the last
        volume on the share is disconnected, so detach leaves nothing.
        """
        if not drivers.get(driver).shares:
            return
        conn = self.connector(driver, backend)
        mount_point = conn._remotefsclient.get_mount_point(data["export"])
        if mount_point not in _mount_points():
            return
        try:
            conn._execute("umount", mount_point, run_as_root=True)
        except Exception as e:
            raise _failed("umount", driver, e) from e
        log.info("unmounted %s from %s", data["export"], mount_point)

    def extend(
        self,
        driver: str,
        data: dict[str, Any],
        backend: BackendConfig | None = None,
    ) -> int:
        """Run the connector's ``extend_volume``; the new size in bytes."""
        conn = self.connector(driver, backend)
        try:
            size = conn.extend_volume(data)
        except NotImplementedError as e:
            raise ConnectorFailed(
                f"the {driver} connector cannot extend volumes",
                {
                    "driver": driver,
                    "operation": "extend_volume",
                    "error_class": "NotImplementedError",
                },
            ) from e
        except Exception as e:
            raise _failed("extend_volume", driver, e) from e
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ConnectorFailed(
                f"{driver} extend_volume returned no size",
                {
                    "driver": driver,
                    "operation": "extend_volume",
                    "error_class": type(size).__name__,
                },
            )
        return size

    def _failpoint(self, name: str) -> None:
        try:
            self.failpoints.hit(name)
        except FailPointError as e:
            from oslo_concurrency import processutils

            raise processutils.ProcessExecutionError(
                stderr=str(e), exit_code=1, cmd=name
            ) from e

    def uses_multipath(
        self, driver: str, backend: BackendConfig | None = None
    ) -> bool:
        """Whether volumes of ``driver`` are attached through multipath."""
        wanted = backend.multipath if backend else self.config.multipath
        return wanted and drivers.uses_multipath(driver)

    def enforces_multipath(
        self, driver: str, backend: BackendConfig | None = None
    ) -> bool:
        """Whether a missing multipath device fails the attach (928)."""
        enforce = (
            backend.enforce_multipath
            if backend
            else self.config.enforce_multipath
        )
        return enforce and self.uses_multipath(driver, backend)

    def multipath_ready(
        self, driver: str, backend: BackendConfig | None = None
    ) -> bool:
        """Whether multipathd runs (os-brick's ``supports_multipath``)."""
        conn = self.connector(driver, backend)
        try:
            return bool(conn.supports_multipath())
        except Exception as e:
            log.warning("cannot tell whether multipathd runs: %s", e)
            return False

    def connector(
        self, driver: str, backend: BackendConfig | None = None
    ) -> Any:
        """The os-brick connector of ``backend``, else of ``driver`` with
        the [brick] defaults; made once ("@" starts no backend name)."""
        self.load()
        key = backend.name if backend else f"@{driver}"
        conn = self._connectors.get(key)
        if conn is not None:
            return conn
        from os_brick.initiator import connector

        attempts = (backend or self.config).device_scan_attempts
        kwargs: dict[str, Any] = {}
        if driver == "nfs":
            self.mount_dir.mkdir(parents=True, exist_ok=True)
            kwargs["nfs_mount_point_base"] = str(self.mount_dir)
        elif driver == "rbd":
            # The agent maps the image on this host (krbd): a librados
            # file handle in this process would be useless to a VM.
            kwargs["do_local_attach"] = True
            if backend and backend.ceph_conf:
                kwargs["execute"] = _with_env({"CEPH_CONF": backend.ceph_conf})
        try:
            own = drivers.get(driver).connector
            if own is not None:
                # A connector of ours, where os-brick has none; it has
                # os-brick's interface, so the rest cannot tell.
                conn = own(os_brick_parts())("", device_scan_attempts=attempts)
            elif driver == "storpool" and backend and backend.storpool_conf:
                conn = storpool_connector_class()(
                    "", backend.storpool_conf, device_scan_attempts=attempts
                )
            else:
                conn = connector.InitiatorConnector.factory(
                    drivers.get(driver).protocol,
                    "",
                    use_multipath=self.uses_multipath(driver, backend),
                    device_scan_attempts=attempts,
                    enforce_multipath=self.enforces_multipath(driver, backend),
                    **kwargs,
                )
            configure = drivers.get(driver).configure
            if configure is not None:
                configure(conn, self.config)
        except Exception as e:
            raise _failed("create connector", driver, e) from e
        with self._lock:
            return self._connectors.setdefault(key, conn)


def host_ip(config: BrickConfig) -> str:
    """``brick.my_ip``, or the address of the default route."""
    if config.my_ip:
        return config.my_ip
    # A UDP connect sends nothing; it only asks the kernel which local
    # address would be used to reach that (documentation) address.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _with_env(env: dict[str, str]) -> Any:
    """An os-brick ``execute`` that adds ``env`` to every command."""
    from os_brick.privileged import rootwrap

    def execute(*cmd: Any, **kwargs: Any) -> Any:
        # processutils hands env_variables to Popen as the whole
        # environment: start from ours, or PATH and the rest are lost.
        kwargs["env_variables"] = {
            **os.environ,
            **env,
            **(kwargs.get("env_variables") or {}),
        }
        return rootwrap.execute(*cmd, **kwargs)

    return execute


def _nothing_attached(
    driver: str, conn: Any, data: dict[str, Any], error: Exception
) -> str | None:
    """Why a failed disconnect left nothing attached, or None.

    Only two failures qualify, each where the connector's own checks tell
    that the volume cannot be attached to this host: any other failed
    disconnect may leave something connected, and is raised.
    """
    if driver == "storpool" and _storpool_no_such_volume(error):
        return "StorPool has no such volume"
    if driver == "rbd" and data.get(
        "do_local_attach", getattr(conn, "do_local_attach", False)
    ):
        return rbd_nothing_mapped(conn, data)
    return None


# -- RBD --------------------------------------------------------------------


def rbd_nothing_mapped(
    conn: Any, data: dict[str, Any], sysfs: Path = RBD_SYSFS
) -> str | None:
    """Why nothing of ``data``'s image is mapped, when the tool is gone.

    os-brick's connect maps only after ``which rbd`` found the tool (else
    "ceph-common package is not installed"), and its disconnect needs the
    tool too.  Without the tool, a failed connect mapped nothing; but the
    tool may also have been removed after an attach, so the kernel's own
    list of mapped images must not have this one.
    """
    from oslo_concurrency import processutils

    try:
        conn._execute("which", "rbd")
    except processutils.ProcessExecutionError:
        pass
    else:
        return None  # the tool is there: the failure is a real one
    name = data.get("name")
    if name in rbd_kernel_maps(sysfs):
        log.error(
            "rbd image %s is mapped by the kernel but the rbd tool "
            "(ceph-common) is not installed: cannot unmap it",
            name,
        )
        return None
    return (
        "the rbd tool (ceph-common) is not installed and the kernel maps "
        f"no image {name}"
    )


# -- StorPool ---------------------------------------------------------------


def _storpool_device_info(
    conn: Any, data: dict[str, Any], info: dict[str, Any]
) -> dict[str, Any]:
    """``info`` with a device path for os-brick's StorPool disconnect.

    Its disconnect_volume detaches by the name in the device path and has
    no other way; a failed (or killed) connect returned none.  The path
    by volume name, ``/dev/storpool/<prefix>--volume-<volume>``, is what
    the connector's own ``get_volume_paths`` says, from ``data``.
    """
    if data.get("device_path") or info.get("path"):
        return info
    (path,) = conn.get_volume_paths(data)
    return {**info, "path": path}


def _storpool_no_such_volume(error: BaseException) -> bool:
    """Whether StorPool's API answered ``objectDoesNotExist``.

    os-brick wraps the API's error (its ``__cause__``); the error name is
    the API's, what StorPool's Cinder driver also treats as "gone".
    """
    from os_brick.initiator import storpool_utils

    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (
            isinstance(e, storpool_utils.StorPoolAPIError)
            and e.name == "objectDoesNotExist"
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


@functools.cache
def storpool_connector_class() -> type[Any]:
    """os-brick's StorPool connector, reading a given config file."""
    from os_brick import exception
    from os_brick.initiator import storpool_utils
    from os_brick.initiator.connectors import base, storpool

    class StorPoolConfConnector(storpool.StorPoolConnector):  # type: ignore[misc]
        """``StorPoolConnector`` with its config from ``conf_path``."""

        def __init__(
            self, root_helper: str, conf_path: str, **kwargs: Any
        ) -> None:
            # StorPoolConnector.__init__ reads /etc/storpool.conf and
            # nothing else; do its work with the backend's file instead.
            base.BaseLinuxConnector.__init__(self, root_helper, **kwargs)
            try:
                conf = read_storpool_conf(conf_path)
                self._config = conf
                self._sp_api = storpool_utils.StorPoolAPI(
                    conf["SP_API_HTTP_HOST"],
                    conf["SP_API_HTTP_PORT"],
                    conf["SP_AUTH_TOKEN"],
                )
                self._volume_prefix = conf.get(
                    "SP_OPENSTACK_VOLUME_PREFIX", "os"
                )
            except configparser.Error as e:
                # Its text quotes the offending line, which may hold
                # SP_AUTH_TOKEN: name the file and the line number only.
                line = getattr(e, "lineno", None)
                raise exception.BrickException(
                    f"Could not initialize the StorPool API: {conf_path} "
                    f"is not a valid StorPool config ({type(e).__name__}"
                    + (f" at line {line}" if line else "")
                    + ")"
                ) from None
            except (OSError, KeyError) as e:
                raise exception.BrickException(
                    f"Could not initialize the StorPool API from "
                    f"{conf_path}: {type(e).__name__}: {e}"
                ) from e
            if "SP_OURID" not in conf:
                raise exception.BrickException(
                    f'Could not read "SP_OURID" from {conf_path}'
                )

    return StorPoolConfConnector


# -- ATA over Ethernet ------------------------------------------------------


class OsBrickParts(NamedTuple):
    """The parts of os-brick a driver's own connector is built from.

    Driver modules never import os-brick; brick.py hands them these (see
    :attr:`hostagent.drivers.base.Driver.connector`).
    """

    initiator: Any
    base: Any
    exception: Any
    utils: Any


@functools.cache
def os_brick_parts() -> OsBrickParts:
    """os-brick's connector base module and friends (imported on first use)."""
    from os_brick import exception, initiator, utils
    from os_brick.initiator.connectors import base

    return OsBrickParts(initiator, base, exception, utils)


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


def _mount_points() -> set[str]:
    """Mount points listed in /proc/mounts (octal escapes decoded)."""
    with open("/proc/mounts") as f:
        return {
            line.split()[1].encode().decode("unicode_escape")
            for line in f
            if line.strip()
        }


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
