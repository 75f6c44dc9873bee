"""The JSON-RPC methods: parse, validate, dispatch, answer.

This layer turns one line from a client into at most one line back.  It
owns the protocol rules (strict JSON, request shape, batches,
notifications) and the method table; the methods themselves are thin:
check params against :mod:`hostagent.schema` and call the volume service.
jsonrpcserver does the dispatching (method lookup, binding params by name
or position, building responses); its default jsonschema request validator
is replaced by :func:`check_request`, which costs a fraction as much.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jsonrpcserver import Error, Result, Success
from jsonrpcserver.async_main import dispatch_to_response
from jsonrpcserver.response import to_serializable

from hostagent import schema
from hostagent.errors import (
    AgentError,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
)
from hostagent.redact import SCRUBBER
from hostagent.volumes import VolumeService

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


def loads(data: bytes) -> Any:
    """Parse one message: UTF-8 JSON without NaN, Infinity or overflow."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(
            f"parse error: message is not valid UTF-8 (byte {e.start})"
        ) from None
    try:
        value = json.loads(
            text, parse_constant=_reject_constant, parse_float=_finite_float
        )
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


def dumps(obj: Any) -> bytes:
    """Serialize one response line (with its newline)."""
    text = json.dumps(
        obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
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


# -- the methods ------------------------------------------------------------

Handler = Callable[..., Awaitable[Any]]


class Api:
    """The method table and the request handler."""

    def __init__(self, service: VolumeService, max_batch: int = 100):
        self.service = service
        self.max_batch = max_batch
        self.methods: dict[str, Callable[..., Awaitable[Result]]] = {}
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

        @functools.wraps(fn)
        async def method(ctx: Peer, *args: Any, **kwargs: Any) -> Result:
            started = time.monotonic()
            params = dict(zip(order, args, strict=False)) | kwargs
            fields = {
                "METHOD": name,
                "VOL_ID": params.get("vol_id"),
                "PEER_UID": ctx.uid,
                "REQUEST_ID": _REQUEST_ID.get(),
            }
            try:
                for p in spec.params:
                    if p.name in params:
                        schema.validate(p.schema, params[p.name], p.name)
                if name in MUTATING:
                    log.info(
                        "%s by %s vol_id=%s",
                        name,
                        ctx.describe(),
                        params.get("vol_id"),
                        extra=fields,
                    )
                value = await fn(ctx, **params)
            except AgentError as e:
                log.log(
                    logging.WARNING if e.code >= 0 else logging.INFO,
                    "%s failed: %d %s",
                    name,
                    e.code,
                    e.message,
                    extra=fields,
                )
                return Error(e.code, e.message, SCRUBBER.scrub_data(e.data))
            except Exception:
                error_id = uuid.uuid4().hex[:12]
                log.exception(
                    "internal error %s in %s",
                    error_id,
                    name,
                    extra=fields | {"ERROR_ID": error_id},
                )
                err = InternalError(
                    f"internal error; see the agent log for error_id "
                    f"{error_id}",
                    {"error_id": error_id},
                )
                return Error(err.code, err.message, err.data)
            log.debug(
                "%s done in %.6f s",
                name,
                time.monotonic() - started,
                extra=fields,
            )
            return Success(value)

        self.methods[name] = method

    async def ping(self, ctx: Peer) -> bool:
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
        return await self.service.attach(vol_id, connection_info, backend)

    async def extend_volume(self, ctx: Peer, vol_id: str) -> int:
        """``ManagedVolume.extend_volume``."""
        return await self.service.extend(vol_id)

    async def detach_volume(self, ctx: Peer, vol_id: str) -> None:
        """``ManagedVolume.detach_volume``."""
        await self.service.detach(vol_id)

    async def volumes_info(
        self, ctx: Peer, vol_ids: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """``ManagedVolume.volumes_info``."""
        return await self.service.info(vol_ids or None)

    async def discover(self, ctx: Peer) -> dict[str, Any]:
        """``rpc.discover``."""
        return schema.document()

    # -- protocol ----------------------------------------------------------

    async def handle(self, line: bytes, peer: Peer) -> bytes | None:
        """Answer one line: a response line, or ``None`` (notifications)."""
        try:
            message = loads(line)
        except AgentError as e:
            return dumps(error_response(e))
        if isinstance(message, list):
            response: Any = await self._batch(message, peer)
        else:
            response = await self.call(message, peer)
        return None if response is None else dumps(response)

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
        rid = request.get("id")
        token = _REQUEST_ID.set(None if rid is None else str(rid)[:100])
        try:
            response = await dispatch_to_response(
                request,
                self.methods,
                context=peer,
                deserializer=_identity,
                validator=_identity,
                post_process=to_serializable,
            )
        finally:
            _REQUEST_ID.reset(token)
        if not isinstance(response, dict):
            return None  # a notification: no answer
        if "error" in response:
            _explain_bind_error(name, response["error"])
        return response


def _identity(value: Any) -> Any:
    return value


def _explain_bind_error(name: str, error: dict[str, Any]) -> None:
    """Reword jsonrpcserver's terse "Invalid params" for an operator."""
    if error.get("code") == InvalidParams.code and error.get("message") == (
        "Invalid params"
    ):
        detail = str(error.get("data", ""))
        error["message"] = f"bad params for {name}: {detail}"
