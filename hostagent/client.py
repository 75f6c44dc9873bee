"""A small synchronous JSON-RPC client, used by the CLI and the tests."""

from __future__ import annotations

import itertools
import json
import socket
import ssl
from typing import Any

import orjson

# Re-exported: callers have always imported them from here.
from hostagent.cmdline import DEFAULT_PORT as DEFAULT_PORT
from hostagent.cmdline import DEFAULT_SOCKET as DEFAULT_SOCKET

# What one recv() may return: a volumes_info answer for 1,000 volumes is
# some 680 kB, and each call costs a system call and a copy.
_RECV_CHUNK = 1 << 18


# orjson parses twice as fast as the standard module but reads an integer
# beyond 64 bits as a float, silently.  Such a number is at least 19
# digits at the start of the text or right after "[", ":" or ","
# (whitespace aside).  To find one, a line is mapped to classes of bytes
# (digits and "-" to "0", those three to "S", the rest to "x", whitespace
# removed), where it shows as "S" and nineteen "0".  A string that looks
# the same only costs the slower parser.
def _byte_classes() -> bytes:
    table = bytearray(b"x" * 256)
    for ch in b"0123456789-":
        table[ch] = ord("0")
    for ch in b"[:,":
        table[ch] = ord("S")
    return bytes(table)


_CLASSES = _byte_classes()
_DIGITS = b"0" * 19
_BIG_NUMBER = b"S" + _DIGITS


def decode(line: bytes | bytearray) -> Any:
    """Parse one JSON line from the agent, exactly as ``json.loads`` does.

    orjson does the work unless the line may hold an integer it would
    not keep exact, or it refuses the line (it is stricter than the
    standard parser: NaN, lone surrogates).
    """
    if len(line) >= len(_DIGITS):
        classes = line.translate(_CLASSES, b" \t\r\n")
        if _BIG_NUMBER in classes or classes.startswith(_DIGITS):
            return json.loads(line)
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


class RpcError(Exception):
    """The agent answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class TlsFileError(OSError):
    """A TLS file (certificate, key or CA) cannot be used.

    The message names the file: the error from :mod:`ssl` alone
    ("No such file or directory") does not say which of the three.
    """


def _tls_context(
    cert: str | None, key: str | None, ca: str | None
) -> ssl.SSLContext:
    """A client context with this certificate, key and CA, or raise
    :class:`TlsFileError` naming the file that is wrong."""
    for what, path in (("CA", ca), ("certificate", cert), ("key", key)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise TlsFileError(
                f"TLS {what} file {path}: {e.strerror}"
            ) from None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except ssl.SSLError as e:
        raise TlsFileError(
            f"TLS CA file {ca}: not a usable CA certificate: {e}"
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as e:
            raise TlsFileError(
                f"TLS certificate {cert} and key {key or cert}: "
                f"not a usable pair: {e}",
            ) from None
    return ctx


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
        self._buffer = bytearray()
        self._tls = host is not None
        self._answered = False
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
            ctx = _tls_context(cert, key, ca)
            raw = socket.create_connection((host, port), timeout=timeout)
            try:
                self.sock = ctx.wrap_socket(raw, server_hostname=host)
            except (OSError, ssl.SSLError):
                raw.close()
                raise

    @classmethod
    def from_args(cls, args: Any, socket_path: str | None = None) -> Client:
        """Connect as command-line options say.

        ``args`` has the attributes of ``hostagent-client``'s options
        (``socket``, ``host``, ``port``, ``cert``, ``key``, ``ca``,
        ``timeout``): TLS when ``host`` is set, else the Unix socket
        (``socket_path`` when ``args.socket`` is empty).
        """
        if args.host:
            return cls(
                host=args.host,
                port=args.port,
                cert=args.cert,
                key=args.key,
                ca=args.ca,
                timeout=args.timeout,
            )
        return cls(args.socket or socket_path, timeout=args.timeout)

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
        buf = self._buffer
        # Only bytes not searched yet are searched: a large answer comes
        # in many chunks, and rescanning (or re-copying, as appending to
        # an immutable bytes does) all of it per chunk is quadratic.
        end = buf.find(b"\n")
        while end < 0:
            scanned = len(buf)
            chunk = self.sock.recv(_RECV_CHUNK)
            if not chunk:
                hint = ""
                if self._tls and not self._answered:
                    # The agent drops a refused TLS client without a
                    # word once the handshake fails; say what it means.
                    hint = (
                        " before answering: it probably refused the client"
                        " certificate (not signed by its tls_ca, expired,"
                        " or missing); the agent's log says why"
                    )
                raise ConnectionError("connection closed by the agent" + hint)
            buf += chunk
            end = buf.find(b"\n", scanned)
        line = buf[:end]
        del buf[: end + 1]
        self._answered = True
        return decode(line)

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
