"""The JSON-RPC methods: parse, validate, dispatch, answer.

This layer turns one line from a client into at most one line back.  It
owns the protocol rules (strict JSON, request shape, batches,
notifications) and the method table; the methods themselves are thin:
check params against :mod:`hostagent.schema` and call the volume service.
jsonrpcserver does the dispatching (method lookup, binding params by name
or position, building responses), one request at a time through its
``dispatch_request``: its top-level ``dispatch`` would re-parse and
re-validate what :func:`check_request` already checked (its default
jsonschema validator costs more than a whole ping) and gathers every
request, even a single one, in a task of its own.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from jsonrpcserver import Error, Result, Success
from jsonrpcserver.async_dispatcher import dispatch_request
from jsonrpcserver.dispatcher import create_request, to_response
from jsonrpcserver.dispatcher import dispatch_request as dispatch_now
from jsonrpcserver.request import Request
from jsonrpcserver.response import to_serializable
from jsonrpcserver.sentinels import NOID

from hostagent import schema
from hostagent.errors import (
    AgentError,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    ShuttingDown,
)
from hostagent.redact import SCRUBBER
from hostagent.service import VolumeService

log = logging.getLogger(__name__)

MUTATING = frozenset(
    {
        "ManagedVolume.attach_volume",
        "ManagedVolume.detach_volume",
        "ManagedVolume.extend_volume",
    }
)


# The JSON-RPC id of the request being handled in this task, so every log
# line written while handling it (here, in the service, in os-brick's
# wrappers on the loop) can carry REQUEST_ID= in the journal.
_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "hostagent_request_id", default=None
)


def current_request_id() -> str | None:
    """The id of the JSON-RPC request being handled, as text, or None."""
    return _REQUEST_ID.get()


@dataclass
class Peer:
    """Who is calling: what the transport knows about the connection."""

    transport: str = "unix"
    uid: int | None = None
    pid: int | None = None
    gid: int | None = None
    address: str = ""
    subject: str = ""
    notify: Callable[[dict[str, Any]], None] | None = field(
        default=None, repr=False
    )

    def describe(self) -> str:
        """A short description for log lines."""
        if self.transport == "unix":
            return f"unix uid={self.uid} pid={self.pid}"
        return f"{self.transport} {self.address} cn={self.subject!r}"


# -- strict JSON ------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# Deep enough for any connection info (Cinder's are 3 or 4 levels); the
# limit keeps recursive code after the parser (validation, redaction, the
# DB's JSON encoder) from ever meeting Python's recursion limit.
MAX_DEPTH = 64

# Made once: json.loads() and json.dumps() with options build a new
# decoder or encoder on every call, which costs as much as the parsing.
_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float
)
_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def loads(data: bytes) -> Any:
    """Parse one message: UTF-8 JSON without NaN, Infinity or overflow."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(
            f"parse error: message is not valid UTF-8 (byte {e.start})"
        ) from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise ParseError("parse error: JSON nested too deeply") from None
    except ValueError as e:
        raise ParseError(f"parse error: {str(e)[:200]}") from None
    # Counting brackets is a cheap upper bound on the depth; only a
    # message that could be too deep is walked.
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and (
        _depth(value) > MAX_DEPTH
    ):
        raise ParseError(
            f"parse error: JSON nested more than {MAX_DEPTH} levels deep"
        )
    return value


