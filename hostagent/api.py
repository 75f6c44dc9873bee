"""The JSON-RPC methods: parse, validate, dispatch, answer.

This layer turns one line from a client into at most one line back.  It
owns the protocol rules (strict JSON, request shape, batches,
notifications) and the method table; the methods themselves are thin:
check params against :mod:`hostagent.schema` and call the volume service.

jsonrpcserver does the dispatching through its public API
(``dispatch_to_serializable`` and its async twin), with our deserializer
and validator in place of its own: :meth:`Api.decode` parses the line
(orjson, see :mod:`hostagent.jsoncodec`), checks each request's shape and
its params against the method's signature, and turns every request it
refuses into a call of an internal method that answers with the error,
so the error's words and numbers are ours and batches keep each
member's own answer (the shapes are in :mod:`hostagent.rpcshape`).
jsonrpcserver's default validator (jsonschema) costs more than a whole
ping.  A single request to a method that never waits (``Host.ping``) is
answered without it: its pipeline costs some 10 us a call, five times
the rest of the answer (1.8 us in all, measured in-process).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jsonrpcserver import (
    Error,
    Result,
    Success,
    async_dispatch_to_serializable,
    dispatch_to_serializable,
)

from hostagent import schema
from hostagent.errors import (
    AgentError,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
)
from hostagent.jsoncodec import MAX_DEPTH, dumps, loads
from hostagent.redact import SCRUBBER
from hostagent.rpcshape import (
    REJECT,
    RID,
    Decoded,
    Refusal,
    Request,
    check_request,
    connection_error,
    dispatchable,
    error_response,
    id_text,
    rejection,
    request_id,
    response_line,
    shutting_down,
)
from hostagent.service import VolumeService

__all__ = [
    "MAX_DEPTH",
    "Answer",
    "Api",
    "Peer",
    "check_request",
    "connection_error",
    "current_request_id",
    "dumps",
    "error_response",
    "loads",
    "shutting_down",
]

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
    "hostagentrequest_id", default=None
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
        # What clients can call: the name and the function behind it.
        self.methods: dict[str, Callable[..., Any]] = {}
        self._published: dict[str, _Method] = {}
        # What jsonrpcserver dispatches to: the same, wrapped to return
        # its Result, plus REJECT; its async dispatcher awaits every
        # method, so it gets the plain ones wrapped in a coroutine.
        self.table: dict[str, Callable[..., Any]] = {REJECT: self._reject}
        self.async_table: dict[str, Callable[..., Any]] = {
            REJECT: _awaitable(self._reject)
        }
        self.immediate: set[str] = {REJECT}
        self._signatures: dict[str, inspect.Signature] = {}
        # Methods whose params are all optional: a call without params
        # fits them without a signature check.
        self._no_required: set[str] = set()
        # decode()'s last line and answer: answer() decodes a line to
        # choose how to dispatch it, jsonrpcserver then asks again.
        self._decoded: tuple[bytes, Decoded] | None = None
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
        published = _Method(name, schema.BY_NAME[name], fn)
        sig = inspect.signature(fn)
        self._signatures[name] = sig
        if all(
            p.default is not p.empty for p in list(sig.parameters.values())[1:]
        ):
            self._no_required.add(name)
        self.methods[name] = fn
        self._published[name] = published
        method: Callable[..., Any]

        if inspect.iscoroutinefunction(fn):

            async def method(
                ctx: Peer, rpc_request_id: str | None = None, **params: Any
            ) -> Result:
                token = _REQUEST_ID.set(rpc_request_id)
                try:
                    if name in MUTATING:
                        self._audit(name, ctx, params.get("vol_id"))
                    return await published.run_async(ctx, params)
                finally:
                    _REQUEST_ID.reset(token)

        else:

            def method(
                ctx: Peer, rpc_request_id: str | None = None, **params: Any
            ) -> Result:
                token = _REQUEST_ID.set(rpc_request_id)
                try:
                    return _as_result(published.run(ctx, params))
                finally:
                    _REQUEST_ID.reset(token)

            self.immediate.add(name)

        # jsonrpcserver binds params with inspect.signature() on every
        # call; a signature set here is found at once.  Params reach it
        # already bound by name (decode()), plus the request id.
        method.__signature__ = sig.replace(  # type: ignore[union-attr]
            parameters=[
                *sig.parameters.values(),
                inspect.Parameter(
                    RID, inspect.Parameter.KEYWORD_ONLY, default=None
                ),
            ]
        )
        self.table[name] = method
        self.async_table[name] = (
            method if name not in self.immediate else _awaitable(method)
        )

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
        sd_id: str | None = None,
        *,
        backend: str | None = None,
    ) -> dict[str, Any]:
        """``ManagedVolume.attach_volume``; ``backend`` by name only."""
        try:
            return await self.service.attach(
                vol_id, connection_info, sd_id, backend
            )
        finally:
            self.service.keep_secrets(vol_id)

    async def extend_volume(self, ctx: Peer, vol_id: str) -> int:
        """``ManagedVolume.extend_volume``."""
        return await self.service.extend(vol_id)

    async def detach_volume(
        self, ctx: Peer, vol_id: str, sd_id: str | None = None
    ) -> bool:
        """``ManagedVolume.detach_volume``: ``true``, as vdsm answers."""
        try:
            await self.service.detach(vol_id, sd_id)
        finally:
            self.service.keep_secrets(vol_id)
        return True

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
        decoded = self.decode(line)
        if isinstance(decoded, dict):
            if decoded["method"] in self.immediate:
                return self._answer_now(decoded, peer)
        elif all(r["method"] in self.immediate for r in decoded):
            return response_line(
                dispatch_to_serializable(
                    line,
                    self.table,
                    context=peer,
                    deserializer=self.decode,
                    validator=dispatchable,
                )
            )
        return self._answer_later(line, peer)

    async def handle(self, line: bytes, peer: Peer) -> bytes | None:
        """Answer one line: a response line, or ``None`` (notifications)."""
        answer = self.answer(line, peer)
        if answer is None or isinstance(answer, bytes):
            return answer
        return await answer

    async def _answer_later(self, line: bytes, peer: Peer) -> bytes | None:
        return response_line(
            await async_dispatch_to_serializable(
                line,
                self.async_table,
                context=peer,
                deserializer=self.decode,
                validator=dispatchable,
            )
        )

    def _answer_now(self, request: Request, peer: Peer) -> bytes | None:
        """One request to a method that never waits, without jsonrpcserver.

        decode() has bound its params, so what jsonrpcserver would add
        is the cost alone.
        """
        params = dict(request["params"])
        token = _REQUEST_ID.set(params.pop(RID))
        try:
            name = request["method"]
            if name == REJECT:
                outcome = self._refuse(params["refusal"], peer)
            else:
                outcome = self._published[name].run(peer, params)
        finally:
            _REQUEST_ID.reset(token)
        if "id" not in request:
            return None
        if isinstance(outcome, AgentError):
            return dumps(error_response(outcome, request["id"]))
        return dumps(
            {"jsonrpc": "2.0", "result": outcome, "id": request["id"]}
        )

    def decode(self, line: bytes) -> Decoded:
        """jsonrpcserver's deserializer: the line's checked requests.

        Never raises: what is refused (a parse error, a bad request, an
        unknown method, params that do not fit) becomes a call of REJECT
        with the error, under the request's id when it has a valid one;
        params are bound by name, with the request id added.
        """
        if self._decoded is not None and self._decoded[0] is line:
            return self._decoded[1]
        decoded: Decoded
        try:
            message = loads(line)
        except AgentError as e:
            decoded = rejection(Refusal(e), None)
        else:
            if not isinstance(message, list):
                decoded = self._request(message)
            elif not message:
                decoded = rejection(
                    Refusal(InvalidRequest("invalid request: empty batch")),
                    None,
                )
            elif len(message) > self.max_batch:
                decoded = rejection(
                    Refusal(
                        InvalidRequest(
                            f"invalid request: batch of {len(message)} "
                            f"requests; at most {self.max_batch} are "
                            "allowed",
                            {"max_batch": self.max_batch},
                        )
                    ),
                    None,
                )
            else:
                decoded = [self._request(m) for m in message]
        self._decoded = (line, decoded)
        return decoded

    def _request(self, message: Any) -> Request:
        """One request object, checked, as decode() gives it."""
        try:
            check_request(message)
        except AgentError as e:
            return rejection(Refusal(e), request_id(message))
        name = message["method"]
        has_id = "id" in message
        rid = message.get("id")
        if name not in self.methods:
            if not has_id:
                return rejection(Refusal(None))
            return rejection(
                Refusal(
                    MethodNotFound(
                        f"no such method {name[:100]!r}; rpc.discover "
                        "lists the methods",
                        {"method": name[:100]},
                    )
                ),
                rid,
            )
        raw = message.get("params")
        if not raw and name in self._no_required:
            params: dict[str, Any] = {}
        else:
            args = raw if isinstance(raw, list) else []
            kwargs = raw if isinstance(raw, dict) else {}
            try:
                bound = self._signatures[name].bind(None, *args, **kwargs)
            except TypeError as exc:
                detail = SCRUBBER.scrub(str(exc))
                refusal = Refusal(
                    InvalidParams(f"bad params for {name}: {detail}", detail),
                    name if name in MUTATING else None,
                    kwargs.get("vol_id") if kwargs else (args or [None])[0],
                )
                return rejection(refusal, rid, has_id)
            params = dict(bound.arguments)
            del params["ctx"]
        params[RID] = id_text(rid) if has_id else None
        request = {"jsonrpc": "2.0", "method": name, "params": params}
        if has_id:
            request["id"] = rid
        return request

    def _reject(
        self,
        ctx: Peer,
        refusal: Refusal,
        rpc_request_id: str | None = None,
    ) -> Result:
        """REJECT: answer a refused request with its error."""
        token = _REQUEST_ID.set(rpc_request_id)
        try:
            return _as_result(self._refuse(refusal, ctx))
        finally:
            _REQUEST_ID.reset(token)

    def _refuse(self, refusal: Refusal, ctx: Peer) -> AgentError | None:
        """Log a refused mutating call; the error to answer with."""
        if refusal.audit is not None:
            self._audit(
                refusal.audit,
                ctx,
                refusal.vol_id,
                " (refused: the params do not fit the method)",
            )
        return refusal.error

    def _audit(
        self, name: str, peer: Peer, value: Any, refused: str = ""
    ) -> None:
        """Log who calls mutating method ``name``, before anything else.

        Every call gets this line, also one whose params are wrong or do
        not fit the method at all.  The vol_id is shown only when it is
        a valid one: a bad value is never written to the log.
        """
        fields = _log_fields(name, peer, {"vol_id": value})
        log.info(
            "%s by %s vol_id=%s%s",
            name,
            peer.describe(),
            fields["VOL_ID"] or ("(invalid)" if value is not None else "-"),
            refused,
            extra=fields,
        )


def _awaitable(method: Callable[..., Result]) -> Callable[..., Any]:
    """``method`` as a coroutine function, for the async dispatcher."""

    async def awaitable(*args: Any, **kwargs: Any) -> Result:
        return method(*args, **kwargs)

    # jsonrpcserver checks params against the signature it finds.
    awaitable.__signature__ = inspect.signature(  # type: ignore[attr-defined]
        method
    )
    return awaitable


def _as_result(outcome: Any) -> Result:
    """jsonrpcserver's Result for what _Method.run() or _refuse() gave."""
    if not isinstance(outcome, AgentError):
        return Success(outcome)
    if outcome.data is None:
        return Error(outcome.code, outcome.message)
    return Error(outcome.code, outcome.message, outcome.data)


