"""The processes and devices a benchmark needs, made and cleaned up here.

Everything lives under one private temporary directory: the agent's
socket, state (database, os-brick locks) and run directories, the echo
server's socket, loop device backing files and device nodes.  The
database is on the same file system as ``/var/lib`` on this machine, so
its fsyncs cost what they cost in production.  Loop devices and config
files come from ``tests/support.py``, made as the tests make theirs
(``python -m tests.bench`` runs from the repository root, where ``tests`` is
importable).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hostagent.client import Client
from tests.support import config_text, create_loop, detach_loop

BIN = Path(sys.executable).parent
HOSTAGENTD = str(BIN / "hostagentd")


class Workdir:
    """A private temporary directory, removed (with its loops) at exit."""

    def __init__(self) -> None:
        # Short, under /tmp: a Unix socket path must fit in 108 bytes.
        self.path = Path(tempfile.mkdtemp(prefix="ha-bench-", dir="/tmp"))
        self.loops: list[tuple[str, Path]] = []

    def loop_device(self, size_mb: int = 16) -> str:
        """A new loop device over a sparse file (needs root)."""
        backing = self.path / f"disk{len(self.loops)}.img"
        dev = create_loop(backing, size_mb)
        self.loops.append((dev, backing))
        return dev

    def device_nodes(
        self, name: str, count: int, devices: list[str]
    ) -> list[str]:
        """``count`` distinct block device nodes over ``devices``.

        Each node is a real block special file (``mknod``) with the device
        number of one of ``devices``, round robin: a distinct path per
        volume, each backed by a real device with media, without taking
        ``count`` loop devices from a machine others share.
        """
        d = self.path / name
        d.mkdir()
        numbers = [os.stat(dev).st_rdev for dev in devices]
        nodes = []
        for i in range(count):
            node = d / f"v{i:05d}"
            os.mknod(node, stat.S_IFBLK | 0o600, numbers[i % len(numbers)])
            nodes.append(str(node))
        return nodes

    def cleanup(self) -> None:
        """Detach the loop devices, remove the directory."""
        for dev, backing in self.loops:
            detach_loop(dev, backing)
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def workdir() -> Iterator[Workdir]:
    """A :class:`Workdir`, cleaned up however the block ends."""
    w = Workdir()
    try:
        yield w
    finally:
        w.cleanup()


def rss_mb(pid: int) -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of ``pid`` in MB (MiB)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


class AgentProcess:
    """A hostagentd subprocess with its own config, socket and state."""

    def __init__(self, root: Path, name: str = "agent", **config: Any):
        self.dir = root / name
        self.dir.mkdir()
        self.socket = str(self.dir / "s")
        self.state_dir = self.dir / "state"
        self.run_dir = self.dir / "run"
        self.db_path = self.state_dir / "hostagent.db"
        self.log_path = self.dir / "agent.log"
        self.config_path = self.dir / "hostagent.toml"
        sections: dict[str, dict[str, Any]] = {
            "server": {"unix_socket": self.socket},
            "storage": {
                "state_dir": str(self.state_dir),
                "run_dir": str(self.run_dir),
            },
            "log": {"level": "info"},
        }
        for section, values in config.items():
            sections.setdefault(section, {}).update(values)
        self.config_path.write_text(config_text(sections))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> float:
        """Start the daemon; return seconds until it answered a ping."""
        started = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [HOSTAGENTD, "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"hostagentd exited with {self.proc.returncode}:\n"
                    + self.log_path.read_text(errors="replace")[-4000:]
                )
            with contextlib.suppress(OSError), self.client(2.0) as c:
                if c.call("Host.ping") is True:
                    return time.perf_counter() - started
            time.sleep(0.002)
        raise RuntimeError("hostagentd did not answer a ping in time")

    def settle(self) -> None:
        """Wait until os-brick is loaded, so nothing runs in the background.

        ``Host.getCapabilities`` waits for the background import.
        """
        with self.client() as c:
            c.call("Host.getCapabilities")

    def client(self, timeout: float = 60.0) -> Client:
        """A new connection to the daemon."""
        return Client(self.socket, timeout=timeout)

    def rss_when_idle(self, settle: float = 1.0, limit: float = 15.0) -> float:
        """VmRSS (MB) once it stopped changing for ``settle`` seconds.

        The daemon imports os-brick in the background after it is ready;
        idle means after that, when nothing more is loaded.
        """
        assert self.proc is not None
        deadline = time.monotonic() + limit
        last, since = rss_mb(self.proc.pid)[0], time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = rss_mb(self.proc.pid)[0]
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= settle:
                break
        return last

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL if it does not stop in 30 s)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def agent(
    root: Path, name: str = "agent", **config: Any
) -> Iterator[AgentProcess]:
    """A started :class:`AgentProcess`, stopped at the end."""
    a = AgentProcess(root, name, **config)
    try:
        a.start()
        a.settle()
        yield a
    finally:
        a.stop()


@contextlib.contextmanager
def echo_server(root: Path) -> Iterator[str]:
    """The reference echo server (:mod:`tests.bench.echo`), its socket."""
    path = str(root / "echo.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.echo", path],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the echo server did not start")
        yield path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def connect_unix(path: str) -> socket.socket:
    """A blocking connection to the Unix socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` used so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces: split after it.
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
