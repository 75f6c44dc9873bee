"""Fixtures: a real hostagentd on a temporary socket, real loop devices."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from support import (
    ATTACH,
    DETACH,
    config_text,
    create_loop,
    detach_loop,
    exchange,
)

from hostagent import config
from hostagent.client import Client, RpcError

BIN = Path(sys.executable).parent
HOSTAGENTD = str(BIN / "hostagentd")
CLIENT = str(BIN / "hostagent-client")


def new_vol_id() -> str:
    """A fresh volume ID."""
    return str(uuid.uuid4())


def local_info(device: str, **extra: Any) -> dict[str, Any]:
    """connection_info for the ``local`` connector."""
    return {
        "driver_volume_type": "local",
        "data": {"device_path": device, **extra},
    }


def local_info_file(directory: Path, device: str) -> Path:
    """``directory/conn.json`` holding :func:`local_info` of ``device``."""
    path = directory / "conn.json"
    path.write_text(json.dumps(local_info(device)))
    return path


def short_dir() -> Path:
    """A short private directory: Unix socket paths must fit 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="ha-", dir="/tmp"))


def write_config(
    path: Path, tmp: Path, sock: str, **sections: dict[str, Any]
) -> None:
    """A TOML config under ``tmp``, with ``sections`` overriding keys."""
    base: dict[str, dict[str, Any]] = {
        "server": {"unix_socket": sock},
        "storage": {
            "state_dir": str(tmp / "state"),
            "run_dir": str(tmp / "run"),
        },
        "brick": {"device_scan_attempts": 1},
        "log": {"level": "debug"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    path.write_text(config_text(base))


def load_config(tmp: Path, text: str) -> config.Config:
    """:func:`hostagent.config.load` of ``text`` (as a file under tmp)."""
    p = tmp / "c.toml"
    p.write_text(text)
    return config.load(p)


def private_config(tmp: Path, brick: str) -> config.Config:
    """A config for an in-process service: state and run dirs under
    ``tmp``, ``brick`` the body of its ``[brick]`` section."""
    return load_config(
        tmp,
        f"""
[storage]
state_dir = "{tmp / "state"}"
run_dir = "{tmp / "run"}"
[brick]
{brick}
""",
    )


def need(*tools: str) -> None:
    """Fail (not skip) when a tool ``make`` installs is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: make installs them "
            "(contrib/install-deps.sh)"
        )


@contextlib.contextmanager
def mounted(dev: str, where: Path) -> Iterator[Path]:
    """mkfs.ext4 on ``dev`` and mount it on ``where`` for the block."""
    need("mkfs.ext4")
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    where.mkdir()
    subprocess.run(["mount", dev, str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def run_client(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``hostagent-client ARGS`` (not checked)."""
    return subprocess.run(
        [CLIENT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def brick_calls(agent: Agent, vid: str) -> list[str]:
    """``connect``/``disconnect`` of ``vid`` as the daemon logged them.

    The daemon logs "volume <id>: connecting" right before os-brick's
    connect_volume and "volume <id>: disconnecting" right before
    disconnect_volume; the list is in log order.
    """
    return re.findall(rf"volume {vid}: (connect|disconnect)ing ", agent.log())


def next_notification(c: Client, timeout: float = 10.0) -> dict[str, Any]:
    """The next notification on ``c`` (raises on timeout)."""
    if c.notifications:
        return c.notifications.pop(0)
    c.sock.settimeout(timeout)
    message = c.recv()
    assert "id" not in message, message
    return dict(message)


class Agent:
    """A hostagentd subprocess and the paths it uses."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None):
        self.tmp = tmp
        self.config = tmp / "hostagent.toml"
        self.sock_dir = short_dir()
        self.socket = str(self.sock_dir / "hostagent.sock")
        self.state_dir = tmp / "state"
        self.run_dir = tmp / "run"
        self.db_path = self.state_dir / "hostagent.db"
        self.log_path = tmp / "agent.log"
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.configure()

    def configure(self, **sections: dict[str, Any]) -> None:
        """Rewrite the config (applies at the next start)."""
        write_config(self.config, self.tmp, self.socket, **sections)

    def start(
        self,
        wait: bool = True,
        prefix: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> None:
        """Start the daemon; by default wait until it answers a ping.

        ``prefix`` runs it through a wrapper that ends in ``exec "$@"``
        (``unshare``, a shell setting LISTEN_PID=$$), so the daemon keeps
        the pid :attr:`proc` has; ``pass_fds`` are inherited.
        """
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*prefix, HOSTAGENTD, "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                pass_fds=pass_fds,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until ``Host.ping`` answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"hostagentd exited with {self.proc.returncode}:\n"
                    + self.log()
                )
            with contextlib.suppress(OSError), self.client(timeout=2) as c:
                if c.call("Host.ping") is True:
                    return
            time.sleep(0.02)
        raise AssertionError("hostagentd did not become ready\n" + self.log())

    def client(self, timeout: float = 60.0) -> Client:
        """A new connection to the daemon's Unix socket."""
        return Client(self.socket, timeout=timeout)

    def call(self, method: str, params: Any = None) -> Any:
        """One call on a fresh connection."""
        with self.client() as c:
            return c.call(method, params)

    def error(self, method: str, params: Any = None) -> RpcError:
        """The :class:`RpcError` a call must raise."""
        with pytest.raises(RpcError) as e:
            self.call(method, params)
        return e.value

    def exchange(
        self, data: bytes, timeout: float = 30, expect: int | None = None
    ) -> list[Any]:
        """Send raw ``data`` on a new connection; the answers.

        Every answer line is parsed as JSON (see :func:`support.exchange`).
        """
        return [
            json.loads(x) for x in exchange(self.socket, data, timeout, expect)
        ]

    def cli(
        self, *args: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``hostagent-client --socket SOCKET ARGS`` (not checked)."""
        return run_client("--socket", self.socket, *args, stdin=stdin)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the daemon with ``sig``; return its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.proc = None
        return rc

    def kill(self) -> None:
        """SIGKILL, as a crash or power loss would."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Stop gracefully and start again."""
        self.stop()
        self.start()

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything the daemon logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until the log contains ``text``; return that line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                if text in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} not in the log:\n" + self.log()
                )
            time.sleep(0.02)

    def links(self) -> list[str]:
        """Names of the managed symlinks."""
        vdir = self.run_dir / "volumes"
        return sorted(p.name for p in vdir.iterdir()) if vdir.exists() else []

    def dispose(self) -> None:
        """SIGKILL the daemon if it runs; remove the socket's directory."""
        if self.alive():
            self.stop(signal.SIGKILL)
        shutil.rmtree(self.sock_dir, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    """Keep each phase's report on the item, for the log-on-failure dump."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def agent_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """Build agents (not started); all are stopped at the end.

    Any :class:`Agent` subclass may be built (``cls``); each one's log is
    printed when the test failed.
    """
    made: list[Agent] = []

    def make(
        name: str = "agent",
        env: dict[str, str] | None = None,
        cls: Callable[..., Agent] = Agent,
        **kwargs: Any,
    ) -> Agent:
        """``cls(tmp_path / name, env=env, **kwargs)``."""
        d = tmp_path / name
        d.mkdir()
        a = cls(d, env=env, **kwargs)
        made.append(a)
        return a

    yield make
    for a in made:
        a.dispose()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            sys.stderr.write(f"\n--- {a.log_path} ---\n{a.log()[-20000:]}")


@pytest.fixture
def agent(agent_factory: Any) -> Agent:
    """A started hostagentd with the default test config."""
    a: Agent = agent_factory()
    a.start()
    return a


class Loops:
    """Creates loop devices over sparse files; detaches them at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.devices: list[str] = []
        self.files: dict[str, Path] = {}

    def create(self, size_mb: int = 16) -> str:
        """A new loop device backed by a sparse file."""
        backing = self.tmp / f"disk{len(self.devices)}.img"
        dev = create_loop(backing, size_mb)
        self.devices.append(dev)
        self.files[dev] = backing
        return dev

    def backing(self, dev: str) -> Path:
        """The file behind ``dev`` (grow it to grow the device)."""
        return self.files[dev]

    def detach(self, dev: str) -> None:
        """``losetup -d``: the node stays, the device loses its media."""
        assert detach_loop(dev, self.files[dev]), f"{dev} is not ours now"

    def reattach(self, dev: str) -> None:
        """Give a detached ``dev`` its file back (``losetup DEV FILE``)."""
        subprocess.run(["losetup", dev, str(self.files[dev])], check=True)

    def cleanup(self) -> None:
        """Detach every device this fixture made."""
        for dev in self.devices:
            detach_loop(dev, self.files[dev])


def agent_with_loops(tmp: Path) -> tuple[Agent, Loops]:
    """An agent (not started) and a :class:`Loops`, both under ``tmp``.

    For module-wide fixtures and scripts, where ``agent_factory`` and
    ``loops`` (function-scoped) do not reach.
    """
    (tmp / "agent").mkdir()
    (tmp / "loops").mkdir()
    return Agent(tmp / "agent"), Loops(tmp / "loops")


def release(agent: Agent, loops: Loops, vol_ids: Iterable[str]) -> None:
    """Detach ``vol_ids`` and stop a live agent; drop its loops, socket."""
    try:
        if agent.alive():
            for vid in vol_ids:
                agent.call(DETACH, [vid])
            agent.stop()
    finally:
        loops.cleanup()
        agent.dispose()


def attach_loop(agent: Agent, loops: Loops, *more: Any) -> tuple[str, str]:
    """A new loop device attached through ``agent`` as a new volume with
    the local driver (``more``: the params after connection_info, an
    sd_id); (device, vol_id)."""
    dev = loops.create()
    return dev, attach_local(agent, dev, *more)


def attach_local(agent: Agent, dev: str, *more: Any) -> str:
    """``dev`` attached through ``agent`` as a new volume with the local
    driver (``more``: the params after connection_info); its vol_id."""
    vid = new_vol_id()
    agent.call(ATTACH, [vid, local_info(dev), *more])
    return vid


# An ownership test's loop node starts as (uid, gid, mode): unusual, so
# that a restore is seen.
ODD_NODE = (12, 34, 0o604)


def node_state(path: str) -> tuple[int, int, int]:
    """(uid, gid, permission bits) of the node ``path``."""
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.fixture
def odd_loop(loops: Loops) -> Iterator[str]:
    """A loop node in the ODD_NODE state; given back its own after."""
    dev = loops.create(1)
    own = node_state(dev)
    os.chown(dev, ODD_NODE[0], ODD_NODE[1])
    os.chmod(dev, ODD_NODE[2])
    yield dev
    os.chown(dev, own[0], own[1])
    os.chmod(dev, own[2])


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Loops]:
    """Real loop devices (needs root and /dev/loop-control)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        pytest.fail("loop device tests need root and /dev/loop-control")
    d = tmp_path / "loops"
    d.mkdir()
    lo = Loops(d)
    yield lo
    lo.cleanup()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Test CAs and certificates (see ``tests/pki.py``), made once."""
    from pki import Pki

    return Pki(tmp_path_factory.mktemp("pki"))
