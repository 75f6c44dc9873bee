"""Listeners and framing: newline-delimited JSON over stream sockets.

Each connection reads lines and hands each one to the API; a request
that has to wait (an attach, a volumes_info) runs as a task of its own,
so a client may pipeline requests and a slow attach does not hold up a
ping on the same connection; responses go back as they finish, matched
by id.  A request the API can answer at once (a ping) is answered inline,
without the cost of a task.  The transport enforces the size limit (a
longer line gets -32600 and the connection is closed), the connection
limit and the cap on requests in flight per connection (reading pauses
at the cap, which pushes back on the client instead of queueing without
bound).

Responses that finish in the same turn of the event loop go out in one
write (see :class:`_Output`): a client pipelining requests costs one
system call per batch, not one per response.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path

from hostagent.api import Answer, Peer, dumps, error_response
from hostagent.config import ServerConfig
from hostagent.errors import InvalidRequest

log = logging.getLogger(__name__)

# The API's answer to one line: see :meth:`hostagent.api.Api.answer`.
Handler = Callable[[bytes, Peer], Answer]

_CRED = struct.Struct("3i")


class ListenError(Exception):
    """A listener cannot be set up; the message says why."""


class Server:
    """All listeners of the daemon and the connections they accepted."""

    def __init__(self, config: ServerConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._requests: set[asyncio.Task[None]] = set()
        self.closing = False

    @property
    def limit(self) -> int:
        """``max_message_bytes``."""
        return self.config.max_message_bytes

    @property
    def connection_count(self) -> int:
        """Connections currently open."""
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
            limit=self.config.max_message_bytes + 1,
            backlog=min(self.config.max_connections, 4096),
        )
        self._servers.append(server)

    async def _on_unix(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._serve(reader, writer, unix_peer(writer))

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        if self.connection_count > self.config.max_connections:
            await _send_and_close(
                writer,
                InvalidRequest(
                    f"too many connections (max_connections="
                    f"{self.config.max_connections}); try again later"
                ),
            )
            return
        out = _Output(writer)
        peer.notify = lambda obj: out.write(dumps(obj))
        in_flight = asyncio.Semaphore(self.config.max_in_flight)
        pending: set[asyncio.Task[None]] = set()
        try:
            while not self.closing:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as e:
                    line = e.partial  # last line without a newline, or EOF
                    if line.strip():
                        await self._respond(
                            self._answer(line, peer), peer, out, None
                        )
                    break
                except asyncio.LimitOverrunError:
                    out.flush()
                    await _send_and_close(
                        writer,
                        InvalidRequest(
                            "invalid request: message larger than "
                            f"{self.limit} bytes (max_message_bytes); "
                            "closing the connection",
                            {"max_message_bytes": self.limit},
                        ),
                    )
                    return
                if not line.strip():
                    continue
                answer = self._answer(line, peer)
                if answer is None or isinstance(answer, bytes):
                    if answer is not None:
                        out.write(answer)
                        await writer.drain()
                    continue
                await in_flight.acquire()
                task = asyncio.create_task(
                    self._respond(answer, peer, out, in_flight)
                )
                pending.add(task)
                self._requests.add(task)
                task.add_done_callback(pending.discard)
                task.add_done_callback(self._requests.discard)
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

    def _answer(self, line: bytes, peer: Peer) -> Answer:
        try:
            return self.handler(line, peer)
        except Exception:
            log.exception("unexpected error answering %s", peer.describe())
            return None

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
                out.write(response)
                await out.writer.drain()
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("unexpected error answering %s", peer.describe())
        finally:
            if in_flight is not None:
                in_flight.release()

    async def close(self, timeout: float) -> None:
        """Stop listening, let requests in flight finish, close the rest."""
        self.closing = True
        for server in self._servers:
            server.close()
        if self._requests:
            log.info(
                "waiting up to %g s for %d request(s) in flight",
                timeout,
                len(self._requests),
            )
            _, pending = await asyncio.wait(
                set(self._requests), timeout=timeout
            )
            if pending:
                log.warning(
                    "%d request(s) still running at shutdown", len(pending)
                )
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=1.0)


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
