"""Choosing the framing of a TLS connection from its first bytes.

Every TLS connection speaks NDJSON unless its first bytes name another
framing registered here.  STOMP 1.2 (as vdsm speaks it on the same port)
opens with a ``CONNECT`` or ``STOMP`` frame, possibly after heart-beat
end-of-lines; its framing module registers those prefixes with
:func:`register`, e.g.::

    register((b"CONNECT", b"STOMP"), stomp.serve)

Unix connections are always NDJSON: the CLI speaks nothing else.
"""

from __future__ import annotations

import asyncio

from hostagent.transport.framing import Framing
from hostagent.transport.ndjson import serve as serve_ndjson

_READ_CHUNK = 65536

# (prefix, framing), longest prefixes first is not needed: registered
# prefixes must not be prefixes of one another.
_REGISTERED: list[tuple[bytes, Framing]] = []


def register(prefixes: tuple[bytes, ...], framing: Framing) -> None:
    """Serve TLS connections whose first bytes are one of ``prefixes``
    (after any leading CR/LF) with ``framing`` instead of NDJSON."""
    _REGISTERED.extend((p, framing) for p in prefixes)


def _decide(data: bytes, eof: bool) -> Framing | None:
    """The framing ``data`` selects; None while it may still be either."""
    head = data.lstrip(b"\r\n")
    undecided = False
    for prefix, framing in _REGISTERED:
        if head.startswith(prefix):
            return framing
        if prefix.startswith(head):
            undecided = True
    return None if undecided and not eof else serve_ndjson


async def choose_framing(
    reader: asyncio.StreamReader, timeout: float | None
) -> tuple[Framing, bytes]:
    """The framing for a new TLS connection and the bytes read to pick it.

    With nothing registered nothing is read.  Otherwise bytes are read
    (waiting up to ``timeout``, the idle timeout, for each read) until
    they tell the framings apart; on a timeout or EOF the bytes so far
    go to NDJSON, which handles an idle or closed peer as always.
    """
    if not _REGISTERED:
        return serve_ndjson, b""
    data = b""
    while True:
        decided = _decide(data, eof=False)
        if decided is not None:
            return decided, data
        try:
            async with asyncio.timeout(timeout):
                chunk = await reader.read(_READ_CHUNK)
        except TimeoutError:
            return serve_ndjson, data
        if not chunk:
            # (The reader keeps returning b"" at EOF: the framing sees it.)
            return _decide(data, eof=True) or serve_ndjson, data
        data += chunk
