"""Plain helpers (no pytest) shared by the tests and the benchmarks.

``tests/conftest.py`` builds its fixtures on these; ``tests/bench/procs.py``
imports them as ``tests.support`` (``python -m tests.bench`` runs from the
repository root), so a benchmark's agent and loop devices are made the
way the tests make theirs.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

# The repository's top directory.
ROOT = Path(__file__).resolve().parent.parent
# The environment variable of hostagent.failpoints.
FAILPOINTS = "HOSTAGENT_FAILPOINTS"
# One ping, as a client writes it.
PING = b'{"jsonrpc":"2.0","id":1,"method":"Host.ping"}\n'
# struct ucred (pid, uid, gid): the payload of SCM_CREDENTIALS.
UCRED = struct.Struct("3i")


def create_loop(backing: Path, size_mb: int = 16) -> str:
    """A loop device over a new sparse file ``backing`` (needs root)."""
    with open(backing, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    return subprocess.run(
        ["losetup", "--find", "--show", str(backing)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def loop_file(dev: str) -> str | None:
    """The file the loop device ``dev`` is bound to now (None: none)."""
    sysfs = Path("/sys/block") / Path(dev).name / "loop" / "backing_file"
    try:
        return sysfs.read_text().strip()
    except OSError:
        return None


def detach_loop(dev: str, backing: Path) -> bool:
    """``losetup -d DEV`` if it is still bound to ``backing``.

    The node stays and the device loses its media.  Loop devices are
    shared by everything on the machine: once detached, the number may
    be another test's device, which must not be detached in its turn.
    Returns whether ``dev`` was ours to detach.
    """
    if loop_file(dev) != os.path.realpath(backing):
        return False
    subprocess.run(["losetup", "-d", dev], check=False)
    return True


def config_text(sections: dict[str, dict[str, Any]]) -> str:
    """TOML for a hostagentd config: ``{section: {key: value}}``.

    ``sections["backend"]`` holds ``{NAME: {key: value}}``, written as
    ``[backend.NAME]`` tables.
    """
    lines = []
    for name, values in sections.items():
        tables = (
            {f"backend.{b}": opts for b, opts in values.items()}
            if name == "backend"
            else {name: values}
        )
        for table, options in tables.items():
            lines.append(f"[{table}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
            lines.append("")
    return "\n".join(lines)


ATTACH = "ManagedVolume.attach_volume"
DETACH = "ManagedVolume.detach_volume"
EXTEND = "ManagedVolume.extend_volume"
INFO = "ManagedVolume.volumes_info"


def req(method: str, rid: Any = 1, params: Any = None) -> dict[str, Any]:
    """A JSON-RPC 2.0 request object; ``params`` left out when None."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        message["params"] = params
    return message


def notification(method: str, params: Any = None) -> dict[str, Any]:
    """A JSON-RPC 2.0 notification (no id, no answer)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def line(*messages: Any) -> bytes:
    """``messages`` as NDJSON: one JSON text and a newline each."""
    return b"".join(json.dumps(m).encode() + b"\n" for m in messages)


def exchange(
    path: str, data: bytes, timeout: float = 30, expect: int | None = None
) -> list[bytes]:
    """Send ``data`` on a new Unix connection; the answer lines.

    Without ``expect``: half-close, read to EOF.  With it: keep the
    connection open and read until ``expect`` lines came (the peer must
    not close first).  Each answer must end with a newline, and a blank
    line is returned as it came (the agent never sends one).
    """
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        if expect is not None:
            return recv_lines(s, expect)
        s.shutdown(socket.SHUT_WR)
        buf = bytearray()
        while chunk := s.recv(65536):
            buf += chunk
    if buf and not buf.endswith(b"\n"):
        raise AssertionError(f"answer without a newline: {buf[-200:]!r}")
    return bytes(buf).split(b"\n")[:-1]


def recv_lines(s: socket.socket, expect: int) -> list[bytes]:
    """Read from ``s`` until ``expect`` whole lines came; those lines.

    Each chunk is appended once and only its own newlines are counted,
    so a large answer (volumes_info of 10,000 volumes, 7 MB) costs one
    pass; the peer must not send more than those lines.
    """
    buf = bytearray()
    lines = 0
    while lines < expect:
        chunk = s.recv(1 << 20)
        assert chunk, "connection closed early"
        buf += chunk
        lines += chunk.count(b"\n")
    if not buf.endswith(b"\n"):
        raise AssertionError(f"answer without a newline: {buf[-200:]!r}")
    return bytes(buf).split(b"\n")[:-1]
