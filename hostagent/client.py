"""A small synchronous JSON-RPC client, used by the CLI and the tests."""

from __future__ import annotations

import itertools
import json
import socket
import ssl
from typing import Any

DEFAULT_SOCKET = "/run/hostagent/hostagent.sock"
DEFAULT_PORT = 54322


class RpcError(Exception):
    """The agent answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class Client:
    """One persistent connection to a hostagentd.

    Give ``socket_path`` for the Unix socket, or ``host`` (and the TLS
    files) for the TLS listener.  Server notifications that arrive while
    waiting for a response are kept in :attr:`notifications`.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        host: str | None = None,
        port: int = DEFAULT_PORT,
        cert: str | None = None,
        key: str | None = None,
        ca: str | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        self._ids = itertools.count(1)
        self.notifications: list[dict[str, Any]] = []
        self._buffer = b""
        if host is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(socket_path or DEFAULT_SOCKET)
            except OSError:
                sock.close()
                raise
            self.sock: socket.socket = sock
        else:
            ctx = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=ca
            )
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if cert:
                ctx.load_cert_chain(cert, key)
            raw = socket.create_connection((host, port), timeout=timeout)
            try:
                self.sock = ctx.wrap_socket(raw, server_hostname=host)
            except (OSError, ssl.SSLError):
                raw.close()
                raise

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (tests use this for malformed input)."""
        self.sock.sendall(data)

    def send(self, message: Any) -> None:
        """Send one JSON message as a line."""
        self.send_raw(json.dumps(message).encode() + b"\n")

    def recv(self) -> Any:
        """Read one JSON line; raise ``ConnectionError`` on EOF."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the agent")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def request(self, method: str, params: Any = None) -> dict[str, Any]:
        """Send a request and return its whole response object."""
        req_id = next(self._ids)
        message: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": req_id,
            "method": method,
        }
        if params is not None:
            message["params"] = params
        self.send(message)
        while True:
            response = self.recv()
            if isinstance(response, dict) and "id" not in response:
                self.notifications.append(response)
                continue
            if isinstance(response, dict) and response.get("id") == req_id:
                return response
            if isinstance(response, dict) and response.get("id") is None:
                return response  # an error about the request itself

    def call(self, method: str, params: Any = None) -> Any:
        """Call ``method``; return its result or raise :class:`RpcError`."""
        response = self.request(method, params)
        if "error" in response:
            e = response["error"]
            raise RpcError(
                e.get("code", 0), e.get("message", ""), e.get("data")
            )
        return response.get("result")
