"""Logging to journald, read back over journald's own native protocol.

systemd-python sends log entries as datagrams to the fixed path
``/run/systemd/journal/socket``.  The daemon runs in a private mount
namespace (``unshare --mount``) where a directory of the test is bound over
``/run/systemd``; the test's datagram socket in it plays journald and
decodes each entry (``KEY=value`` lines, binary-safe ``KEY\\n<u64 size>
value`` fields, and large entries passed as a memfd with SCM_RIGHTS), with
the sender's pid from SCM_CREDENTIALS.
"""

from __future__ import annotations

import array
import os
import shutil
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent, Loops, local_info, new_vol_id, short_dir
from support import ATTACH, DETACH, UCRED, line, req

Entry = dict[str, str]


def parse_native(data: bytes) -> Entry:
    """One entry of journald's native protocol."""
    fields: Entry = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            start = nl + 9
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n"
            i = start + size + 1
        fields[key.decode()] = value.decode("utf-8", "replace")
    return fields


class FakeJournald:
    """Binds ``<dir>/systemd/journal/socket`` and collects entries."""

    def __init__(self) -> None:
        self.dir = short_dir()
        jdir = self.dir / "systemd" / "journal"
        jdir.mkdir(parents=True)
        self.path = str(jdir / "socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.settimeout(0.2)
        self.entries: list[tuple[int, Entry]] = []
        self.raw = bytearray()
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd_size = array.array("i").itemsize
        while not self._stop:
            try:
                data, anc, _, _ = self.sock.recvmsg(
                    1 << 20,
                    socket.CMSG_SPACE(UCRED.size)
                    + socket.CMSG_SPACE(4 * fd_size),
                )
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for _, kind, payload in anc:
                if kind == socket.SCM_CREDENTIALS:
                    pid = UCRED.unpack(payload[: UCRED.size])[0]
                elif kind == socket.SCM_RIGHTS:
                    # A large entry comes as a sealed memfd.
                    [fd] = array.array("i", payload[:fd_size])
                    with os.fdopen(fd, "rb") as f:
                        data = f.read()
            with self._lock:
                self.raw += data
                self.entries.append((pid, parse_native(data)))

    def where(self, **want: str) -> list[Entry]:
        """Entries having every ``KEY=value`` of ``want``."""
        with self._lock:
            return [
                e
                for _, e in self.entries
                if all(e.get(k) == v for k, v in want.items())
            ]

    def wait(self, timeout: float = 20, **want: str) -> Entry:
        """The first entry matching ``want``, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.where(**want)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                with self._lock:
                    seen = [e.get("MESSAGE") for _, e in self.entries]
                raise AssertionError(f"no entry with {want}; got {seen}")
            time.sleep(0.02)

    def wait_prefix(self, prefix: str, timeout: float = 20) -> Entry:
        """The first entry whose MESSAGE starts with ``prefix``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for _, e in self.entries:
                    if e.get("MESSAGE", "").startswith(prefix):
                        return e
            time.sleep(0.02)
        raise AssertionError(f"no entry starting with {prefix!r}")

    def stop(self) -> None:
        """journald goes away: the socket stays, nobody reads it."""
        self._stop = True
        self._thread.join(5)
        self.sock.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def journald() -> Iterator[FakeJournald]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("the journal tests need root and unshare (util-linux)")
    j = FakeJournald()
    yield j
    j.close()


def in_namespace(journald: FakeJournald) -> list[str]:
    """Run the daemon where journald's socket is the test's."""
    if os.path.isdir("/run/systemd"):
        source, target = journald.dir / "systemd", "/run/systemd"
    else:
        source, target = journald.dir, "/run"
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount --bind "$0" {target} && exec "$@"',
        str(source),
    ]


def request(agent: Agent, rid: str, method: str, params: Any) -> Any:
    """One request with this id on a new connection; its answer."""
    (answer,) = agent.exchange(line(req(method, rid, params)), expect=1)
    return answer


