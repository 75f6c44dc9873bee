"""The OpenRPC document: one description of every method.

The server validates params against it, ``rpc.discover`` returns it, the
CLI builds its help from it.  Validation is a small JSON Schema subset
implemented here because the general validator costs more per call than
the whole rest of a ``Host.ping`` (see the benchmarks).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any

from hostagent import __version__
from hostagent.errors import InvalidParams
from hostagent.redact import is_secret_key

UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

VOL_ID: dict[str, Any] = {
    "type": "string",
    "pattern": UUID_PATTERN,
    "maxLength": 36,
    "description": "a UUID in canonical lower-case form",
}

# The connection info that help texts and man pages show: an iSCSI LUN,
# the case most operators know (the one place outside hostagent/drivers/
# that names the driver).
EXAMPLE_CONNECTION = '{"driver_volume_type": "iscsi", "data": {...}}'
EXAMPLE_CONNECTION_FULL = (
    '{"driver_volume_type": "iscsi", '
    '"data": {"target_portal": "192.0.2.10:3260", '
    '"target_iqn": "iqn.2026-01.example:lun1", "target_lun": 1}}'
)
SD_ID: dict[str, Any] = {
    **VOL_ID,
    "type": ["string", "null"],
    "description": (
        "a UUID in canonical lower-case form (the storage domain's, as "
        "ovirt-engine sends it)"
    ),
}

CONNECTION_INFO: dict[str, Any] = {
    "type": "object",
    "description": f"os-brick/Cinder connection info: {EXAMPLE_CONNECTION}.",
    "required": ["driver_volume_type", "data"],
    "properties": {
        "driver_volume_type": {"type": "string", "maxLength": 64},
        "data": {"type": "object"},
    },
}

BACKEND: dict[str, Any] = {
    "type": "string",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
    "maxLength": 64,
    "description": (
        "the name of a [backend.NAME] section of the agent's config "
        "(letters, digits, - and _)"
    ),
}

TOOL_STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ready": {"type": "boolean"},
        "tools": {"type": "object"},
        "problems": {"type": "array", "items": {"type": "string"}},
    },
}

ATTACHMENT: dict[str, Any] = {
    "type": ["object", "null"],
    "description": "What os-brick's connect_volume returned.",
}

VOLUME_INFO: dict[str, Any] = {
    "type": "object",
    "properties": {
        "vol_id": VOL_ID,
        "connection_info": CONNECTION_INFO,
        "path": {"type": ["string", "null"]},
        "attachment": ATTACHMENT,
        "exists": {"type": "boolean"},
        "state": {"enum": ["attaching", "attached", "detaching"]},
        "last_error": {"type": ["string", "null"]},
        "backend": {"type": ["string", "null"]},
        "sd_id": {"type": ["string", "null"]},
        "boot_id": {
            "type": ["string", "null"],
            "description": (
                "the host's boot id when the volume was attached (null "
                "for rows of older agents)"
            ),
        },
        "this_boot": {
            "type": "boolean",
            "description": (
                "attached in the current boot; a row from an earlier boot "
                "(a reboot, a fence) is attached again by a re-attach"
            ),
        },
        "attempts": {
            "type": "integer",
            "description": "failed detach attempts of a detaching row",
        },
    },
}

CHANGED: dict[str, Any] = {
    "type": "object",
    "description": (
        "Params of the ManagedVolume.changed notification sent to "
        "subscribed connections when a volume's device goes or comes "
        "back, and when a detach retried in the background finished "
        "(then with detached: true)."
    ),
    "properties": {
        "vol_id": VOL_ID,
        "exists": {"type": "boolean"},
        "path": {"type": ["string", "null"]},
        "detached": {"type": "boolean"},
    },
}


@dataclass(frozen=True)
class Param:
    """One named parameter of a method."""

    name: str
    schema: dict[str, Any]
    required: bool = True
    description: str = ""


@dataclass(frozen=True)
class Method:
    """One JSON-RPC method as published by ``rpc.discover``."""

    name: str
    summary: str
    params: tuple[Param, ...] = ()
    result: dict[str, Any] = field(default_factory=dict)
    errors: tuple[int, ...] = ()

    @property
    def namespace(self) -> str:
        """``Host`` for ``Host.ping``."""
        return self.name.partition(".")[0]

    @property
    def verb(self) -> str:
        """``ping`` for ``Host.ping``."""
        return self.name.partition(".")[2]


METHODS: tuple[Method, ...] = (
    Method(
        "Host.ping",
        "Answer true; a liveness check.",
        result={"type": "boolean"},
    ),
    Method(
        "Host.getCapabilities",
        "Report this host's os-brick connector info, version, drivers "
        "and backends, and whether each one's tools are present.",
        result={
            "type": "object",
            "properties": {
                "connector_info": {"type": "object"},
                "version": {"type": "string"},
                "drivers": {"type": "array", "items": {"type": "string"}},
                "driver_status": {
                    "type": "object",
                    "additionalProperties": TOOL_STATUS,
                },
                "backends": {
                    "type": "object",
                    "description": "backend name -> its options and status",
                },
                "multipath_settings": {
                    "type": "object",
                    "description": (
                        "the host's user_friendly_names, no_path_retry "
                        "and flush_on_last_del, where they were read "
                        "(source) and what is wrong with them (problems); "
                        "absent when no volume uses multipath"
                    ),
                },
            },
        },
    ),
    Method(
        "Host.subscribe",
        "Send this connection ManagedVolume.changed notifications.",
        result={"type": "boolean"},
    ),
    Method(
        "Host.unsubscribe",
        "Stop sending this connection notifications.",
        result={"type": "boolean"},
    ),
    Method(
        "ManagedVolume.attach_volume",
        "Attach a volume the storage has exported to this host.",
        params=(
            Param("vol_id", VOL_ID),
            Param("connection_info", CONNECTION_INFO),
            Param("sd_id", SD_ID, required=False),
            Param(
                "backend",
                {**BACKEND, "type": ["string", "null"]},
                required=False,
                description="by name only (not by position)",
            ),
        ),
        result={
            "type": "object",
            "properties": {
                "vol_id": VOL_ID,
                "path": {"type": "string"},
                "attachment": ATTACHMENT,
                "managed_path": {"type": "string"},
            },
        },
        errors=(925, 926, 927, 928, 929, 930, 931, 2009),
    ),
    Method(
        "ManagedVolume.detach_volume",
        "Detach a volume; detaching an unknown volume succeeds.",
        params=(
            Param("vol_id", VOL_ID),
            Param("sd_id", SD_ID, required=False),
            Param(
                "force",
                {"type": "boolean"},
                required=False,
                description=(
                    "detach even when a process, mount or map holds the "
                    "device (otherwise 932); writes not yet flushed may "
                    "be lost"
                ),
            ),
        ),
        result={"type": "boolean"},
        errors=(925, 926, 927, 930, 931, 932),
    ),
    Method(
        "ManagedVolume.extend_volume",
        "Make the host see a volume's new size; return it in bytes.",
        params=(Param("vol_id", VOL_ID),),
        result={"type": "integer"},
        errors=(925, 926, 927),
    ),
    Method(
        "ManagedVolume.volumes_info",
        "Describe attached volumes (all of them when vol_ids is empty).",
        params=(
            Param(
                "vol_ids",
                {"type": ["array", "null"], "items": VOL_ID},
                required=False,
            ),
        ),
        result={"type": "array", "items": VOLUME_INFO},
    ),
    Method(
        "rpc.discover",
        "Return this OpenRPC document.",
        result={"type": "object"},
    ),
)

BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}

ERRORS: dict[int, str] = {
    -32700: "parse error",
    -32600: "invalid request or message too large",
    -32601: "no such method",
    -32602: "bad params",
    100: "unexpected internal error (data.error_id is in the log)",
    925: "os-brick is not available on this host",
    926: "the connector failed",
    927: "volume is attached elsewhere or an operation is in progress",
    928: "multipath was required but no multipath device appeared",
    929: "volume is attached with different connection info",
    930: "the state directory is full or read-only; nothing was changed",
    931: "a non-symlink sits at the managed path; nothing was changed",
    932: "the device is in use on this host (data.holders); nothing was "
    "detached (force detaches anyway)",
    2009: "driver_volume_type not supported or not allowed by config",
}


def document() -> dict[str, Any]:
    """The OpenRPC document (a fresh copy; callers may modify it)."""
    return {
        "openrpc": "1.2.6",
        "info": {"title": "hostagent", "version": __version__},
        "methods": [
            {
                "name": m.name,
                "summary": m.summary,
                "paramStructure": "either",
                "params": [
                    {
                        "name": p.name,
                        "required": p.required,
                        "schema": copy.deepcopy(p.schema),
                    }
                    | ({"description": p.description} if p.description else {})
                    for p in m.params
                ],
                "result": {"name": "result", "schema": m.result},
                "errors": [
                    {"code": c, "message": ERRORS[c]} for c in m.errors
                ],
            }
            for m in METHODS
        ],
        # OpenRPC has no word for server-to-client notifications; this
        # extension describes the ones a subscribed connection receives.
        "x-notifications": [
            {
                "name": "ManagedVolume.changed",
                "summary": "A volume's device went away or came back.",
                "params": copy.deepcopy(CHANGED),
            }
        ],
    }


# -- validation -------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "object": (dict,),
    "array": (list,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "null": (type(None),),
}


def validate(schema: dict[str, Any], value: Any, where: str) -> None:
    """Check ``value`` against ``schema``; raise :class:`InvalidParams`.

    The message names the parameter path (``connection_info.data``) and
    never echoes a value back, since values may be secrets.
    """
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            raise InvalidParams(
                f"{where} must be {' or '.join(map(_article, kinds))}",
                {"param": where},
            )
    if "enum" in schema and value not in schema["enum"]:
        raise InvalidParams(f"{where} has an unknown value", {"param": where})
    if isinstance(value, str):
        _check_string(schema, value, where)
    elif isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                raise InvalidParams(
                    f"{where}.{name} is required", {"param": f"{where}.{name}"}
                )
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                validate(sub, value[name], f"{where}.{name}")
    elif isinstance(value, list):
        items = schema.get("items")
        if items is not None:
            for i, v in enumerate(value):
                validate(items, v, f"{where}[{i}]")


# C0, DEL and C1: no param has a use for one, and each is a way to forge
# a log line (a newline), to cut a path short in C (a NUL: Python
# refuses it only deep inside os.stat, as a ValueError) or to move a
# terminal's cursor.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Under a secret key (a Ceph keyring is lines of text) tab and newline
# are allowed: such values are masked in results and erased from logs.
_CONTROL_IN_SECRET = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def check_text(value: Any, where: str) -> None:
    """Refuse a control character in any string of ``value``, keys too.

    :class:`InvalidParams` names the path and the character, never the
    value.
    """
    stack: list[tuple[Any, str, bool]] = [(value, where, False)]
    while stack:
        item, path, secret = stack.pop()
        if isinstance(item, str):
            found = (_CONTROL_IN_SECRET if secret else _CONTROL).search(item)
            if found is not None:
                raise InvalidParams(
                    f"{path} holds control character "
                    f"U+{ord(found.group()):04X} at offset {found.start()}; "
                    "text params must not hold NUL, newline or other "
                    "C0/C1 control characters",
                    {"param": path, "offset": found.start()},
                )
        elif isinstance(item, dict):
            for key, sub in item.items():
                if _CONTROL.search(key) is not None:
                    raise InvalidParams(
                        f"a key in {path} holds a control character; keys "
                        "must not hold NUL, newline or other C0/C1 control "
                        "characters",
                        {"param": path},
                    )
                stack.append(
                    (sub, f"{path}.{key[:64]}", secret or is_secret_key(key))
                )
        elif isinstance(item, list):
            stack.extend(
                (sub, f"{path}[{i}]", secret) for i, sub in enumerate(item)
            )


def _check_string(schema: dict[str, Any], value: str, where: str) -> None:
    limit = schema.get("maxLength")
    if limit is not None and len(value) > limit:
        raise InvalidParams(
            f"{where} is longer than {limit} characters", {"param": where}
        )
    if "pattern" in schema and not _matches(schema["pattern"], value):
        what = schema.get("description", "in the expected format")
        raise InvalidParams(f"{where} must be {what}", {"param": where})


_compiled: dict[str, re.Pattern[str]] = {}


def _matches(pattern: str, value: str) -> bool:
    rx = _compiled.get(pattern)
    if rx is None:
        rx = _compiled[pattern] = re.compile(pattern)
    return rx.fullmatch(value) is not None


def _is(value: Any, kind: str) -> bool:
    # bool is an int in Python but not an integer in JSON.
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "number" and isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, _TYPES[kind])


def _article(kind: str) -> str:
    return {
        "object": "an object",
        "array": "an array",
        "integer": "an integer",
        "null": "null",
    }.get(kind, f"a {kind}")