@dataclass(frozen=True)
class _Method:
    """One published method: its name, its schema, its function."""

    name: str
    spec: schema.Method
    fn: Handler

    def run(self, ctx: Peer, params: dict[str, Any]) -> Any:
        """Call plain ``fn``: its value, or the AgentError to answer."""
        started = time.monotonic()
        try:
            _check_params(self.spec, params)
            value = self.fn(ctx, **params)
        except Exception as e:
            return _failure(self.name, _log_fields(self.name, ctx, params), e)
        # The fields are only built for a line that is written.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s done in %.6f s",
                self.name,
                time.monotonic() - started,
                extra=_log_fields(self.name, ctx, params),
            )
        return value

    async def run_async(self, ctx: Peer, params: dict[str, Any]) -> Result:
        """Call coroutine ``fn``; its Result."""
        started = time.monotonic()
        fields = _log_fields(self.name, ctx, params)
        # An attach's secrets are erased from every line logged while it
        # runs: os-brick logs a failing attach's too, and so does
        # _failure(), after the service returned.
        with SCRUBBER.holding(params.get("connection_info")):
            try:
                _check_params(self.spec, params)
                value = await self.fn(ctx, **params)
            except Exception as e:
                return _as_result(_failure(self.name, fields, e))
        log.debug(
            "%s done in %.6f s",
            self.name,
            time.monotonic() - started,
            extra=fields,
        )
        return Success(value)


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
            schema.check_text(params[p.name], p.name)


def _failure(name: str, fields: dict[str, Any], e: Exception) -> AgentError:
    """The error to answer for ``e``, raised by method ``name`` (logged).

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
        answer = AgentError(message, SCRUBBER.scrub_data(e.data))
        answer.code = e.code
        return answer
    error_id = uuid.uuid4().hex[:12]
    log.error(
        "internal error %s in %s",
        error_id,
        name,
        exc_info=(type(e), e, e.__traceback__),
        extra=fields | {"ERROR_ID": error_id},
    )
    return InternalError(
        f"internal error; see the agent log for error_id {error_id}",
        {"error_id": error_id},
    )
