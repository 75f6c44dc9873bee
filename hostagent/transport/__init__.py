"""The transport: listeners, per-client limits, framings.

Modules, one job each:

* :mod:`~hostagent.transport.server`: the listeners (Unix, TLS, sockets
  systemd passes), the connections they accept, shutdown;
* :mod:`~hostagent.transport.listeners`: binding sockets, peer
  credentials, the open-file limit;
* :mod:`~hostagent.transport.tls`: the TLS context and handshake;
* :mod:`~hostagent.transport.limits`: who may hold how many
  connections;
* :mod:`~hostagent.transport.framing`: the interface every framing
  implements; :mod:`~hostagent.transport.sniff` picks one per TLS
  connection from its first bytes;
* :mod:`~hostagent.transport.ndjson`: newline-delimited JSON-RPC;
* :mod:`~hostagent.transport.stomp`: STOMP 1.2 as vdsm speaks it, on the
  TLS port (frames in :mod:`~hostagent.transport.stomp_frames`, their
  meaning in :mod:`~hostagent.transport.stomp_session`);
* :mod:`~hostagent.transport.output`: batching of outgoing answers;
* :mod:`~hostagent.transport.inflight`: the requests a connection has
  running, within ``max_in_flight``.

JSON-RPC error shapes are the API's (:mod:`hostagent.api`); the
transport only frames them.
"""

# Imported for its registration with sniff: TLS connections that open
# with a STOMP frame are served by it.
from hostagent.transport import stomp
from hostagent.transport.framing import Endpoint, Framing, Session
from hostagent.transport.listeners import raise_nofile_limit, unix_peer
from hostagent.transport.server import Handler, Server
from hostagent.transport.tls import ListenError, subject_cn, tls_context

__all__ = [
    "Endpoint",
    "Framing",
    "Handler",
    "ListenError",
    "Server",
    "Session",
    "raise_nofile_limit",
    "stomp",
    "subject_cn",
    "tls_context",
    "unix_peer",
]
