"""``make run``: the quick start of the README, as a user types it.

The Makefile's ``RUN_DIR`` (``./.run`` by default) is overridden on the
command line, so the test runs in a private directory of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLIENT, need, run_client, short_dir
from support import PING, ROOT

from hostagent.client import Client


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short private RUN_DIR (the socket path must fit 108 bytes)."""
    d = short_dir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _daemon_of(make: subprocess.Popen[str]) -> int:
    """The hostagentd make started (the recipe execs it)."""
    for pid in _children(make.pid):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"hostagentd" in cmdline:
                return pid
    raise AssertionError(f"no hostagentd under make (pid {make.pid})")


def _read_until(make: subprocess.Popen[str], end: str) -> str:
    """make's output up to and including ``end``."""
    assert make.stdout is not None
    got = ""
    while not got.endswith(end):
        ch = make.stdout.read(1)
        assert ch, f"make's output ended before {end!r}:\n{got}"
        got += ch
    return got


def _wait_for_ping(make: subprocess.Popen[str], sock: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if make.poll() is not None:
            out, _ = make.communicate()
            raise AssertionError(f"make run exited {make.returncode}:\n{out}")
        with contextlib.suppress(OSError), Client(str(sock), timeout=2) as c:
            if c.call("Host.ping") is True:
                return
        time.sleep(0.05)
    raise AssertionError("make run: the daemon never answered a ping")


def test_make_run_serves_on_run_dir_and_stops_on_sigterm(
    run_dir: Path,
) -> None:
    need("make", "socat")
    # Installing is make install's business: this test must not start a
    # pip run of its own (make check installs first).
    fresh = subprocess.run(["make", "-q", "install"], cwd=ROOT, check=False)
    assert fresh.returncode == 0, "the install is not up to date: make install"
    sock = run_dir / "hostagent.sock"
    make = subprocess.Popen(
        ["make", "-s", "run", f"RUN_DIR={run_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for_ping(make, sock)
        out = run_client("--socket", str(sock), "Host", "ping")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) is True
        # The export line make printed is all the client needs.
        export = f"  export HOSTAGENT_SOCKET={sock}\n"
        banner = _read_until(make, export)
        out = subprocess.run(
            [CLIENT, "Host", "ping"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, HOSTAGENT_SOCKET=str(sock)),
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) is True
        # ... and how to stop it: the pid it names is the daemon's.
        stop = _read_until(make, "Stop it with Ctrl-C here, or: kill ")
        pid = _read_until(make, "\n")
        assert int(pid) == _daemon_of(make), stop + pid
        stop += pid
        socat = subprocess.run(
            ["socat", "-", f"UNIX-CONNECT:{sock}"],
            input=PING,
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert json.loads(socat.stdout) == {
            "jsonrpc": "2.0",
            "result": True,
            "id": 1,
        }
        # The embedded config keeps everything under RUN_DIR.
        config = (run_dir / "hostagent.toml").read_text()
        assert f'unix_socket = "{sock}"' in config
        assert f'state_dir = "{run_dir}/state"' in config
        assert (run_dir / "state" / "hostagent.db").is_file()
        assert (run_dir / "volumes").is_dir()
        os.kill(_daemon_of(make), signal.SIGTERM)
        rest, _ = make.communicate(timeout=60)
        output = banner + stop + rest
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    # The daemon exited 0, so make's recipe (and make) did too.
    assert make.returncode == 0, output
    assert f"hostagentd on {sock}" in output
    assert "INFO hostagent: stopped" in output
    assert not sock.exists()  # the daemon removed its own socket


def _recipes(target: str) -> str:
    """What ``make TARGET`` would run with everything out of date."""
    done = subprocess.run(
        ["make", "-n", "-B", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_make_run_installs_only_the_run_set() -> None:
    """``make run`` asks for the run set and the runtime Python packages;
    test tools and the test extras come with make test/install."""
    run = _recipes("run")
    assert "contrib/install-deps.sh run" in run
    assert "pip install -q -e .\n" in run
    assert "install-deps.sh test" not in run
    assert "[test]" not in run
    for target in ("test", "install", "rpm"):
        assert "contrib/install-deps.sh test" in _recipes(target), target
    assert "pip install -q -e '.[test]'" in _recipes("test")


def test_install_covers_run() -> None:
    """After make install, make run has nothing to install."""
    fresh = subprocess.run(["make", "-q", "install"], cwd=ROOT, check=False)
    assert fresh.returncode == 0, "the install is not up to date"
    done = subprocess.run(["make", "-q", "install-run"], cwd=ROOT, check=False)
    assert done.returncode == 0
