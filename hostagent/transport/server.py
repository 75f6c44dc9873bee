"""The server: listeners, the connections they accept, shutdown.

Unix connections take a slot at once (see
:mod:`hostagent.transport.limits` for who may hold how many); TCP ones
go through their TLS handshake first, and only then take a slot: a TCP
peer is unauthenticated until its handshake is done, so a crowd of them
must never take the slots of the local clients, nor delay another
peer's handshake.  Every TCP connection is accepted at once; one that
sends nothing within ``handshake_timeout`` is closed without ever
holding a handshake slot, and a handshake that starts must end within
``handshake_timeout`` too.  Each admitted connection is then served by
its framing (:mod:`hostagent.transport.framing`).

The TLS listener requires a client certificate that chains to
``tls_ca`` and, when ``tls_allowed_subjects`` is set, whose subject CN is
in that list.

Shutdown (:meth:`Server.close`) stops the listeners and lets the
requests in flight finish; a line that arrives meanwhile on an open
connection is not run but answered with ``ShuttingDown``, so no client
is left waiting for an answer that never comes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from hostagent.api import Answer, Peer, connection_error, shutting_down
from hostagent.config import ServerConfig
from hostagent.transport.framing import Framing, Session
from hostagent.transport.limits import Handshakes, Limits, RefusalLog
from hostagent.transport.listeners import (
    ACCEPT_OUT_OF_RESOURCES,
    TCP_BACKLOG,
    bind_tcp,
    bind_unix,
    cancel_quietly,
    peer_address,
    unix_peer,
)
from hostagent.transport.ndjson import serve as serve_ndjson
from hostagent.transport.output import send_and_close
from hostagent.transport.sniff import choose_framing
from hostagent.transport.tls import (
    first_bytes,
    handshake,
    subject_cn,
    tls_context,
)

log = logging.getLogger("hostagent.transport")

# The API's answer to one message: see :meth:`hostagent.api.Api.answer`.
Handler = Callable[[bytes, Peer], Answer]

_READ_CHUNK = 65536


class EventHub(Protocol):
    """Where event subscriptions go: :class:`hostagent.events.Events`."""

    def subscribe(self, peer: Peer) -> bool:
        """Send ``peer`` notifications through ``peer.notify``."""
        ...

    def unsubscribe(self, peer: Peer) -> bool:
        """Stop notifying ``peer``."""
        ...


class Server:
    """All listeners of the daemon and the connections they accepted."""

    def __init__(
        self,
        config: ServerConfig,
        handler: Handler,
        listening: Callable[[Peer], bool] | None = None,
        events: EventHub | None = None,
    ) -> None:
        """``listening(peer)``: the client waits for notifications, so its
        connection is never idle (``idle_timeout`` does not apply);
        ``events``: where a framing subscribes a connection to them
        (STOMP's ``jms.queue.events``)."""
        self.config = config
        self.handler = handler
        self._listening = listening or (lambda peer: False)
        self._events = events
        self.limits = Limits(config)
        self.handshakes = Handshakes(config.max_handshakes)
        self.refusals = RefusalLog()
        self._servers: list[asyncio.AbstractServer] = []
        # Every connection task, handshakes included (for close).
        self._connections: set[asyncio.Task[Any]] = set()
        # TLS listening sockets and the tasks accepting on them.
        self._tcp_sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._requests: set[asyncio.Task[None]] = set()
        self._tls: ssl.SSLContext | None = None
        self.closing = False

    @property
    def connection_count(self) -> int:
        """Connections currently open (TLS handshakes included)."""
        return len(self._connections)

    @property
    def request_count(self) -> int:
        """Requests currently being handled, over all connections."""
        return len(self._requests)

    # -- what a framing asks (framing.Endpoint) ----------------------------

    def answer(self, message: bytes, peer: Peer) -> Answer:
        """The API's answer, or the shutting-down one while closing."""
        if self.closing:
            log.debug(
                "not running a request from %s: shutting down",
                peer.describe(),
            )
            return shutting_down(message)
        try:
            return self.handler(message, peer)
        except Exception:
            log.exception("unexpected error answering %s", peer.describe())
            return None

    def listening(self, peer: Peer) -> bool:
        """Whether ``peer`` subscribed to events."""
        return self._listening(peer)

    def subscribe(self, peer: Peer, wanted: bool) -> bool:
        """Subscribe ``peer`` to events (or not); whether it is now."""
        if self._events is None:
            return False
        if wanted:
            return self._events.subscribe(peer)
        self._events.unsubscribe(peer)
        return False

    def track_request(self, task: asyncio.Task[None]) -> None:
        """Count ``task`` as in flight until done (close waits for it)."""
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    # -- listeners ---------------------------------------------------------

    async def listen_unix(self, path: str, group: str = "") -> None:
        """Bind the Unix socket at ``path`` (mode 0660, group ``group``)."""
        await self.serve_socket(bind_unix(path, group))
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
            backlog=min(self.config.max_connections, TCP_BACKLOG),
        )
        self._servers.append(server)

    async def listen_tls(self, hostport: str) -> None:
        """Listen on ``HOST:PORT`` for TLS clients with certificates.

        ``*`` as HOST means every address of the host (IPv4 and IPv6).
        """
        self._tls = tls_context(self.config)
        # Sockets of our own rather than asyncio.start_server: the
        # handshake waits for the peer's first bytes before it starts,
        # and for a slot of the peer's address.
        socks = bind_tcp(hostport)
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

    # -- connections -------------------------------------------------------

    def _track(self, task: asyncio.Task[Any] | None = None) -> Any:
        """Remember a connection task (default: the calling one), so
        that :meth:`close` can end it; return it."""
        task = task or asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        return task

    async def _on_unix(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with cancel_quietly(writer):
            peer = unix_peer(writer)
            refused = self.limits.admit_unix(self._track(), peer.uid)
            if refused:
                await self._refuse(writer, peer, refused)
                return
            await serve_ndjson(Session(reader, writer, peer, self))

    async def _accept_tcp(self, sock: socket.socket) -> None:
        """Accept every TCP connection as it comes.

        No gate here: peers that hold connections open without a word
        cost a descriptor each for ``handshake_timeout``, and never
        delay anyone else's accept or handshake.
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as e:
                if e.errno in ACCEPT_OUT_OF_RESOURCES:
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
        """One accepted TCP connection: its handshake, then its framing."""
        task = asyncio.current_task()
        assert task is not None and self._tls is not None
        host, address = peer_address(conn)
        if self.limits.full():
            # Full: close before spending a handshake on it (the peer
            # sees the connection close; an established TLS client
            # would get -32600 instead, below).
            self.refusals.warning(
                "refusing a connection from %s before its TLS "
                "handshake: %d open, max_connections=%d",
                address,
                self.limits.established,
                self.config.max_connections,
            )
            conn.close()
            return
        timeout = self.config.handshake_timeout
        try:
            if not await first_bytes(conn, address, timeout):
                return
            async with self.handshakes.slot(host):
                streams = await handshake(
                    conn, self._tls, address, timeout, "handshake_timeout"
                )
        except asyncio.CancelledError:
            conn.close()  # shutdown: no transport owns it yet
            raise
        if streams is None:
            return
        reader, writer = streams
        with cancel_quietly(writer):
            await self._serve_tls(task, reader, writer, address)

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
        refused = self.limits.admit_tls(task, cn)
        if refused:
            await self._refuse(writer, peer, refused)
            return
        allowed = self.config.tls_allowed_subjects
        if allowed and cn not in allowed:
            log.warning(
                "TLS client %s: subject CN %r is not in "
                "server.tls_allowed_subjects; closing",
                address,
                cn,
            )
            await send_and_close(
                writer,
                connection_error(
                    f"client certificate subject CN {cn!r} is not allowed "
                    "(server.tls_allowed_subjects); closing the connection",
                    {"subject": cn},
                ),
            )
            return
        log.debug("TLS connection from %s cn=%r", address, cn)
        framing: Framing
        framing, initial = await choose_framing(
            reader, self.config.idle_timeout or None
        )
        await framing(Session(reader, writer, peer, self, initial))

    async def _refuse(
        self, writer: asyncio.StreamWriter, peer: Peer, reason: str
    ) -> None:
        self.refusals.warning(
            "refusing a connection: %d open, %s (%s)",
            self.limits.established,
            reason,
            peer.describe(),
        )
        await send_and_close(
            writer,
            connection_error(
                f"too many connections ({reason}); try again later",
                {
                    "max_connections": self.config.max_connections,
                    "reason": reason,
                },
            ),
        )

    # -- shutdown ----------------------------------------------------------

    async def close(self, timeout: float) -> None:
        """Stop listening, let requests in flight finish, close the rest.

        Until the connections close, lines that arrive on them are
        answered with ``ShuttingDown`` instead of being run.
        """
        self.closing = True
        self.refusals.close()
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._requests:
            left = deadline - loop.time()
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
