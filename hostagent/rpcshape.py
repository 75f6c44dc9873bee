"""JSON-RPC 2.0 shapes: request checks, error responses, refusals.

What :mod:`hostagent.api` hands jsonrpcserver and what it answers
without it: the shape of a request, the error response objects, the
answer while the agent stops, and the internal call (:data:`REJECT`)
that every refused request is turned into, so that jsonrpcserver
answers it with our error in its place in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hostagent.errors import AgentError, InvalidRequest, ShuttingDown
from hostagent.jsoncodec import dumps, loads

# -- request shapes ---------------------------------------------------------

_ALLOWED = frozenset({"jsonrpc", "method", "params", "id"})


def valid_id(value: Any) -> bool:
    """Whether ``value`` may be a request id (a string, integer, null)."""
    return value is None or (
        isinstance(value, (str, int)) and not isinstance(value, bool)
    )


def check_request(request: Any) -> Any:
    """Check one request object's JSON-RPC 2.0 shape (not its params)."""
    if not isinstance(request, dict):
        raise InvalidRequest("invalid request: expected a JSON object")
    if request.get("jsonrpc") != "2.0":
        raise InvalidRequest('invalid request: "jsonrpc" must be "2.0"')
    if not isinstance(request.get("method"), str):
        raise InvalidRequest('invalid request: "method" must be a string')
    if "params" in request and not isinstance(request["params"], (list, dict)):
        raise InvalidRequest(
            'invalid request: "params" must be an array or an object'
        )
    if "id" in request and not valid_id(request["id"]):
        raise InvalidRequest(
            'invalid request: "id" must be a string, an integer or null'
        )
    extra = request.keys() - _ALLOWED
    if extra:
        raise InvalidRequest(
            "invalid request: unexpected member "
            + ", ".join(sorted(repr(k[:40]) for k in extra))
        )
    return request


def error_response(err: AgentError, req_id: Any = None) -> dict[str, Any]:
    """A JSON-RPC error response object for ``err``."""
    error: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.data is not None:
        error["data"] = err.data
    return {"jsonrpc": "2.0", "error": error, "id": req_id}


def shutting_down(line: bytes) -> bytes | None:
    """The answer to ``line`` while the agent stops: nothing is run.

    Each request with an id (and anything malformed, which would get an
    error anyway) gets a :class:`ShuttingDown` error; notifications get
    nothing, as always; a line that is not JSON keeps its parse error.
    """
    try:
        message = loads(line)
    except AgentError as e:
        return dumps(error_response(e))
    err = ShuttingDown()
    if isinstance(message, list) and message:
        out = [
            error_response(err, request_id(m))
            for m in message
            if not (isinstance(m, dict) and "id" not in m)
        ]
        return dumps(out) if out else None
    if isinstance(message, dict) and "id" not in message:
        return None
    return dumps(error_response(err, request_id(message)))


def request_id(message: Any) -> Any:
    """The id to answer ``message`` with: its own if valid, else null."""
    rid = message.get("id") if isinstance(message, dict) else None
    return rid if valid_id(rid) else None


# A checked request as jsonrpcserver gets it from Api.decode, or a
# batch of them.
Request = dict[str, Any]
Decoded = Request | list[Request]

# The keyword that carries a request's id to its method, for the
# journal's REQUEST_ID=: jsonrpcserver passes a method its params only.
# A client cannot send it: its params are bound to the method's own
# signature first, which does not have it.
RID = "rpc_request_id"

# The internal method every refused request is turned into (its params
# carry the error); no client can name it: a method name from a client
# must have a signature in the Decoder, which has none for it.
REJECT = " reject"


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused, and what to log about it."""

    error: AgentError | None  # None: a notification that gets nothing
    audit: str | None = None  # the mutating method that was refused
    vol_id: Any = None


def rejection(
    refusal: Refusal, rid: Any = None, has_id: bool = True
) -> Request:
    """A call of REJECT for ``refusal``, answered under ``rid``."""
    request: Request = {
        "jsonrpc": "2.0",
        "method": REJECT,
        "params": {
            "refusal": refusal,
            RID: id_text(rid) if has_id else None,
        },
    }
    if has_id and refusal.error is not None:
        request["id"] = rid
    return request


def dispatchable(decoded: Decoded) -> Decoded:
    """jsonrpcserver's validator: decode() has checked every request.

    What it gives is always well formed; this guards that promise (an
    exception here is jsonrpcserver's own "Invalid request").
    """
    for request in decoded if isinstance(decoded, list) else [decoded]:
        if not isinstance(request.get("params"), dict):
            raise ValueError("decode() gave a request without params")
    return decoded


def response_line(response: Any) -> bytes | None:
    """The line to send for a serialized response (None: nothing)."""
    return None if response is None else dumps(response)


def id_text(rid: Any) -> str | None:
    """A request id as the journal's REQUEST_ID= shows it."""
    return None if rid is None else str(rid)[:100]


def connection_error(message: str, data: dict[str, Any]) -> bytes:
    """The -32600 line (id null) the transport sends before it closes a
    connection: a message too large or incomplete, too many connections,
    a certificate subject not allowed."""
    return dumps(error_response(InvalidRequest(message, data)))
