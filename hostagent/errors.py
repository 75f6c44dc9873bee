"""Numbered errors of the wire contract, one class each.

Every error the agent sends back is one of these.  ``message`` is written
for an operator; ``data`` is machine-readable detail and never holds a
secret (callers scrub it before raising).
"""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """Base of all errors that travel to the client as JSON-RPC errors."""

    code: int = 100
    default_message: str = "internal error"

    def __init__(self, message: str | None = None, data: Any = None) -> None:
        self.message = message or self.default_message
        self.data = data
        super().__init__(self.message)


class ParseError(AgentError):
    """The line is not JSON (or not UTF-8)."""

    code = -32700
    default_message = "parse error"


class InvalidRequest(AgentError):
    """The JSON is not a JSON-RPC 2.0 request, or it is too large."""

    code = -32600
    default_message = "invalid request"


class MethodNotFound(AgentError):
    """No such method."""

    code = -32601
    default_message = "method not found"


class InvalidParams(AgentError):
    """The params do not match the method's schema."""

    code = -32602
    default_message = "invalid params"


class InternalError(AgentError):
    """Unexpected failure; ``data.error_id`` lets the operator grep the log."""

    code = 100
    default_message = "internal error"


class BrickUnavailable(AgentError):
    """os-brick cannot be imported or initialised on this host."""

    code = 925
    default_message = "os-brick is not available on this host"


class ConnectorFailed(AgentError):
    """The os-brick connector raised; ``data`` names the error class."""

    code = 926
    default_message = "the storage connector failed"


class VolumeBusy(AgentError):
    """The volume is attached elsewhere or another operation holds it."""

    code = 927
    default_message = "volume is busy"


class MultipathMissing(AgentError):
    """Multipath was required but no multipath device appeared."""

    code = 928
    default_message = "multipath was required but no multipath device appeared"


class ConnectionInfoMismatch(AgentError):
    """The volume is attached with different connection info."""

    code = 929
    default_message = "volume is attached with different connection info"


class StateUnwritable(AgentError):
    """The state directory is full or read-only: nothing was changed.

    The database is the agent's memory of what it attached; an attach
    or detach it cannot record is not started (or is undone), and the
    message names the directory so an operator knows what to free.
    """

    code = 930
    default_message = (
        "the agent's state directory is full or read-only; nothing was changed"
    )


class NotALink(AgentError):
    """Something other than the agent's symlink sits at the managed path.

    A directory or a regular file there is not the agent's to replace or
    remove: the operation is refused with nothing changed.
    """

    code = 931
    default_message = "the managed path is not a symbolic link"


class VolumeInUse(AgentError):
    """Detach refused: a process, mount or foreign map holds the device.

    ``data.holders`` names them (pid and ``comm`` of each process, the
    maps and mount points); nothing was torn down.  ``detach_volume``
    with ``force: true`` detaches anyway and may lose unflushed writes.
    """

    code = 932
    default_message = "the volume's device is in use on this host"


class DriverNotSupported(AgentError):
    """driver_volume_type is unknown or not allowed by the config."""

    code = 2009
    default_message = "driver_volume_type is not supported on this host"


class ShuttingDown(AgentError):
    """A request that arrived while the agent was stopping: not run.

    -32000 is the first of JSON-RPC's implementation-defined server
    error codes: the request may be fine, this server just will not
    run it now.  A client can send it again once the agent is back.
    """

    code = -32000
    default_message = (
        "the agent is shutting down; the request was not run "
        "(send it again once the agent is back)"
    )
