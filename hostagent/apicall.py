"""One call of a published JSON-RPC method, and who makes it.

:class:`~hostagent.api.Api` dispatches; this is what happens around each
method it runs: the caller (:class:`Peer`) and the request id the log
lines carry, the params checked against the OpenRPC schema, the method
run, its outcome logged, and an exception turned into the numbered error
to answer (scrubbed of secrets, an unexpected one logged with an id).
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hostagent import schema
from hostagent.errors import AgentError, InternalError, InvalidParams
from hostagent.redact import SCRUBBER

# The lines written here are the API's: they keep its logger's name.
log = logging.getLogger("hostagent.api")

Handler = Callable[..., Any]

# The JSON-RPC id of the request being handled in this task, so every log
# line written while handling it (here, in the service, in os-brick's
# wrappers on the loop) can carry REQUEST_ID= in the journal.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "hostagentrequest_id", default=None
)


def current_request_id() -> str | None:
    """The id of the JSON-RPC request being handled, as text, or None."""
    return REQUEST_ID.get()


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


@dataclass(frozen=True)
class Method:
    """One published method: its name, its schema, its function."""

    name: str
    spec: schema.Method
    fn: Handler

    def run(self, ctx: Peer, params: dict[str, Any]) -> Any:
        """Call plain ``fn``: its value, or the AgentError to answer."""
        started = time.monotonic()
        try:
            check_params(self.spec, params)
            value = self.fn(ctx, **params)
        except Exception as e:
            return failure(self.name, log_fields(self.name, ctx, params), e)
        # The fields are only built for a line that is written.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s done in %.6f s",
                self.name,
                time.monotonic() - started,
                extra=log_fields(self.name, ctx, params),
            )
        return value

    async def run_async(self, ctx: Peer, params: dict[str, Any]) -> Any:
        """Call coroutine ``fn``: its value, or the AgentError to answer."""
        started = time.monotonic()
        fields = log_fields(self.name, ctx, params)
        # An attach's secrets are erased from every line logged while it
        # runs: os-brick logs a failing attach's too, and so does
        # failure(), after the service returned.
        with SCRUBBER.holding(params.get("connection_info")):
            try:
                check_params(self.spec, params)
                value = await self.fn(ctx, **params)
            except Exception as e:
                return failure(self.name, fields, e)
        log.debug(
            "%s done in %.6f s",
            self.name,
            time.monotonic() - started,
            extra=fields,
        )
        return value


def log_fields(name: str, ctx: Peer, params: dict[str, Any]) -> dict[str, Any]:
    """Structured fields for the journal, for the log lines of one call.

    ``VOL_ID`` only when the call's vol_id is a valid one: the fields are
    built before validation, and a bad value is never logged.
    """
    return {
        "METHOD": name,
        "VOL_ID": _valid_vol_id(params.get("vol_id")),
        "PEER_UID": ctx.uid,
        "REQUEST_ID": REQUEST_ID.get(),
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


def check_params(spec: schema.Method, params: dict[str, Any]) -> None:
    """Validate params against the schema (InvalidParams if they fail)."""
    for p in spec.params:
        if p.name in params:
            schema.validate(p.schema, params[p.name], p.name)
            schema.check_text(params[p.name], p.name)


def failure(name: str, fields: dict[str, Any], e: Exception) -> AgentError:
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
