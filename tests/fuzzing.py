"""Generated JSON-RPC traffic and the rules every answer must follow.

Shared by the property test (``tests/test_fuzz.py``, in ``make check``)
and the long campaign (``tests/fuzz_campaign.py``, ``make fuzz``), so
the campaign cannot rot unnoticed.

Traffic is generated at two levels: JSON-RPC structures (requests for
the real methods with good, bad and missing params; batches; values that
are not requests) and bytes (those structures serialized and then
truncated, spliced with random bytes, nested past the depth limit, given
numbers JSON cannot hold, or replaced by noise).  Valid attaches use real
loop devices, so the fuzz also drives the database through attach,
re-attach, conflicts and detach.

Hostile shapes (issue 17) are generated too: one key twice in an
object at any depth, control characters (NUL, newline, C0/C1) in
params, and secrets under camelCase, dashed, spaced keys and inside
credential subtrees, with values marked :data:`SECRET_MARK`.

The oracle is JSON-RPC 2.0 restated independently of ``hostagent.api``:
for each line sent it says how many answers must come (0 or 1), with
which id, and which error code where the spec fixes one, plus the
agent's own rules: a duplicate key anywhere makes the line -32600, a
control character anywhere in a known method's params makes it -32602.
Every answer must be well formed, never be error 100 (an unexpected
exception) and never carry a marked secret.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from support import exchange

from hostagent import schema
from hostagent.redact import is_secret_key

MAX_BATCH = 5  # the fuzzed daemon's server.max_batch: cheap to exceed
MAX_DEPTH = 64  # hostagent.api.MAX_DEPTH, restated: it is the contract
POOL = (  # vol_ids that valid attaches and detaches share
    "0f5c6d3e-0000-4000-8000-000000000001",
    "0f5c6d3e-0000-4000-8000-000000000002",
    "0f5c6d3e-0000-4000-8000-000000000003",
)
# The published method table is the contract the oracle checks against.
METHODS = tuple(m.name for m in schema.METHODS)
PARAMS = {
    m.name: [(p.name, p.required) for p in m.params] for m in schema.METHODS
}
# Every code an answer may carry; 100 (internal error) is a finding.
KNOWN_CODES = frozenset(
    {-32700, -32600, -32601, -32602, 925, 926, 927, 928, 929, 930, 931, 2009}
)
ANY = None  # the oracle accepts a result or any known error
# Every secret value generated starts with this: no answer, and no line
# of the daemon's log, may hold it.
SECRET_MARK = "fuzzSecret-"
# C0, DEL and C1: refused in any string of params (and escaped in logs).
CONTROLS = ("\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\x9f")
CONTROL_CHARS = frozenset(map(chr, (*range(0x20), *range(0x7F, 0xA0))))


# -- generation -------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

vol_ids = st.one_of(
    st.sampled_from(POOL),
    st.uuids().map(str),
    st.sampled_from(
        ["", "../../etc/passwd", POOL[0].upper(), POOL[0] + "\n", "a" * 37]
    ),
    st.text(max_size=40),
    scalars,
)


def connection_infos(devices: Sequence[str]) -> st.SearchStrategy[Any]:
    """Connection infos: attachable, not allowed, malformed, junk."""
    marked = st.text(min_size=1, max_size=8).map(SECRET_MARK.__add__)
    secrets = st.fixed_dictionaries(
        {},
        optional={
            "auth_password": st.text(min_size=1, max_size=10),
            "auth_username": st.text(min_size=1, max_size=10),
            "Token": json_values,
            # Spellings and subtrees the secret rule must see through.
            "AuthPassword": marked,
            "privateKey": marked,
            "auth-password": marked,
            "Password ": marked,
            "credentials": st.fixed_dictionaries(
                {"pw": marked}, optional={"user": marked}
            ),
            "auth": st.fixed_dictionaries({"value": marked}),
            "secrets": st.lists(marked, min_size=1, max_size=2),
        },
    )
    local = st.builds(
        lambda dev, extra: {
            "driver_volume_type": "local",
            "data": {"device_path": dev, **extra},
        },
        # Only real devices or None: a path that does not exist costs the
        # 10 s device wait and would only slow the fuzz down.  A control
        # character makes it refused before any wait.
        st.one_of(
            st.sampled_from(list(devices)),
            st.none(),
            st.builds(
                lambda dev, c, tail: dev + c + tail,
                st.sampled_from(list(devices)),
                st.sampled_from(CONTROLS),
                st.sampled_from(["", "x", "2026-12-07 CRITICAL forged"]),
            ),
        ),
        secrets,
    )
    other_driver = st.builds(
        lambda d, data: {"driver_volume_type": d, "data": data},
        st.one_of(
            st.sampled_from(["iscsi", "rbd", "nfs", "floppy", "LOCAL"]),
            st.text(max_size=10).filter(lambda s: s != "local"),
        ),
        json_objects,
    )
    malformed = st.one_of(
        st.fixed_dictionaries({"data": json_objects}),
        st.fixed_dictionaries({"driver_volume_type": st.just("local")}),
        st.fixed_dictionaries(
            {"driver_volume_type": scalars, "data": json_values}
        ),
    )
    return st.one_of(local, local, other_driver, malformed, json_values)


@st.composite
def params_for(draw: st.DrawFn, method: str, devices: Sequence[str]) -> Any:
    """Params for ``method``: mostly well formed, sometimes not."""
    by_name = {
        "vol_id": vol_ids,
        "connection_info": connection_infos(devices),
        "vol_ids": st.one_of(
            st.lists(vol_ids, max_size=4), st.none(), json_values
        ),
    }
    named: dict[str, Any] = {
        name: draw(by_name.get(name, st.one_of(st.none(), json_values)))
        for name, required in PARAMS[method]
        if required or draw(st.integers(0, 3)) == 3
    }
    how = draw(
        st.sampled_from(["named", "positional", "named", "drop", "extra"])
    )
    if how == "drop" and named:
        named.pop(draw(st.sampled_from(sorted(named))))
    elif how == "extra":
        named[draw(st.text(max_size=6))] = draw(json_values)
    if how == "positional":
        return list(named.values())
    return named


# getCapabilities runs os-brick's tools (about 0.1 s): drawn less often.
_WEIGHTED = (*METHODS, *(m for m in METHODS if "Volume" in m), "Host.ping")

VALID_IDS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63), st.text(max_size=10)
)


@st.composite
def requests(draw: st.DrawFn, devices: Sequence[str]) -> Any:
    """One request object, usually valid in shape."""
    # Hypothesis favours small draws: 0 is always the common, benign case.
    odd = draw(st.integers(0, 9))
    method: Any = draw(
        st.sampled_from(_WEIGHTED)
        if odd < 8
        else st.text(max_size=20)
        if odd == 8
        else scalars
    )
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    kind = draw(st.integers(0, 9))
    if kind < 7:
        message["id"] = draw(VALID_IDS)
    elif kind == 7:
        message["id"] = draw(st.one_of(st.none(), json_values))
    # kind 8, 9: a notification
    if isinstance(method, str) and method in METHODS:
        p = draw(params_for(method, devices))
        if p or draw(st.booleans()):
            message["params"] = p
    elif draw(st.booleans()):
        message["params"] = draw(json_values)
    flaw = draw(st.integers(0, 39))
    if flaw == 36:
        message["jsonrpc"] = draw(st.sampled_from(["1.0", 2.0, None, ""]))
    elif flaw == 37:
        del message["jsonrpc"]
    elif flaw == 38:
        message[draw(st.text(max_size=6))] = draw(json_values)
    elif flaw == 39:
        del message["method"]
    return message


@st.composite
def structures(draw: st.DrawFn, devices: Sequence[str]) -> Any:
    """A message: a request, a batch, or a JSON value that is neither."""
    kind = draw(st.integers(0, 9))
    if kind < 7:
        return draw(requests(devices))
    if kind < 9:
        size = draw(st.integers(0, MAX_BATCH + 2))
        return [
            draw(json_values)
            if draw(st.integers(0, 3)) == 3
            else draw(requests(devices))
            for _ in range(size)
        ]
    return draw(json_values)


@st.composite
def serialized(draw: st.DrawFn, devices: Sequence[str]) -> bytes:
    """A structure as bytes, possibly mutated at the byte level."""
    value = draw(structures(devices))
    text = json.dumps(
        value,
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
    )
    data = text.encode("utf-8", "surrogatepass")
    mutation = draw(st.integers(0, 20)) - 13  # draws 0..12: unchanged
    if mutation == 7:
        twice = with_duplicate_key(
            value, draw(st.integers(0, 99)), draw(scalars)
        )
        data = data if twice is None else twice
    elif mutation == 0 and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif mutation == 1:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=6)) + data[at:]
    elif mutation == 2 and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    elif mutation == 3:
        n = draw(st.sampled_from([MAX_DEPTH - 2, MAX_DEPTH, 200, 3000]))
        data = b"[" * n + data + b"]" * n
    elif mutation == 4:
        number = draw(
            st.sampled_from(
                [b"1e999", b"-1e999", b"NaN", b"Infinity", b"1" * 5000]
            )
        )
        data = data.replace(b"2.0", number, 1) if b"2.0" in data else number
    elif mutation == 5:
        data = draw(st.binary(max_size=40))
    elif mutation == 6:
        data = draw(st.sampled_from([b"\xef\xbb\xbf", b" \t", b"\r"])) + data
    return data


def with_duplicate_key(value: Any, pick: int, first: Any) -> bytes | None:
    """``value`` as JSON text where one object holds one key twice.

    The object is the ``pick``-th non-empty one, at any depth; the extra
    pair (its first key, ``first``) comes before the real one, so a
    parser where the last one wins would see the request as generated.
    None when ``value`` holds no object with a key.
    """
    objects = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item:
                objects.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    if not objects:
        return None
    target = objects[pick % len(objects)]

    def dump(v: Any) -> str:
        if isinstance(v, dict):
            pairs = [f"{json.dumps(k)}:{dump(x)}" for k, x in v.items()]
            if v is target:
                pairs.insert(0, f"{json.dumps(next(iter(v)))}:{dump(first)}")
            return "{" + ",".join(pairs) + "}"
        if isinstance(v, list):
            return "[" + ",".join(map(dump, v)) + "]"
        return json.dumps(v)

    return dump(value).encode("utf-8", "surrogatepass")


@st.composite
def streams(draw: st.DrawFn, devices: Sequence[str]) -> bytes:
    """What one connection sends: a few lines, the last maybe unended."""
    lines = draw(st.lists(serialized(devices), min_size=1, max_size=8))
    stream = b"\n".join(lines)
    if draw(st.integers(0, 4)) < 4:
        stream += b"\n"
    return stream


# -- the oracle -------------------------------------------------------------


class _Reject(Exception):
    pass


def _constant(name: str) -> Any:
    raise _Reject(name)


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Reject(text)
    return value


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > MAX_DEPTH:
                return True
            items = item.values() if isinstance(item, dict) else item
            stack.extend((v, depth + 1) for v in items)
    return False


class _Duplicate(Exception):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise _Duplicate()
    return dict(pairs)


def parse(line: bytes) -> tuple[bool | None, Any]:
    """(True, value) for acceptable JSON, (False, None) for a parse error,
    (None, None) for JSON with a key twice in one object."""
    try:
        value = json.loads(
            line.decode("utf-8"),
            parse_constant=_constant,
            parse_float=_float,
            object_pairs_hook=_unique,
        )
    except _Duplicate:
        return None, None
    except (ValueError, RecursionError, _Reject):
        return False, None
    return (False, None) if _too_deep(value) else (True, value)


def has_control(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (keys too) holds a C0/C1."""
    stack = [(value, False)]
    while stack:
        item, secret = stack.pop()
        if isinstance(item, str):
            # A secret's value may hold tab and newline (keyrings).
            bad = CONTROL_CHARS - set("\t\n\r") if secret else CONTROL_CHARS
            if not bad.isdisjoint(item):
                return True
        elif isinstance(item, dict):
            stack.extend((k, False) for k in item)
            stack.extend(
                (v, secret or is_secret_key(k)) for k, v in item.items()
            )
        elif isinstance(item, list):
            stack.extend((v, secret) for v in item)
    return False


