"""Listeners and framing: newline-delimited JSON over stream sockets.

Each connection reads lines and hands each one to the API as its own
task, so a client may pipeline requests and a slow attach does not hold
up a ping on the same connection; responses go back as they finish,
matched by id.  A request the API can answer at once (a ping) is
answered inline, without the cost of a task, and responses that finish
in the same turn of the event loop go out in one write (see
:class:`_Output`): a client pipelining requests costs one system call
per batch, not one per response.

The transport enforces the limits that keep one client from hurting the
others:

* a line longer than ``max_message_bytes`` gets -32600 and the
  connection is closed;
* at most ``max_connections`` connections: Unix clients and TLS
  clients whose handshake is done (later ones get -32600; a TCP
  connection over the limit is closed before its handshake);
* at most ``max_handshakes`` TLS handshakes at once, counted apart from
  ``max_connections``: a TCP peer is unauthenticated until its
  handshake is done, so a crowd of them must never take the slots of
  the local clients.  At the cap the agent stops accepting TCP
  connections (they wait in the listen backlog) until a handshake
  ends;
* at most ``max_in_flight`` requests running per connection (reading
  pauses at the cap, which pushes back on the client instead of queueing
  without bound);
* ``read_timeout``: a started line (or TLS handshake, or a response the
  client does not take) must make it through within that many seconds,
  so a slow-loris client cannot hold a connection slot;
* ``idle_timeout``: a connection with nothing in flight and nothing
  received for that long is closed, unless it subscribed to events.

The TLS listener requires a client certificate that chains to
``tls_ca`` and, when ``tls_allowed_subjects`` is set, whose subject CN is
in that list.

Shutdown (:meth:`Server.close`) stops the listeners and lets the
requests in flight finish; a line that arrives meanwhile on an open
connection is not run but answered with :class:`ShuttingDown`, so no
client is left waiting for an answer that never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import resource
import socket
import ssl
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hostagent import stomp
from hostagent.api import Answer, Peer, dumps, error_response, shutting_down
from hostagent.config import ConfigError, ServerConfig, parse_hostport
from hostagent.errors import InvalidRequest

log = logging.getLogger(__name__)

# The API's answer to one line: see :meth:`hostagent.api.Api.answer`.
Handler = Callable[[bytes, Peer], Answer]

_CRED = struct.Struct("3i")
_READ_CHUNK = 65536


class ListenError(Exception):
    """A listener cannot be set up; the message says why."""


class Server:
    """All listeners of the daemon and the connections they accepted."""

    def __init__(
        self,
        config: ServerConfig,
        handler: Handler,
        listening: Callable[[Peer], bool] | None = None,
        events: stomp.Hub | None = None,
    ) -> None:
        """``listening(peer)``: the client waits for notifications, so its
        connection is never idle (``idle_timeout`` does not apply).
        ``events``: where STOMP subscriptions to ``jms.queue.events`` go."""
        self.config = config
        self.handler = handler
        self.listening = listening or (lambda peer: False)
        self.events = events
        self._servers: list[asyncio.AbstractServer] = []
        # Every connection task (for close), and those counted against
        # max_connections: Unix clients and TLS clients past their
        # handshake.
        self._connections: set[asyncio.Task[Any]] = set()
        self._established: set[asyncio.Task[Any]] = set()
        # TLS listening sockets and the tasks accepting on them; a slot
        # is taken before each accept and given back when the
        # connection's handshake is over.
        self._tcp_sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._handshake_slots = asyncio.Semaphore(config.max_handshakes)
        self._requests: set[asyncio.Task[None]] = set()
        self._tls: ssl.SSLContext | None = None
        self.closing = False

    @property
    def limit(self) -> int:
        """``max_message_bytes``."""
        return self.config.max_message_bytes

    @property
    def connection_count(self) -> int:
        """Connections currently open (TLS handshakes included)."""
        return len(self._connections)

    @property
    def request_count(self) -> int:
        """Requests currently being handled, over all connections."""
        return len(self._requests)

    async def listen_unix(self, path: str, group: str = "") -> None:
        """Bind the Unix socket at ``path`` (mode 0660, group ``group``)."""
        sock_path = Path(path)
        sock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        _remove_stale_socket(sock_path)
        gid = _group_id(group) if group else None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Bind under a restrictive umask so the socket is never, even
            # briefly, connectable by others before the chmod below.
            old = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            if gid is not None:
                os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        except OSError as e:
            sock.close()
            raise ListenError(f"cannot bind {path}: {e.strerror}") from e
        await self.serve_socket(sock)
        log.info("listening on unix:%s", path)

    async def serve_socket(self, sock: socket.socket) -> None:
        """Serve an already bound (or inherited) listening Unix socket.

        A socket passed by systemd keeps its owner, group and mode (the
        .socket unit's SocketMode=/SocketGroup=) and is not unlinked here.
        """
        server = await asyncio.start_unix_server(
            self._on_unix,
            sock=sock,
            limit=_READ_CHUNK,
            backlog=min(self.config.max_connections, 4096),
        )
        self._servers.append(server)

    async def listen_tls(self, hostport: str) -> None:
        """Listen on ``HOST:PORT`` for TLS clients with certificates.

        ``*`` as HOST means every address of the host (IPv4 and IPv6).
        """
        host, port = _listen_address(hostport)
        self._tls = tls_context(self.config)
        try:
            # Sockets of our own rather than asyncio.start_server: its
            # accept loop cannot be paused, and accepting must stop
            # while max_handshakes handshakes are under way.
            socks = _bind_tcp(
                None if host == "*" else host, port, _TCP_BACKLOG
            )
        except OSError as e:
            raise ListenError(
                f"server.tls_listen: cannot listen on {hostport}: "
                f"{e.strerror or e}"
            ) from e
        self._tcp_sockets += socks
        self._acceptors += [
            asyncio.create_task(self._accept_tcp(s)) for s in socks
        ]
        subjects = self.config.tls_allowed_subjects
        log.info(
            "listening on tls:%s (client certificates from %s; subjects: %s)",
            hostport,
            self.config.tls_ca,
            ", ".join(subjects) if subjects else "any",
        )

    def _track(self, task: asyncio.Task[Any] | None = None) -> Any:
        """Remember a connection task (default: the calling one), so
        that :meth:`close` can end it; return it."""
        task = task or asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        return task

    def _admit(self, task: asyncio.Task[Any]) -> bool:
        """Count ``task`` against max_connections; False when full."""
        if len(self._established) >= self.config.max_connections:
            return False
        self._established.add(task)
        task.add_done_callback(self._established.discard)
        return True

    async def _on_unix(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with _cancel_quietly(writer):
            if not self._admit(self._track()):
                await self._refuse(writer)
                return
            await self._serve(reader, writer, unix_peer(writer))

    async def _accept_tcp(self, sock: socket.socket) -> None:
        """Accept TCP connections while fewer than max_handshakes run.

        At the cap nothing is accepted: new connections wait in the
        kernel's listen backlog, holding no descriptor of ours, until a
        handshake ends.
        """
        loop = asyncio.get_running_loop()
        while True:
            await self._handshake_slots.acquire()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as e:
                self._handshake_slots.release()
                if e.errno in _ACCEPT_OUT_OF_RESOURCES:
                    # Out of descriptors or memory: accepting again at
                    # once would spin; asyncio's own servers wait too.
                    log.warning(
                        "cannot accept TLS connections: %s; retrying in 1 s",
                        e.strerror or e,
                    )
                    await asyncio.sleep(1.0)
                continue
            self._track(asyncio.create_task(self._on_tcp(conn)))

    async def _on_tcp(self, conn: socket.socket) -> None:
        """One accepted TCP connection; holds a handshake slot."""
        task = asyncio.current_task()
        assert task is not None
        address = _format_address(_peername(conn))
        try:
            if len(self._established) >= self.config.max_connections:
                # Full: close before spending a handshake on it (the
                # peer sees the connection close; an established TLS
                # client would get -32600 instead, below).
                log.warning(
                    "refusing a connection from %s before its TLS "
                    "handshake: %d open, max_connections=%d",
                    address,
                    len(self._established),
                    self.config.max_connections,
                )
                conn.close()
                return
            streams = await self._handshake(conn, address)
        finally:
            self._handshake_slots.release()
        if streams is None:
            return
        reader, writer = streams
        with _cancel_quietly(writer):
            await self._serve_tls(task, reader, writer, address)

    async def _handshake(
        self, conn: socket.socket, address: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The server side of the TLS handshake on ``conn``; None (and
        ``conn`` closed) when it fails."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_READ_CHUNK)
        protocol = asyncio.StreamReaderProtocol(reader)
        assert self._tls is not None
        timeout = self.config.read_timeout
        try:
            # asyncio's own handshake timeout (a little later) is only a
            # backstop: ours raises a TimeoutError that names the key.
            async with asyncio.timeout(timeout):
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol,
                    conn,
                    ssl=self._tls,
                    ssl_handshake_timeout=timeout + 5,
                )
        except (OSError, TimeoutError) as e:
            # Without a log line, a client with a bad or expired
            # certificate is a silent mystery on both ends.
            # (asyncio closed the connection.)
            log.warning("TLS handshake with %s failed: %s", address, _why(e))
            return None
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _serve_tls(
        self,
        task: asyncio.Task[Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
    ) -> None:
        cn = subject_cn(writer.get_extra_info("peercert"))
        peer = Peer("tls", address=address, subject=cn)
        # Connections may have filled up during the handshake; this
        # client is authenticated, so it gets told why.
        if not self._admit(task):
            await self._refuse(writer)
            return
        allowed = self.config.tls_allowed_subjects
        if allowed and cn not in allowed:
            log.warning(
                "TLS client %s: subject CN %r is not in "
                "server.tls_allowed_subjects; closing",
                address,
                cn,
            )
            await _send_and_close(
                writer,
                InvalidRequest(
                    f"client certificate subject CN {cn!r} is not allowed "
                    "(server.tls_allowed_subjects); closing the connection",
                    {"subject": cn},
                ),
            )
            return
        log.debug("TLS connection from %s cn=%r", address, cn)
        # STOMP (vdsm's clients) and NDJSON share the port; the first
        # bytes tell them apart.
        detected = await stomp.detect(reader, self.config)
        if detected is None:
            log.debug("closing idle connection %s", peer.describe())
            writer.close()
            return
        is_stomp, first = detected
        if not is_stomp:
            await self._serve(reader, writer, peer, first)
            return
        peer.transport = "stomp"
        await stomp.serve(
            reader,
            writer,
            peer,
            answer=self._answer,
            config=self.config,
            events=self.events,
            track=self._track_request,
            listening=self.listening,
            initial=first,
        )

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        log.warning(
            "refusing a connection: %d open, max_connections=%d",
            len(self._established),
            self.config.max_connections,
        )
        await _send_and_close(
            writer,
            InvalidRequest(
                f"too many connections (max_connections="
                f"{self.config.max_connections}); try again later",
                {"max_connections": self.config.max_connections},
            ),
        )

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        initial: bytes = b"",
    ) -> None:
        out = _Output(writer)
        peer.notify = lambda obj: out.write(dumps(obj))
        in_flight = asyncio.Semaphore(self.config.max_in_flight)
        pending: set[asyncio.Task[None]] = set()
        try:
            await self._read_lines(
                reader, out, peer, in_flight, pending, initial
            )
        except (ConnectionError, OSError):
            pass
        finally:
            # Requests already started run to completion even when the
            # client went away: an attach stopped halfway would need
            # undoing, and finishing it leaves a clean, recorded state.
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            peer.notify = None
            out.flush()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _read_lines(
        self,
        reader: asyncio.StreamReader,
        out: _Output,
        peer: Peer,
        in_flight: asyncio.Semaphore,
        pending: set[asyncio.Task[None]],
        initial: bytes = b"",
    ) -> None:
        """Split the stream into lines and start a request task for each.

        Framing is done here rather than with ``readuntil`` so that the
        two timeouts can tell an idle connection (nothing buffered) from
        a stalled one (half a line buffered).
        """
        limit = self.limit
        idle = self.config.idle_timeout or None
        buf = bytearray(initial)
        start = 0  # where the next line begins in buf
        scan = 0  # where to look for its newline
        # Answers given at once to the lines of one read wait until that
        # read is used up and leave in one write: a client pipelining
        # pings costs one system call per read, not one per answer.
        held: list[bytes] = []

        async def send_held() -> bool:
            data = b"".join(held)
            held.clear()
            return await self._send(data, peer, out)

        while True:
            nl = buf.find(b"\n", scan)
            if nl >= 0:
                if nl - start > limit:
                    if held:
                        await send_held()
                    await self._too_large(out)
                    return
                line = bytes(buf[start:nl])
                start = scan = nl + 1
                if not line.strip():
                    continue
                answer = self._answer(line, peer)
                if answer is None or isinstance(answer, bytes):
                    if answer is not None:
                        held.append(answer)
                    continue
                # Reaching the in-flight cap may wait: what is answered
                # goes first.
                if held and not await send_held():
                    return
                await in_flight.acquire()
                self._start(answer, peer, out, in_flight, pending)
                continue
            if held and not await send_held():
                return
            if len(buf) - start > limit:
                await self._too_large(out)
                return
            del buf[:start]
            start, scan = 0, len(buf)
            started = bool(buf) and not buf.isspace()
            try:
                async with asyncio.timeout(
                    self.config.read_timeout if started else idle
                ):
                    chunk = await reader.read(_READ_CHUNK)
            except TimeoutError:
                if started:
                    await self._stalled(out, peer, len(buf))
                    return
                if pending or self.listening(peer):
                    continue  # waiting for answers or events: not idle
                log.debug("closing idle connection %s", peer.describe())
                return
            if not chunk:
                if started:  # the last line may lack its newline
                    answer = self._answer(bytes(buf), peer)
                    await self._respond(answer, peer, out, None)
                return
            buf += chunk

    def _start(
        self,
        answer: Answer,
        peer: Peer,
        out: _Output,
        in_flight: asyncio.Semaphore,
        pending: set[asyncio.Task[None]],
    ) -> None:
        task = asyncio.create_task(self._respond(answer, peer, out, in_flight))
        pending.add(task)
        task.add_done_callback(pending.discard)
        self._track_request(task)

    def _track_request(self, task: asyncio.Task[None]) -> None:
        """Count a request task until it ends (shutdown waits for it)."""
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _too_large(self, out: _Output) -> None:
        out.flush()
        await _send_and_close(
            out.writer,
            InvalidRequest(
                "invalid request: message larger than "
                f"{self.limit} bytes (max_message_bytes); "
                "closing the connection",
                {"max_message_bytes": self.limit},
            ),
        )

    async def _stalled(self, out: _Output, peer: Peer, size: int) -> None:
        timeout = self.config.read_timeout
        log.warning(
            "closing %s: %d bytes of a request and no newline for %g s "
            "(server.read_timeout)",
            peer.describe(),
            size,
            timeout,
        )
        out.flush()
        await _send_and_close(
            out.writer,
            InvalidRequest(
                f"invalid request: incomplete message; the rest of the "
                f"line did not arrive within {timeout:g} s "
                "(read_timeout); closing the connection",
                {"read_timeout": timeout},
            ),
        )

    def _answer(self, line: bytes, peer: Peer) -> Answer:
        if self.closing:
            log.debug(
                "not running a request from %s: shutting down",
                peer.describe(),
            )
            return shutting_down(line)
        try:
            return self.handler(line, peer)
        except Exception:
            log.exception("unexpected error answering %s", peer.describe())
            return None

    async def _send(self, response: bytes, peer: Peer, out: _Output) -> bool:
        """Write one response; False when the connection had to go."""
        out.write(response)
        if not out.writer.transport.get_write_buffer_size():
            return True  # all of it went out: nothing to wait for
        try:
            # A client that stops reading its answers would otherwise
            # hold a request slot (or this reader) forever.
            async with asyncio.timeout(self.config.read_timeout):
                await out.writer.drain()
        except TimeoutError:
            log.warning(
                "closing %s: it did not take a response for %g s "
                "(server.read_timeout)",
                peer.describe(),
                self.config.read_timeout,
            )
            out.writer.transport.abort()
            return False
        return True

    async def _respond(
        self,
        answer: Answer,
        peer: Peer,
        out: _Output,
        in_flight: asyncio.Semaphore | None,
    ) -> None:
        try:
            if answer is None or isinstance(answer, bytes):
                response = answer
            else:
                response = await answer
            if response is not None:
                await self._send(response, peer, out)
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("unexpected error answering %s", peer.describe())
        finally:
            if in_flight is not None:
                in_flight.release()

    async def close(self, timeout: float) -> None:
        """Stop listening, let requests in flight finish, close the rest.

        Until the connections close, lines that arrive on them are
        answered with :class:`ShuttingDown` instead of being run.
        """
        self.closing = True
        for server in self._servers:
            server.close()
        for acceptor in self._acceptors:
            acceptor.cancel()
        # The accept loops must be gone before their sockets close: a
        # closed descriptor must not stay registered with the loop.
        await asyncio.gather(*self._acceptors, return_exceptions=True)
        for sock in self._tcp_sockets:
            sock.close()
        if self._requests:
            log.info(
                "waiting up to %g s for %d request(s) in flight",
                timeout,
                len(self._requests),
            )
        # A request read just before closing began may still be
        # waiting for its connection's in-flight slot and start later:
        # wait for those too, within the same time.
        deadline = asyncio.get_running_loop().time() + timeout
        while self._requests:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                log.warning(
                    "%d request(s) still running at shutdown",
                    len(self._requests),
                )
                break
            await asyncio.wait(set(self._requests), timeout=left)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=1.0)


# -- TLS --------------------------------------------------------------------


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
            f"{key}: {_why(e)}"
        ) from None
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise ListenError(
            f"server.tls_ca: {ca} holds no usable CA certificate: {_why(e)}"
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


def _why(e: BaseException) -> str:
    """A one-line reason for a TLS failure, for logs and start-up errors."""
    if isinstance(e, ssl.SSLCertVerificationError) and e.verify_message:
        return f"certificate verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason).lower().replace("_", " ")
    if isinstance(e, TimeoutError):
        return "no handshake within server.read_timeout"
    return str(e) or type(e).__name__


# The listen backlog is where TCP connections wait while max_handshakes
# handshakes run, so it is not tied to max_connections; the kernel caps
# it at net.core.somaxconn.
_TCP_BACKLOG = 4096

# accept() errors that say the process or the host ran out of something.
_ACCEPT_OUT_OF_RESOURCES = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)


def _bind_tcp(
    host: str | None, port: int, backlog: int
) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (None: all).

    What :func:`asyncio.start_server` binds: one socket per address,
    IPv6 ones IPv6-only so that the IPv4 wildcard can bind beside them.
    """
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # e.g. IPv6 disabled on this host
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    if not socks:
        raise OSError(errno.EAFNOSUPPORT, "no usable address")
    return socks


def _peername(sock: socket.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return None  # the peer is already gone


def _listen_address(hostport: str) -> tuple[str, int]:
    try:
        return parse_hostport("server.tls_listen", hostport)
    except ConfigError as e:
        raise ListenError(str(e)) from None


def _format_address(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername or "")


def raise_nofile_limit(max_connections: int) -> None:
    """Raise the soft open-file limit to the hard one.

    Each connection is a descriptor; the usual soft limit of 1024 would
    refuse clients well below ``max_connections``.  A hard limit too low
    for the configured connections is logged, since only the service
    manager (``LimitNOFILE=``) can raise it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    # Descriptors beyond connections: the DB, os-brick's tools, udev.
    needed = max_connections + 128
    if soft < needed:
        log.warning(
            "open-file limit is %d but server.max_connections=%d needs "
            "about %d; raise LimitNOFILE",
            soft,
            max_connections,
            needed,
        )


@contextlib.contextmanager
def _cancel_quietly(writer: asyncio.StreamWriter) -> Iterator[None]:
    """End a connection task cancelled by :meth:`Server.close` silently.

    Python 3.11's streams call ``exception()`` on the finished handler
    task, which raises for a cancelled one and logs a bogus traceback at
    every shutdown with clients connected.  Nothing awaits these tasks,
    so ending them normally loses nothing.
    """
    try:
        yield
    except asyncio.CancelledError:
        writer.transport.abort()


def unix_peer(writer: asyncio.StreamWriter) -> Peer:
    """SO_PEERCRED of a Unix connection."""
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, gid = _CRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
        )
    except (OSError, AttributeError):
        return Peer("unix")
    return Peer("unix", uid=uid, pid=pid, gid=gid)


class _Output:
    """One connection's outgoing lines, coalesced per event loop turn.

    The first line of a turn is written at once (a lone request gets its
    answer without delay); lines that follow in the same turn wait for a
    callback at the start of the next one and leave in a single write.
    Ordering is kept, and the transport's flow control still applies:
    writers await ``writer.drain()`` as before.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._held: list[bytes] = []
        self._turn = False

    def write(self, data: bytes) -> None:
        """Send ``data`` now, or with the others of this turn."""
        if self.writer.is_closing():
            return
        if self._turn:
            self._held.append(data)
            return
        self.writer.write(data)
        self._turn = True
        asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write what this turn held back; a new turn begins."""
        self._turn = False
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            if not self.writer.is_closing():
                self.writer.write(data)


async def _send_and_close(
    writer: asyncio.StreamWriter, err: InvalidRequest
) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(dumps(error_response(err)))
        await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a dead daemon; refuse if one is alive."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ListenError(f"cannot check {path}: {e.strerror}") from e
        path.unlink(missing_ok=True)
    else:
        raise ListenError(
            f"{path}: another hostagentd is already listening there"
        )
    finally:
        probe.close()


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ListenError(
            f"server.socket_group: no such group {group!r}"
        ) from None