def _depth(value: Any) -> int:
    """Nesting depth of containers in ``value``, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack.extend((v, level + 1) for v in item)
    return deepest


# Answers are encoded with orjson: a volumes_info answer for 1,000
# volumes (some 680 kB) takes it 0.2 ms against 4.5 ms for the standard
# encoder.  Dataclasses and datetimes stay unsupported, as they are for
# the standard encoder: a result never holds one by accident.
_ORJSON_OPTIONS = (
    orjson.OPT_APPEND_NEWLINE
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def dumps(obj: Any) -> bytes:
    """Serialize one response line (with its newline).

    orjson refuses what the standard encoder handles (integers beyond 64
    bits, lone surrogates, keys that are not strings): such an answer,
    always one echoing a client's odd input, is encoded the standard way.
    orjson writes a NaN or an infinity as ``null``; no result holds one
    (requests cannot carry them), and an answer is always valid JSON.
    """
    try:
        return orjson.dumps(obj, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError
        return _dumps_std(obj)


def _dumps_std(obj: Any) -> bytes:
    """:func:`dumps` with the standard encoder, for what orjson refuses."""
    text = _ENCODER.encode(obj)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800" is legal JSON but has no UTF-8
        # form) echoed back from a request, e.g. as its id: escaped, the
        # line is still valid JSON and the client still gets its answer.
        return (
            json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
            + b"\n"
        )


_ALLOWED = frozenset({"jsonrpc", "method", "params", "id"})


def _valid_id(value: Any) -> bool:
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
    if "id" in request and not _valid_id(request["id"]):
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
            error_response(err, _request_id(m))
            for m in message
            if not (isinstance(m, dict) and "id" not in m)
        ]
        return dumps(out) if out else None
    if isinstance(message, dict) and "id" not in message:
        return None
    return dumps(error_response(err, _request_id(message)))


def _request_id(message: Any) -> Any:
    """The id to answer ``message`` with: its own if valid, else null."""
    rid = message.get("id") if isinstance(message, dict) else None
    return rid if _valid_id(rid) else None


# -- the methods ------------------------------------------------------------

Handler = Callable[..., Any]

# What :meth:`Api.answer` gives the transport: a response line, nothing
# (a notification), or an awaitable of either for a request that waits.
Answer = bytes | Awaitable[bytes | None] | None


class Api:
    """The method table and the request handler.

    Methods written as plain functions (``Host.ping``, ``rpc.discover``)
    never wait for anything; their requests are answered at once, without
    a task of their own.  Every other method is a coroutine function.
    """

    def __init__(self, service: VolumeService, max_batch: int = 100):
        self.service = service
        self.max_batch = max_batch
        self.methods: dict[str, Callable[..., Any]] = {}
        self.immediate: set[str] = set()
        self._signatures: dict[str, inspect.Signature] = {}
        # Methods whose params are all optional: a call without params
        # fits them without a signature check.
        self._no_required: set[str] = set()
        self._add("Host.ping", self.ping)
        self._add("Host.getCapabilities", self.get_capabilities)
        self._add("Host.subscribe", self.subscribe)
        self._add("Host.unsubscribe", self.unsubscribe)
        self._add("ManagedVolume.attach_volume", self.attach_volume)
        self._add("ManagedVolume.detach_volume", self.detach_volume)
        self._add("ManagedVolume.volumes_info", self.volumes_info)
        self._add("ManagedVolume.extend_volume", self.extend_volume)
        self._add("rpc.discover", self.discover)

    def _add(self, name: str, fn: Handler) -> None:
        """Publish ``fn`` as ``name``, wrapped with validation and errors."""
        spec = schema.BY_NAME[name]
        order = [p.name for p in spec.params]
        method: Callable[..., Any]

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def method(ctx: Peer, *args: Any, **kwargs: Any) -> Result:
                started = time.monotonic()
                params = dict(zip(order, args, strict=False)) | kwargs
                fields = _log_fields(name, ctx, params)
                # An attach's secrets are erased from every line logged
                # while it runs: os-brick logs a failing attach's too, and
                # so does _failure(), after the service returned.
                with SCRUBBER.holding(params.get("connection_info")):
                    try:
                        _check_params(spec, params)
                        value = await fn(ctx, **params)
                    except Exception as e:
                        return _failure(name, fields, e)
                log.debug(
                    "%s done in %.6f s",
                    name,
                    time.monotonic() - started,
                    extra=fields,
                )
                return Success(value)

        else:

            @functools.wraps(fn)
            def method(ctx: Peer, *args: Any, **kwargs: Any) -> Result:
                started = time.monotonic()
                params = dict(zip(order, args, strict=False)) | kwargs
                try:
                    _check_params(spec, params)
                    value = fn(ctx, **params)
                except Exception as e:
                    return _failure(name, _log_fields(name, ctx, params), e)
                # The fields are only built for a line that is written.
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "%s done in %.6f s",
                        name,
                        time.monotonic() - started,
                        extra=_log_fields(name, ctx, params),
                    )
                return Success(value)

            self.immediate.add(name)

        # jsonrpcserver binds params with inspect.signature() on every call,
        # which walks the functools.wraps chain each time; a signature set
        # here (the same one it would compute) is found at once.
        sig = inspect.signature(method)
        method.__signature__ = sig  # type: ignore[attr-defined]
        self._signatures[name] = sig
        if all(
            p.default is not p.empty for p in list(sig.parameters.values())[1:]
        ):
            self._no_required.add(name)
        self.methods[name] = method

    def ping(self, ctx: Peer) -> bool:
        """``Host.ping``."""
        return True

    async def get_capabilities(self, ctx: Peer) -> dict[str, Any]:
        """``Host.getCapabilities``."""
        return await self.service.capabilities()

    async def subscribe(self, ctx: Peer) -> bool:
        """``Host.subscribe``: events go to this connection until it ends."""
        return self.service.events.subscribe(ctx)

    async def unsubscribe(self, ctx: Peer) -> bool:
        """``Host.unsubscribe``; false when it was not subscribed."""
        return self.service.events.unsubscribe(ctx)

    async def attach_volume(
        self,
        ctx: Peer,
        vol_id: str,
        connection_info: dict[str, Any],
        backend: str | None = None,
    ) -> dict[str, Any]:
        """``ManagedVolume.attach_volume``."""
        try:
            return await self.service.attach(vol_id, connection_info, backend)
        finally:
            self.service.keep_secrets(vol_id)

    async def extend_volume(self, ctx: Peer, vol_id: str) -> int:
        """``ManagedVolume.extend_volume``."""
        return await self.service.extend(vol_id)

    async def detach_volume(self, ctx: Peer, vol_id: str) -> None:
        """``ManagedVolume.detach_volume``."""
        try:
            await self.service.detach(vol_id)
        finally:
            self.service.keep_secrets(vol_id)

    async def volumes_info(
        self, ctx: Peer, vol_ids: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """``ManagedVolume.volumes_info``."""
        return await self.service.info(vol_ids or None)

    def discover(self, ctx: Peer) -> dict[str, Any]:
        """``rpc.discover``."""
        return schema.document()

    # -- protocol ----------------------------------------------------------

    def answer(self, line: bytes, peer: Peer) -> Answer:
        """Answer one line: at once when nothing in it waits, else later.

        Returns the response line, ``None`` (notifications), or an
        awaitable of one of those, which the transport runs as a task of
        its own so that other requests go on meanwhile.
        """
        try:
            message = loads(line)
        except AgentError as e:
            return dumps(error_response(e))
        if isinstance(message, list):
            return _dumped(self._batch(message, peer))
        response = self.call_now(message, peer)
        if response is None or isinstance(response, dict):
            return None if response is None else dumps(response)
        return _dumped(response)

    async def handle(self, line: bytes, peer: Peer) -> bytes | None:
        """Answer one line: a response line, or ``None`` (notifications)."""
        answer = self.answer(line, peer)
        if answer is None or isinstance(answer, bytes):
            return answer
        return await answer

    async def _batch(
        self, batch: list[Any], peer: Peer
    ) -> list[dict[str, Any]] | dict[str, Any] | None:
        if not batch:
            return error_response(
                InvalidRequest("invalid request: empty batch")
            )
        if len(batch) > self.max_batch:
            return error_response(
                InvalidRequest(
                    f"invalid request: batch of {len(batch)} requests; "
                    f"at most {self.max_batch} are allowed",
                    {"max_batch": self.max_batch},
                )
            )
        out = []
        for request in batch:
            response = await self.call(request, peer)
            if response is not None:
                out.append(response)
        return out or None

    async def call(self, request: Any, peer: Peer) -> dict[str, Any] | None:
        """Answer one request object (``None`` for a notification)."""
        response = self.call_now(request, peer)
        if response is None or isinstance(response, dict):
            return response
        return await response

    def call_now(
        self, request: Any, peer: Peer
    ) -> dict[str, Any] | Awaitable[dict[str, Any] | None] | None:
        """:meth:`call`, answered at once unless the method has to wait."""
        try:
            check_request(request)
        except AgentError as e:
            rid = request.get("id") if isinstance(request, dict) else None
            return error_response(e, rid if _valid_id(rid) else None)
        name = request["method"]
        if name not in self.methods:
            if "id" not in request:
                return None
            return error_response(
                MethodNotFound(
                    f"no such method {name[:100]!r}; rpc.discover lists "
                    "the methods",
                    {"method": name[:100]},
                ),
                request["id"],
            )
        req = create_request(request)
        if name in self.immediate:
            token = _REQUEST_ID.set(_id_text(req.id))
            try:
                return self._call_immediate(name, req, peer)
            finally:
                _REQUEST_ID.reset(token)
        return self._call_later(name, req, peer)

    def _call_immediate(
        self, name: str, req: Request, peer: Peer
    ) -> dict[str, Any] | None:
        """Call a plain method directly: the same method table and the same
        signature check as jsonrpcserver's, without the rest of its
        per-call pipeline (which costs more than all else in a ping).
        Params that do not fit go through jsonrpcserver, so that its error
        is the one returned.
        """
        method = self.methods[name]
        params = req.params
        if not params and name in self._no_required:
            return _response(name, req, method(peer))
        args = [peer, *params] if isinstance(params, list) else [peer]
        kwargs = params if isinstance(params, dict) else {}
        try:
            self._signatures[name].bind(*args, **kwargs)
        except TypeError:
            _, result = dispatch_now(self.methods, peer, req)
        else:
            result = method(*args, **kwargs)
        return _response(name, req, result)

    async def _call_later(
        self, name: str, req: Request, peer: Peer
    ) -> dict[str, Any] | None:
        token = _REQUEST_ID.set(_id_text(req.id))
        try:
            if name in MUTATING:
                self._audit(name, req, peer)
            _, result = await dispatch_request(self.methods, peer, req)
        finally:
            _REQUEST_ID.reset(token)
        return _response(name, req, result)

    def _audit(self, name: str, req: Request, peer: Peer) -> None:
        """Log who calls mutating method ``name``, before anything else.

        Every call gets this line, also one whose params are wrong or do
        not fit the method at all (jsonrpcserver refuses those without
        calling it).  The vol_id is shown only when it is a valid one: a
        bad value is never written to the log.
        """
        params = req.params
        value = (
            params.get("vol_id")
            if isinstance(params, dict)
            else (params[0] if params else None)
        )
        args = [peer, *params] if isinstance(params, list) else [peer]
        kwargs = params if isinstance(params, dict) else {}
        try:
            self._signatures[name].bind(*args, **kwargs)
        except TypeError:
            refused = " (refused: the params do not fit the method)"
        else:
            refused = ""
        fields = _log_fields(name, peer, {"vol_id": value})
        log.info(
            "%s by %s vol_id=%s%s",
            name,
            peer.describe(),
            fields["VOL_ID"] or ("(invalid)" if value is not None else "-"),
            refused,
            extra=fields,
        )


def _id_text(rid: Any) -> str | None:
    """A request id as the journal's REQUEST_ID= shows it."""
    return None if rid is None or rid is NOID else str(rid)[:100]