def _valid_id(value: Any) -> bool:
    return value is None or (
        isinstance(value, (str, int)) and not isinstance(value, bool)
    )


def _key(value: Any) -> str:
    return json.dumps(value)


def _expect_one(request: Any) -> tuple[str, int | None] | None:
    """(id key, code or ANY) for one request object; None: no answer."""
    if not isinstance(request, dict):
        return _key(None), -32600
    rid = request.get("id")
    rid_key = _key(rid if _valid_id(rid) else None)
    shape_ok = (
        request.get("jsonrpc") == "2.0"
        and isinstance(request.get("method"), str)
        and (
            "params" not in request
            or isinstance(request["params"], (list, dict))
        )
        and ("id" not in request or _valid_id(rid))
        and set(request) <= {"jsonrpc", "method", "params", "id"}
    )
    if not shape_ok:
        return rid_key, -32600
    if "id" not in request:
        return None
    if request["method"] not in METHODS:
        return rid_key, -32601
    if has_control(request.get("params")):
        return rid_key, -32602
    return rid_key, ANY


@dataclass
class Expected:
    """What must come back for a stream."""

    singles: list[tuple[str, int | None]] = field(default_factory=list)
    batches: list[list[tuple[str, int | None]]] = field(default_factory=list)
    messages: int = 0
    requests: int = 0


