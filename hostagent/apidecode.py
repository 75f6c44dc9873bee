"""Requests as jsonrpcserver's deserializer gives them to the dispatcher.

A line is parsed once, each request in it checked (shape, method, params
bound to the method's signature) and what is refused turned into a call
of REJECT with its error, so the dispatcher never sees a request it
could answer in other words than ours.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection
from typing import Any

from hostagent.errors import (
    AgentError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
)
from hostagent.jsoncodec import loads
from hostagent.redact import SCRUBBER
from hostagent.rpcshape import (
    RID,
    Decoded,
    Refusal,
    Request,
    check_request,
    id_text,
    rejection,
    request_id,
)


class Decoder:
    """Checks the requests of a line against the published methods."""

    def __init__(self, max_batch: int, audited: Collection[str]) -> None:
        self.max_batch = max_batch
        # Methods whose refused calls are still written to the audit log.
        self.audited = audited
        self.signatures: dict[str, inspect.Signature] = {}
        # Methods whose params are all optional: a call without params
        # fits them without a signature check.
        self.no_required: set[str] = set()
        # decode()'s last line and answer: Api.answer() decodes a line to
        # choose how to dispatch it, jsonrpcserver then asks again.
        self._last: tuple[bytes, Decoded] | None = None

    def add(self, name: str, sig: inspect.Signature) -> None:
        """Know method ``name``, called as ``sig`` (its first param: ctx)."""
        self.signatures[name] = sig
        if all(
            p.default is not p.empty for p in list(sig.parameters.values())[1:]
        ):
            self.no_required.add(name)

    def decode(self, line: bytes) -> Decoded:
        """jsonrpcserver's deserializer: the line's checked requests.

        Never raises: what is refused (a parse error, a bad request, an
        unknown method, params that do not fit) becomes a call of REJECT
        with the error, under the request's id when it has a valid one;
        params are bound by name, with the request id added.
        """
        if self._last is not None and self._last[0] is line:
            return self._last[1]
        decoded: Decoded
        try:
            message = loads(line)
        except AgentError as e:
            decoded = rejection(Refusal(e), None)
        else:
            if not isinstance(message, list):
                decoded = self.request(message)
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
                decoded = [self.request(m) for m in message]
        self._last = (line, decoded)
        return decoded

    def request(self, message: Any) -> Request:
        """One request object, checked, as decode() gives it."""
        try:
            check_request(message)
        except AgentError as e:
            return rejection(Refusal(e), request_id(message))
        name = message["method"]
        has_id = "id" in message
        rid = message.get("id")
        if name not in self.signatures:
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
        if not raw and name in self.no_required:
            params: dict[str, Any] = {}
        else:
            args = raw if isinstance(raw, list) else []
            kwargs = raw if isinstance(raw, dict) else {}
            try:
                bound = self.signatures[name].bind(None, *args, **kwargs)
            except TypeError as exc:
                detail = SCRUBBER.scrub(str(exc))
                refusal = Refusal(
                    InvalidParams(f"bad params for {name}: {detail}", detail),
                    name if name in self.audited else None,
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
