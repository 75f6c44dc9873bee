"""Listening sockets: binding them, and who is at the other end.

The :class:`~hostagent.transport.server.Server` serves what is bound
here: the Unix socket (bound by us, or passed by systemd) and the TCP
sockets of the TLS listener.
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
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hostagent.api import Peer
from hostagent.config import ConfigError, parse_hostport
from hostagent.transport.tls import ListenError

log = logging.getLogger("hostagent.transport")

_CRED = struct.Struct("3i")

# The listen backlog is where TCP connections wait for the accept loop,
# so it is not tied to max_connections; the kernel caps it at
# net.core.somaxconn.
TCP_BACKLOG = 4096

# accept() errors that say the process or the host ran out of something.
ACCEPT_OUT_OF_RESOURCES = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)


def bind_unix(path: str, group: str = "") -> socket.socket:
    """A Unix stream socket bound at ``path`` (mode 0660, group
    ``group``), not yet listening."""
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
    return sock


def bind_tcp(hostport: str) -> list[socket.socket]:
    """Listening, non-blocking sockets on every address of ``HOST:PORT``.

    ``*`` as HOST means every address of the host.  What
    :func:`asyncio.start_server` binds: one socket per address, IPv6
    ones IPv6-only so that the IPv4 wildcard can bind beside them.
    """
    try:
        host, port = parse_hostport("server.tls_listen", hostport)
    except ConfigError as e:
        raise ListenError(str(e)) from None
    try:
        return _bind_tcp(None if host == "*" else host, port)
    except OSError as e:
        raise ListenError(
            f"server.tls_listen: cannot listen on {hostport}: "
            f"{e.strerror or e}"
        ) from e


def _bind_tcp(host: str | None, port: int) -> list[socket.socket]:
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
            sock.listen(TCP_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    if not socks:
        raise OSError(errno.EAFNOSUPPORT, "no usable address")
    return socks


def peer_address(sock: socket.socket) -> tuple[str, str]:
    """(host, "host:port") of a TCP peer; ("", "") when it is gone."""
    try:
        peername: Any = sock.getpeername()
    except OSError:
        return "", ""  # the peer is already gone
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = str(peername[0]), peername[1]
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return host, text
    return str(peername or ""), str(peername or "")


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
def cancel_quietly(writer: asyncio.StreamWriter) -> Iterator[None]:
    """End a connection task cancelled by ``Server.close`` silently.

    Python 3.11's streams call ``exception()`` on the finished handler
    task, which raises for a cancelled one and logs a bogus traceback at
    every shutdown with clients connected.  Nothing awaits these tasks,
    so ending them normally loses nothing.
    """
    try:
        yield
    except asyncio.CancelledError:
        writer.transport.abort()


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