def expect(stream: bytes) -> Expected:
    """Apply the JSON-RPC 2.0 rules to every line of ``stream``."""
    out = Expected()
    for line in stream.split(b"\n"):
        if not line.strip():
            continue
        out.messages += 1
        ok, value = parse(line)
        if ok is None:
            out.singles.append((_key(None), -32600))
            continue
        if not ok:
            out.singles.append((_key(None), -32700))
            continue
        if isinstance(value, list):
            if not value or len(value) > MAX_BATCH:
                out.singles.append((_key(None), -32600))
                continue
            out.requests += len(value)
            answers = [a for a in map(_expect_one, value) if a is not None]
            if answers:
                out.batches.append(answers)
            continue
        out.requests += 1
        answer = _expect_one(value)
        if answer is not None:
            out.singles.append(answer)
    return out


def _check_response(r: Any, problems: list[str]) -> tuple[str, Any]:
    """Validate one response object; return (id key, outcome)."""
    if not isinstance(r, dict) or r.get("jsonrpc") != "2.0":
        problems.append(f"malformed response {r!r:.200}")
        return "?", "?"
    keys = set(r) - {"jsonrpc", "id"}
    if "id" not in r or keys not in ({"result"}, {"error"}):
        problems.append(f"response members {sorted(r)}: {r!r:.200}")
        return "?", "?"
    if "result" in r:
        return _key(r["id"]), "result"
    e = r["error"]
    if (
        not isinstance(e, dict)
        or not isinstance(e.get("code"), int)
        or isinstance(e.get("code"), bool)
        or not isinstance(e.get("message"), str)
        or not e["message"]
        or set(e) - {"code", "message", "data"}
    ):
        problems.append(f"malformed error {e!r:.200}")
        return _key(r["id"]), "?"
    if e["code"] not in KNOWN_CODES:
        problems.append(f"error code {e['code']}: {e['message']:.300}")
    return _key(r["id"]), e["code"]