def test_structured_fields_and_no_secrets(
    agent_factory: Any, journald: FakeJournald, tmp_path: Path, loops: Loops
) -> None:
    a: Agent = agent_factory()
    a.configure(log={"journal": "yes", "level": "debug"})
    a.start(prefix=in_namespace(journald))
    assert a.proc is not None
    journald.wait(
        MESSAGE=f"hostagentd {_version()} ready (pid {a.proc.pid})"
        f", serving on unix:{a.socket}"
    )

    vid = new_vol_id()
    out = request(a, "req-42", DETACH, {"vol_id": vid})
    assert out == {"jsonrpc": "2.0", "result": True, "id": "req-42"}
    e = journald.wait(METHOD=DETACH, REQUEST_ID="req-42")
    assert e["VOL_ID"] == vid
    assert e["PEER_UID"] == str(os.getuid())
    assert e["PRIORITY"] == "6"
    assert e["SYSLOG_IDENTIFIER"] == "hostagentd"
    assert e["LOGGER"] == "hostagent.api"
    assert e["CODE_FILE"].endswith("hostagent/api.py")
    assert e["CODE_LINE"].isdigit()
    assert e["MESSAGE"].startswith("ManagedVolume.detach_volume by unix")
    # Lines the service writes while handling it carry the request id too.
    e = journald.wait(MESSAGE=f"detach of unknown volume {vid}: nothing to do")
    assert e["REQUEST_ID"] == "req-42"
    assert e["LOGGER"] == "hostagent.service.volumes"

    # An attach whose connection info holds secrets; os-brick logs its
    # calls with their arguments at debug level, and the device path (for
    # the test) contains the password, so the agent's own lines would too.
    secret = "Pw-" + uuid.uuid4().hex
    user = "chap-" + uuid.uuid4().hex[:12]
    device = tmp_path / f"disk-{secret}"
    # A link to a free block device (the local guard refuses a file).
    device.symlink_to(loops.create())
    info = local_info(str(device), auth_password=secret, auth_username=user)
    vid2 = new_vol_id()
    out = request(
        a,
        "attach-1",
        ATTACH,
        {"vol_id": vid2, "connection_info": info},
    )
    assert "result" in out, out
    masked = str(device).replace(secret, "***")
    e = journald.wait_prefix(f"attached volume {vid2} at {masked} in ")
    assert e["REQUEST_ID"] == "attach-1" and e["VOL_ID"] == vid2
    brick = [
        e
        for e in journald.where(REQUEST_ID="attach-1")
        if e["LOGGER"].startswith("os_brick")
    ]
    assert brick, "os-brick's lines should carry the request id"
    assert any(masked in e["MESSAGE"] for e in brick)
    request(a, "detach-1", DETACH, {"vol_id": vid2})
    journald.wait(METHOD=DETACH, REQUEST_ID="detach-1")

    # A failing call: WARNING priority, same fields.
    out = request(
        a,
        7,
        ATTACH,
        {
            "vol_id": new_vol_id(),
            "connection_info": {
                "driver_volume_type": "fibre_channel_x",
                "data": {},
            },
        },
    )
    assert "error" in out
    e = journald.wait(METHOD=ATTACH, REQUEST_ID="7", PRIORITY="4")
    assert "failed" in e["MESSAGE"]

    assert secret.encode() not in journald.raw
    assert user.encode() not in journald.raw
    assert {pid for pid, _ in journald.entries} == {a.proc.pid}
    # Everything went to the journal, nothing to stderr.
    assert "ready" not in a.log()

    # journald goes away: the lines are not lost, they go to stderr.
    journald.stop()
    request(a, "late", DETACH, {"vol_id": vid})
    deadline = time.monotonic() + 10
    while f"detach of unknown volume {vid}" not in a.log():
        assert time.monotonic() < deadline, a.log()
        time.sleep(0.05)
    assert a.stop() == 0


def _version() -> str:
    from hostagent import __version__

    return __version__


@pytest.mark.parametrize(
    ("mode", "stream_is_stderr", "to_journal"),
    [
        ("auto", True, True),  # run by systemd: stderr is the journal
        ("auto", False, False),  # JOURNAL_STREAM, but stderr redirected
        ("no", True, False),
    ],
)
def test_journal_or_stderr(
    agent_factory: Any,
    journald: FakeJournald,
    mode: str,
    stream_is_stderr: bool,
    to_journal: bool,
) -> None:
    a: Agent = agent_factory()
    a.configure(log={"journal": mode, "level": "info"})
    a.log_path.touch()
    st = a.log_path.stat()
    stream = f"{st.st_dev}:{st.st_ino}" if stream_is_stderr else "0:1"
    a.env["JOURNAL_STREAM"] = stream
    a.start(prefix=in_namespace(journald))
    assert a.call("Host.ping") is True
    assert a.stop() == 0
    in_journal = bool(journald.where(MESSAGE="stopped"))
    in_stderr = " INFO hostagent: stopped" in a.log()
    assert (in_journal, in_stderr) == (to_journal, not to_journal)


def test_journal_yes_without_journald(
    agent_factory: Any, journald: FakeJournald
) -> None:
    """No journald socket at all: a warning, then plain stderr."""
    os.unlink(journald.path)
    a: Agent = agent_factory()
    a.configure(log={"journal": "yes"})
    a.start(prefix=in_namespace(journald))
    assert a.stop() == 0
    assert "does not exist; logging to stderr" in a.log()
    assert " INFO hostagent: stopped" in a.log()


def test_request_values_reach_the_journal_escaped(
    agent_factory: Any, journald: FakeJournald
) -> None:
    """A request id is the client's text: in the journal's REQUEST_ID=
    and MESSAGE=, its control characters are escapes, never raw."""
    a: Agent = agent_factory()
    a.configure(log={"journal": "yes", "level": "debug"})
    a.start(prefix=in_namespace(journald))
    vid = new_vol_id()
    rid = "r1\nMESSAGE=forged\x00\x85\u2028"
    out = request(a, rid, "ManagedVolume.detach_volume", {"vol_id": vid})
    assert out == {"jsonrpc": "2.0", "result": True, "id": rid}
    e = journald.wait(MESSAGE=f"detach of unknown volume {vid}: nothing to do")
    assert e["REQUEST_ID"] == "r1\\nMESSAGE=forged\\x00\\x85\\u2028"
    for entry in journald.where():
        for key, value in entry.items():
            assert "\x00" not in value and "forged\n" not in value, key
    assert not journald.where(MESSAGE="forged")
    a.stop()
