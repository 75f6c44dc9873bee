"""TLS: the server context, the handshake, who the client is."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

from hostagent.config import ServerConfig

log = logging.getLogger("hostagent.transport")

_READ_CHUNK = 65536


class ListenError(Exception):
    """A listener cannot be set up; the message says why."""


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    # Without this callback OpenSSL would prompt on the terminal and a
    # daemon would hang at start-up.
    raise _EncryptedKey


def tls_context(cfg: ServerConfig) -> ssl.SSLContext:
    """The server TLS context: TLS 1.2+, client certificate required.

    Raises :class:`ListenError` naming the config key of a file that
    cannot be used.
    """
    for key in ("tls_cert", "tls_key", "tls_ca"):
        _readable(key, getattr(cfg, key))
    cert, key, ca = cfg.tls_cert, cfg.tls_key, cfg.tls_ca
    if b"-----BEGIN CERTIFICATE-----" not in Path(cert).read_bytes():
        raise ListenError(f"server.tls_cert: {cert} holds no PEM certificate")
    key_pem = Path(key).read_bytes()
    if b"PRIVATE KEY-----" not in key_pem:
        raise ListenError(f"server.tls_key: {key} holds no PEM private key")
    if Path(key).stat().st_mode & stat.S_IROTH:
        log.warning(
            "server.tls_key: %s is readable by every user; chmod 0600 it",
            key,
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise ListenError(
            f"server.tls_key: {key} is encrypted; hostagentd needs an "
            "unencrypted key (protect it with mode 0600 instead)"
        ) from None
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e).upper().replace(" ", "_"):
            raise ListenError(
                f"server.tls_key: {key} is not the key of the certificate "
                f"in server.tls_cert ({cert})"
            ) from None
        raise ListenError(
            f"server.tls_cert/server.tls_key: cannot load {cert} with "
            f"{key}: {why(e)}"
        ) from None
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise ListenError(
            f"server.tls_ca: {ca} holds no usable CA certificate: {why(e)}"
        ) from None
    if not ctx.cert_store_stats()["x509_ca"]:
        raise ListenError(
            f"server.tls_ca: {ca} holds no CA certificate (basicConstraints "
            "CA:TRUE); client certificates could never be verified"
        )
    return ctx


def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ListenError(
            f"server.{key}: cannot read {path}: {e.strerror}"
        ) from None


def subject_cn(cert: Any) -> str:
    """The subject commonName of a certificate from ``getpeercert()``."""
    if not isinstance(cert, dict):
        return ""
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return ""


def why(e: BaseException, timeout_key: str = "read_timeout") -> str:
    """A one-line reason for a TLS failure, for logs and start-up errors."""
    if isinstance(e, ssl.SSLCertVerificationError) and e.verify_message:
        return f"certificate verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason).lower().replace("_", " ")
    if isinstance(e, TimeoutError):
        return f"no handshake within server.{timeout_key}"
    return str(e) or type(e).__name__


async def handshake(
    conn: socket.socket,
    context: ssl.SSLContext,
    address: str,
    timeout: float,
    timeout_key: str = "read_timeout",
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """The server side of the TLS handshake on ``conn``; None (and
    ``conn`` closed) when it fails or takes longer than ``timeout``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_READ_CHUNK)
    protocol = asyncio.StreamReaderProtocol(reader)
    try:
        # asyncio's own handshake timeout (a little later) is only a
        # backstop: ours raises a TimeoutError that names the key.
        async with asyncio.timeout(timeout):
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=context,
                ssl_handshake_timeout=timeout + 5,
            )
    except (OSError, TimeoutError) as e:
        # Without a log line, a client with a bad or expired
        # certificate is a silent mystery on both ends.
        # (asyncio closed the connection.)
        log.warning(
            "TLS handshake with %s failed: %s",
            address,
            why(e, timeout_key),
        )
        return None
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def first_bytes(
    conn: socket.socket, address: str, timeout: float
) -> bool:
    """Wait until the peer on ``conn`` sends something (its ClientHello).

    A peer that stays silent takes no handshake slot, only its
    descriptor; after ``timeout`` it is closed (False).
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    silent = False
    try:
        async with asyncio.timeout(timeout):
            await ready
    except TimeoutError:
        silent = True
    finally:
        loop.remove_reader(fd)
    if silent:
        log.warning(
            "TLS handshake with %s failed: no handshake within "
            "server.handshake_timeout",
            address,
        )
        conn.close()
    return not silent