def _log_fields(
    name: str, ctx: Peer, params: dict[str, Any]
) -> dict[str, Any]:
    """Structured fields for the journal, for the log lines of one call.

    ``VOL_ID`` only when the call's vol_id is a valid one: the fields are
    built before validation, and a bad value is never logged.
    """
    return {
        "METHOD": name,
        "VOL_ID": _valid_vol_id(params.get("vol_id")),
        "PEER_UID": ctx.uid,
        "REQUEST_ID": _REQUEST_ID.get(),
    }


def _valid_vol_id(value: Any) -> str | None:
    """``value`` if it is a vol_id the schema accepts, else None."""
    if value is None:
        return None
    try:
        schema.validate(schema.VOL_ID, value, "vol_id")
    except InvalidParams:
        return None
    return str(value)


def _check_params(spec: schema.Method, params: dict[str, Any]) -> None:
    """Validate params against the schema (InvalidParams if they fail)."""
    for p in spec.params:
        if p.name in params:
            schema.validate(p.schema, params[p.name], p.name)


def _failure(name: str, fields: dict[str, Any], e: Exception) -> Result:
    """The error result for ``e``, raised by method ``name`` (logged).

    Message and data are scrubbed here, whoever raised the error: an
    os-brick exception's text can carry a secret anywhere in it.
    """
    if isinstance(e, AgentError):
        message = SCRUBBER.scrub(e.message)
        log.log(
            logging.WARNING if e.code >= 0 else logging.INFO,
            "%s failed: %d %s",
            name,
            e.code,
            message,
            extra=fields,
        )
        return Error(e.code, message, SCRUBBER.scrub_data(e.data))
    error_id = uuid.uuid4().hex[:12]
    log.error(
        "internal error %s in %s",
        error_id,
        name,
        exc_info=(type(e), e, e.__traceback__),
        extra=fields | {"ERROR_ID": error_id},
    )
    err = InternalError(
        f"internal error; see the agent log for error_id {error_id}",
        {"error_id": error_id},
    )
    return Error(err.code, err.message, err.data)


def _response(
    name: str, req: Request, result: Result
) -> dict[str, Any] | None:
    """The response object for ``result`` (``None`` for a notification)."""
    if req.id is NOID:
        return None  # a notification: no answer
    response = to_serializable(to_response(req, result))
    assert isinstance(response, dict)
    if "error" in response:
        _explain_bind_error(name, response["error"])
    return response


async def _dumped(pending: Awaitable[Any]) -> bytes | None:
    response = await pending
    return None if response is None else dumps(response)


def _explain_bind_error(name: str, error: dict[str, Any]) -> None:
    """Reword jsonrpcserver's terse "Invalid params" for an operator."""
    if error.get("code") == InvalidParams.code and error.get("message") == (
        "Invalid params"
    ):
        detail = SCRUBBER.scrub(str(error.get("data", "")))
        error["message"] = f"bad params for {name}: {detail}"
        if "data" in error:
            error["data"] = detail


# -- the transport's own errors ---------------------------------------------


def connection_error(message: str, data: dict[str, Any]) -> bytes:
    """The -32600 line (id null) the transport sends before it closes a
    connection: a message too large or incomplete, too many connections,
    a certificate subject not allowed."""
    return dumps(error_response(InvalidRequest(message, data)))
