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

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from jsonrpcserver import (
    Error,
    Result,
    Success,
    async_dispatch_to_serializable,
    dispatch_to_serializable,
)

from hostagent import schema
from hostagent.apicall import (
    REQUEST_ID,
    Handler,
    Method,
    Peer,
    current_request_id,
    log_fields,
)
from hostagent.apidecode import Decoder
from hostagent.errors import (
    AgentError,
)
from hostagent.jsoncodec import MAX_DEPTH, dumps, loads
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


# -- the methods ------------------------------------------------------------

# What :meth:`Api.answer` gives the transport: a response line, nothing
# (a notification), or an awaitable of either for a request that waits.
Answer = bytes | Awaitable[bytes | None] | None


def awaitable_method(method: Callable[..., Result]) -> Callable[..., Any]:
    """``method`` as a coroutine function, for the async dispatcher."""

    async def awaitable(*args: Any, **kwargs: Any) -> Result:
        return method(*args, **kwargs)

    # jsonrpcserver checks params against the signature it finds.
    awaitable.__signature__ = inspect.signature(  # type: ignore[attr-defined]
        method
    )
    return awaitable


def as_result(outcome: Any) -> Result:
    """jsonrpcserver's Result for a method's outcome (value or error)."""
    if not isinstance(outcome, AgentError):
        return Success(outcome)
    if outcome.data is None:
        return Error(outcome.code, outcome.message)
    return Error(outcome.code, outcome.message, outcome.data)


class Api:
    """The method table and the request handler.

    Methods written as plain functions (``Host.ping``, ``rpc.discover``)
    never wait for anything; their requests are answered at once, without
    a task of their own.  Every other method is a coroutine function.
    """

    def __init__(self, service: VolumeService, max_batch: int = 100):
        self.service = service
        self._published: dict[str, Method] = {}
        # What jsonrpcserver dispatches to: the published methods,
        # wrapped to return its Result, plus REJECT; its async
        # dispatcher awaits every method, so it gets the plain ones
        # wrapped in a coroutine.
        self.table: dict[str, Callable[..., Any]] = {REJECT: self._reject}
        self.async_table: dict[str, Callable[..., Any]] = {
            REJECT: awaitable_method(self._reject)
        }
        self.immediate: set[str] = {REJECT}
        self.decoder = Decoder(max_batch, MUTATING)
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
        published = Method(name, schema.BY_NAME[name], fn)
        sig = inspect.signature(fn)
        self.decoder.add(name, sig)
        self._published[name] = published
        method: Callable[..., Any]

        if inspect.iscoroutinefunction(fn):

            async def method(
                ctx: Peer, rpc_request_id: str | None = None, **params: Any
            ) -> Result:
                token = REQUEST_ID.set(rpc_request_id)
                try:
                    if name in MUTATING:
                        self._audit(name, ctx, params.get("vol_id"))
                    return as_result(await published.run_async(ctx, params))
                finally:
                    REQUEST_ID.reset(token)

        else:

            def method(
                ctx: Peer, rpc_request_id: str | None = None, **params: Any
            ) -> Result:
                token = REQUEST_ID.set(rpc_request_id)
                try:
                    return as_result(published.run(ctx, params))
                finally:
                    REQUEST_ID.reset(token)

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
            method if name not in self.immediate else awaitable_method(method)
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
        self,
        ctx: Peer,
        vol_id: str,
        sd_id: str | None = None,
        force: bool = False,
    ) -> bool:
        """``ManagedVolume.detach_volume``: ``true``, as vdsm answers."""
        try:
            await self.service.detach(vol_id, sd_id, force=force)
        finally:
            self.service.keep_secrets(vol_id)
        return True

    async def volumes_info(
        self, ctx: Peer, vol_ids: list[str] | None = None
    ) -> list[Any]:
        """``ManagedVolume.volumes_info``; its entries come encoded."""
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
        token = REQUEST_ID.set(params.pop(RID))
        try:
            name = request["method"]
            if name == REJECT:
                outcome = self._refuse(params["refusal"], peer)
            else:
                outcome = self._published[name].run(peer, params)
        finally:
            REQUEST_ID.reset(token)
        if "id" not in request:
            return None
        if isinstance(outcome, AgentError):
            return dumps(error_response(outcome, request["id"]))
        return dumps(
            {"jsonrpc": "2.0", "result": outcome, "id": request["id"]}
        )

    def decode(self, line: bytes) -> Decoded:
        """jsonrpcserver's deserializer: the line's checked requests."""
        return self.decoder.decode(line)

    def _reject(
        self,
        ctx: Peer,
        refusal: Refusal,
        rpc_request_id: str | None = None,
    ) -> Result:
        """REJECT: answer a refused request with its error."""
        token = REQUEST_ID.set(rpc_request_id)
        try:
            return as_result(self._refuse(refusal, ctx))
        finally:
            REQUEST_ID.reset(token)

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
        fields = log_fields(name, peer, {"vol_id": value})
        log.info(
            "%s by %s vol_id=%s%s",
            name,
            peer.describe(),
            fields["VOL_ID"] or ("(invalid)" if value is not None else "-"),
            refused,
            extra=fields,
        )
