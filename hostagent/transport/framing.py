"""What a framing is: the small interface between listeners and framings.

A framing turns a connected byte stream into requests for the API and
its answers back into bytes.  It gets a :class:`Session` (the connected
reader and writer, who the peer is, and the :class:`Endpoint` that
answers) and serves it until the peer goes or the server closes; the
listener that accepted the connection picks the framing (see
:mod:`hostagent.transport.sniff`).  NDJSON is
:mod:`hostagent.transport.ndjson`; STOMP 1.2 is
:mod:`hostagent.transport.stomp`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from hostagent.api import Answer, Peer
from hostagent.config import ServerConfig


class Endpoint(Protocol):
    """What a framing may ask of the server it serves for."""

    config: ServerConfig

    def answer(self, message: bytes, peer: Peer) -> Answer:
        """The API's answer to one JSON-RPC message (a request or a
        batch); while the server closes, the shutting-down answer."""

    def listening(self, peer: Peer) -> bool:
        """Whether ``peer`` waits for notifications (so is never idle)."""

    def subscribe(self, peer: Peer, wanted: bool) -> bool:
        """Start (``wanted``) or stop sending ``peer`` the event
        notifications; whether it gets them now."""

    def track_request(self, task: asyncio.Task[None]) -> None:
        """Count ``task`` as a request in flight until it is done, so
        shutdown waits for it."""


@dataclass
class Session:
    """One accepted, admitted connection, as a framing gets it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: Peer
    endpoint: Endpoint
    # Bytes already read from ``reader`` to choose the framing: they are
    # the start of the stream and come before anything read later.
    initial: bytes = b""


# Serves one session until it ends; never raises for a peer that went.
Framing = Callable[[Session], Awaitable[None]]
