"""Strict JSON for the wire: one message in, one response line out.

Requests are parsed by orjson when it can say the same as the standard
parser would, and by the standard parser otherwise, which is then the
one that decides (and words the error).  What is refused: bytes that
are not UTF-8, NaN and Infinity, numbers out of a double's range,
nesting deeper than :data:`MAX_DEPTH`, and one key twice in an object
(JSON leaves that open; parsers differ on which value wins, so a
request holding two ``method`` keys could mean one thing to a proxy
that logged it and another here).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from hostagent.errors import InvalidRequest, ParseError

# Deep enough for any connection info (Cinder's are 3 or 4 levels); the
# limit keeps recursive code after the parser (validation, redaction, the
# DB's JSON encoder) from ever meeting Python's recursion limit.
MAX_DEPTH = 64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


class _DuplicateKey(ValueError):
    """One object holds a key twice (a request error, not a parse one)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


# Made once: json.loads() and json.dumps() with options build a new
# decoder or encoder on every call, which costs as much as the parsing.
_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant,
    parse_float=_finite_float,
    object_pairs_hook=_unique_pairs,
)


class Encoded:
    """A JSON value encoded once, written into answers as it is.

    volumes_info keeps each volume's entry this way between calls: 10,000
    entries as decoded dicts hold some 39 MB and orjson walks them all
    again for every answer; encoded they hold some 8 MB and an answer
    copies them (tests/bench: ``volumes_info [10k]`` and the RSS figure).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def decoded(self) -> Any:
        """The value, parsed again (the standard encoder's fallback)."""
        return json.loads(self.data)


def encoded(obj: Any) -> Any:
    """``obj`` as an :class:`Encoded`; ``obj`` itself if orjson refuses.

    What orjson refuses (an integer beyond 64 bits a client put in its
    connection info) stays a plain value, and the answer holding it is
    written by the standard encoder (see :func:`dumps`).
    """
    try:
        data = orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError
        return obj
    # orjson's bytes keep the 4 KiB its writer started with (measured:
    # 4,098 bytes held for a 543-byte value); a copy holds what it says.
    return Encoded(bytes(memoryview(data)))


def _plain(obj: Any) -> Any:
    """The standard encoder's ``default``: an Encoded value, parsed."""
    if isinstance(obj, Encoded):
        return obj.decoded()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _fragment(obj: Any) -> Any:
    """orjson's ``default``: an Encoded value goes in as it is."""
    if isinstance(obj, Encoded):
        return orjson.Fragment(obj.data)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
    default=_plain,
)

# orjson reads an integer beyond 64 bits as a float, where the standard
# parser keeps it exact: a message with a run of 19 digits or more goes
# to the standard parser.
_LONG_NUMBER = re.compile(rb"\d{19}")


def loads(data: bytes) -> Any:
    """Parse one message: strict UTF-8 JSON, each key once per object.

    ParseError for what is not JSON; InvalidRequest for a duplicate key.
    """
    value = _fast(data)
    if value is _SLOW:
        value = _slow(data)
    # Counting brackets is a cheap upper bound on the depth; only a
    # message that could be too deep is walked.
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and (
        _depth(value) > MAX_DEPTH
    ):
        raise ParseError(
            f"parse error: JSON nested more than {MAX_DEPTH} levels deep"
        )
    return value


_SLOW = object()


def _fast(data: bytes) -> Any:
    """orjson's reading of ``data``, or _SLOW when it may not be exact.

    orjson keeps the last of two equal keys.  Each key of the message
    is followed by one colon, so when the objects hold as many keys as
    the message has colons, no key was dropped; a colon inside a string
    (an IQN, a portal) only sends the message the slow way.
    """
    if _LONG_NUMBER.search(data):
        return _SLOW
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _SLOW  # the standard parser words the error
    if _key_count(value, data.count(b":")) != data.count(b":"):
        return _SLOW
    return value


def _slow(data: bytes) -> Any:
    """The standard parser's reading of ``data`` (errors raised)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(
            f"parse error: message is not valid UTF-8 (byte {e.start})"
        ) from None
    try:
        return _DECODER.decode(text)
    except _DuplicateKey as e:
        raise InvalidRequest(
            f"invalid request: key {e.key[:40]!r} appears twice in one "
            "JSON object",
            {"duplicate_key": e.key[:40]},
        ) from None
    except RecursionError:
        raise ParseError("parse error: JSON nested too deeply") from None
    except ValueError as e:
        raise ParseError(f"parse error: {str(e)[:200]}") from None


def _key_count(value: Any, limit: int) -> int:
    """Keys in every object of ``value``; stops once past ``limit``."""
    if isinstance(value, dict) and not any(
        isinstance(v, (dict, list)) for v in value.values()
    ):
        return len(value)  # a request without nested objects: most
    count = 0
    stack = [value]
    while stack and count <= limit:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(
                v for v in item.values() if isinstance(v, (dict, list))
            )
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))
    return count


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
        return orjson.dumps(obj, default=_fragment, option=_ORJSON_OPTIONS)
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
            json.dumps(
                obj, separators=(",", ":"), allow_nan=False, default=_plain
            ).encode()
            + b"\n"
        )