def _match(
    want: list[tuple[str, int | None]],
    got: list[tuple[str, Any]],
    problems: list[str],
    where: str,
) -> None:
    """Match answers to expectations by id; exact codes first."""
    pool: dict[str, list[Any]] = defaultdict(list)
    for rid, outcome in got:
        pool[rid].append(outcome)
    for rid, code in sorted(want, key=lambda w: w[1] is ANY):
        outcomes = pool.get(rid, [])
        if code is ANY:
            pick = next((o for o in outcomes if o != "?"), None)
        else:
            pick = code if code in outcomes else None
        if pick is None:
            problems.append(
                f"{where}: no answer with id {rid} and code {code}; "
                f"answers for it: {outcomes}"
            )
            continue
        outcomes.remove(pick)
    extra = {rid: o for rid, o in pool.items() if o}
    if extra:
        problems.append(f"{where}: unexpected answers {extra}")


def check(
    stream: bytes, answers: list[bytes]
) -> tuple[list[str], Counter[Any]]:
    """Problems with ``answers`` to ``stream``, and the codes seen."""
    problems: list[str] = []
    codes: Counter[Any] = Counter()
    want = expect(stream)
    singles: list[tuple[str, Any]] = []
    batches: list[list[tuple[str, Any]]] = []
    for raw in answers:
        if SECRET_MARK.encode() in raw:
            problems.append(f"a secret came back: {raw[:300]!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            problems.append(f"answer is not JSON: {raw[:200]!r}")
            continue
        if isinstance(value, dict) and "method" in value:
            # A server notification (the stream may have subscribed).
            if set(value) != {"jsonrpc", "method", "params"} or "id" in value:
                problems.append(f"malformed notification {value!r:.200}")
            codes["notification"] += 1
            continue
        if isinstance(value, list):
            if not value:
                problems.append("empty batch answer")
            batches.append([_check_response(r, problems) for r in value])
        else:
            singles.append(_check_response(value, problems))
    for _, outcome in singles + [x for b in batches for x in b]:
        codes[outcome] += 1
    _match(want.singles, singles, problems, "single")
    if len(batches) != len(want.batches):
        problems.append(
            f"{len(batches)} batch answers for {len(want.batches)} batches"
        )
        return problems, codes
    # Batches answer as units, in any order, and two of them may carry
    # the same ids: look for a pairing of expectations and answers.
    fits = [[not _problems_of(w, g) for g in batches] for w in want.batches]
    if not _assign(fits, 0, set()):
        problems.append(
            f"batch answers {batches} do not fit the batches sent "
            f"{want.batches}"
        )
    return problems, codes


def _problems_of(
    want: list[tuple[str, int | None]], got: list[tuple[str, Any]]
) -> list[str]:
    found: list[str] = []
    _match(want, got, found, "batch")
    return found


def _assign(fits: list[list[bool]], row: int, used: set[int]) -> bool:
    """Whether rows ``row``.. can each take a distinct fitting column."""
    if row == len(fits):
        return True
    for col, ok in enumerate(fits[row]):
        if ok and col not in used:
            used.add(col)
            if _assign(fits, row + 1, used):
                return True
            used.discard(col)
    return False


# -- running against a daemon ---------------------------------------------


@dataclass
class Stats:
    """Running totals of a fuzz run."""

    streams: int = 0
    messages: int = 0
    requests: int = 0
    codes: Counter[Any] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, stream: bytes, codes: Counter[Any]) -> None:
        """Count one exchanged stream."""
        want = expect(stream)
        self.streams += 1
        self.messages += want.messages
        self.requests += want.requests
        self.codes.update(codes)


def run_stream(path: str, stream: bytes, stats: Stats) -> list[str]:
    """Exchange one stream and check it; problems found (also counted)."""
    try:
        answers = exchange(path, stream, timeout=60)
    except (OSError, AssertionError) as e:
        problems = [f"exchange failed: {e}"]
        codes: Counter[Any] = Counter()
    else:
        problems, codes = check(stream, answers)
    stats.add(stream, codes)
    return problems


def db_problems(db_path: str) -> list[str]:
    """The DB's integrity check, and rows left in a transitional state."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as con:
        verdict = con.execute("PRAGMA integrity_check").fetchall()
        states = con.execute("SELECT vol_id, state FROM volume").fetchall()
    problems = []
    if verdict != [("ok",)]:
        problems.append(f"integrity_check: {verdict}")
    problems += [
        f"volume {v} left in state {s}" for v, s in states if s != "attached"
    ]
    return problems
