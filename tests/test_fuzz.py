"""Property tests: generated JSON-RPC traffic against a running daemon.

Each example is one connection's worth of lines (see ``tests/fuzzing.py``
for what is generated and what the oracle demands).  After every example
the daemon must be alive and its database must pass ``PRAGMA
integrity_check`` with no volume left half attached.  ``make fuzz`` runs
the same code for a long campaign.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent, agent_with_loops, release
from fuzzing import (
    MAX_BATCH,
    POOL,
    SECRET_MARK,
    Stats,
    check,
    db_problems,
    run_stream,
    streams,
    with_duplicate_key,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ROOT

# About 30 s on the 2-core reference machine.
EXAMPLES = int(os.environ.get("HOSTAGENT_FUZZ_EXAMPLES", "1500"))


class Fuzzed:
    """A daemon set up for fuzzing, its loop devices and running totals."""

    def __init__(self, agent: Agent, devices: list[str]) -> None:
        self.agent = agent
        self.devices = devices
        self.stats = Stats()


def fuzz_config(agent: Agent) -> None:
    """Small max_batch (cheap to exceed); only the local driver."""
    agent.configure(
        server={"max_batch": MAX_BATCH},
        brick={"drivers": ["local"]},
        log={"level": "info"},
    )


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """One daemon for the whole module, with two loop devices to attach."""
    agent, loops = agent_with_loops(tmp_path_factory.mktemp("fuzz"))
    fuzz_config(agent)
    agent.start()
    try:
        yield Fuzzed(agent, [loops.create(), loops.create()])
    finally:
        release(agent, loops, POOL)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_every_request_gets_one_well_formed_answer(
    fuzzed: Fuzzed, data: st.DataObject
) -> None:
    stream = data.draw(streams(fuzzed.devices), label="stream")
    problems = run_stream(fuzzed.agent.socket, stream, fuzzed.stats)
    assert fuzzed.agent.alive(), fuzzed.agent.log()[-5000:]
    assert problems == []
    assert db_problems(str(fuzzed.agent.db_path)) == []


def test_fuzz_totals(fuzzed: Fuzzed) -> None:
    """Runs after the property test: the daemon survived all of it."""
    stats = fuzzed.stats
    print(
        f"\nfuzz: {stats.streams} connections, {stats.messages} messages, "
        f"{stats.requests} requests; answers by code: "
        + ", ".join(
            f"{k}={v}" for k, v in sorted(stats.codes.items(), key=str)
        )
    )
    assert fuzzed.agent.alive()
    assert fuzzed.agent.call("Host.ping") is True
    assert db_problems(str(fuzzed.agent.db_path)) == []
    log = fuzzed.agent.log()
    assert "Traceback" not in log
    assert SECRET_MARK not in log
    assert "\x00" not in log


# -- make fuzz: the long campaign, in short -----------------------------------

KNOWN_CODES = {
    -32700,
    -32600,
    -32601,
    -32602,
    925,
    926,
    927,
    928,
    929,
    930,
    931,
    2009,
}


def _summary(out: str) -> dict[str, str]:
    """The campaign's summary lines, ``name: value``."""
    fields = {}
    for text in out.splitlines():
        name, sep, value = text.strip().partition(":")
        if sep and text.startswith("  ") and not text.startswith("    "):
            fields[name] = value.strip()
    return fields


def _codes(fields: dict[str, str]) -> dict[str, int]:
    pairs = (x.rsplit(":", 1) for x in fields["answers by code"].split(","))
    return {k.strip(): int(v) for k, v in pairs}


def test_make_fuzz_runs_a_short_campaign() -> None:
    out = subprocess.run(
        ["make", "-s", "fuzz", "FUZZ_MESSAGES=300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    fields = _summary(out.stdout)
    assert int(fields["messages"].split()[0]) >= 300
    assert int(fields["requests"]) > 0
    assert fields["crashes"] == "0"
    assert fields["problems"] == "0"
    assert fields["tracebacks in the daemon log"] == "0"
    assert fields["secrets or NULs in the daemon log"] == "0"
    assert fields["DB at the end"] == "integrity ok"
    codes = _codes(fields)
    assert codes.pop("result") > 0
    assert codes and {int(c) for c in codes} <= KNOWN_CODES, codes


def test_fuzz_campaign_counts_a_daemon_death_and_goes_on() -> None:
    """SIGKILL the campaign's daemon once it is busy: one crash, the
    daemon is started again and the campaign sends all its messages."""
    proc = subprocess.Popen(
        [sys.executable, "tests/fuzz_campaign.py", "--messages", "400"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        found = re.search(r"daemon pid (\d+), log (\S+)", first)
        assert found, first
        pid, log = int(found[1]), Path(found[2])
        deadline = time.monotonic() + 60
        while " failed: " not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the campaign never began"
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, rest  # a crash is a finding
    assert "daemon died (exit status -9 after" in rest
    fields = _summary(rest)
    assert fields["crashes"] == "1", rest
    assert int(fields["messages"].split()[0]) >= 400
    # Restarted: it reconciled and answered until the end.
    assert fields["DB at the end"] == "integrity ok"
    assert _codes(fields)["result"] > 0
    shutil.rmtree(log.parent.parent, ignore_errors=True)


# -- the oracle itself: it must catch what it is there to catch -------------

PING_1 = b'{"jsonrpc":"2.0","method":"Host.ping","id":1}'
BAD_1 = b'{"jsonrpc":"1.0","method":"Host.ping","id":1}'
RESULT_1 = b'{"jsonrpc":"2.0","result":true,"id":1}'
INVALID_1 = b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"x"},"id":1}'


DUP_METHOD = (
    b'{"jsonrpc":"2.0","method":"No.such","method":"Host.ping","id":1}'
)
NULL_INVALID = (
    b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"x"},"id":null}'
)
CONTROL_PARAM = (
    b'{"jsonrpc":"2.0","method":"ManagedVolume.detach_volume",'
    b'"params":["\\u0000"],"id":1}'
)
INVALID_PARAMS_1 = (
    b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"x"},"id":1}'
)
SECRET_RESULT = b'"' + SECRET_MARK.encode() + b'x"'


def test_oracle_knows_the_hostile_shapes() -> None:
    """Duplicate keys, control characters, secrets (issue 17)."""
    assert check(DUP_METHOD + b"\n", [NULL_INVALID])[0] == []
    nested = with_duplicate_key({"a": [{"b": 1, "c": 2}]}, 1, None)
    assert nested == b'{"a":[{"b":null,"b":1,"c":2}]}'
    assert (
        check(b"[" + PING_1 + b"," + nested + b"]\n", [NULL_INVALID])[0] == []
    )
    assert check(CONTROL_PARAM + b"\n", [INVALID_PARAMS_1])[0] == []
    ping_with = PING_1.replace(b"}", b',"params":["\\n"]}')
    assert check(ping_with + b"\n", [INVALID_PARAMS_1])[0] == []
    # A notification gets nothing, control character or not.
    notif = CONTROL_PARAM.replace(b',"id":1', b"")
    assert check(notif + b"\n", [])[0] == []


def test_oracle_accepts_answers_in_any_order() -> None:
    stream = b"[" + PING_1 + b"]\n[" + BAD_1 + b"]\n" + PING_1 + b"\n"
    a, b = b"[" + INVALID_1 + b"]", b"[" + RESULT_1 + b"]"
    assert check(stream, [a, b, RESULT_1])[0] == []
    assert check(stream, [RESULT_1, b, a])[0] == []


@pytest.mark.parametrize(
    ("stream", "answers"),
    [
        (PING_1 + b"\n", []),  # no answer
        (PING_1 + b"\n", [RESULT_1, RESULT_1]),  # two answers
        (b'{"jsonrpc":"2.0","method":"Host.ping"}\n', [RESULT_1]),  # notif.
        (BAD_1 + b"\n", [RESULT_1]),  # ran an invalid request
        (PING_1 + b"\n", [RESULT_1.replace(b"true", b"true,")]),  # not JSON
        (PING_1 + b"\n", [RESULT_1.replace(b'"2.0"', b'"1.0"')]),
        (
            PING_1 + b"\n",
            [b'{"jsonrpc":"2.0","error":{"code":100,"message":"x"},"id":1}'],
        ),
        (b"[" + BAD_1 + b"]\n", [b"[" + RESULT_1 + b"]"]),
        (b"{\n", [RESULT_1]),  # a parse error needs -32700, id null
        # one key twice: the line is -32600 (id null), never run
        (DUP_METHOD + b"\n", [RESULT_1]),
        (DUP_METHOD + b"\n", [NULL_INVALID.replace(b"-32600", b"-32601")]),
        (b"[" + DUP_METHOD + b"]\n", [b"[" + RESULT_1 + b"]"]),
        # a control character in params: -32602, not a result
        (CONTROL_PARAM + b"\n", [RESULT_1]),
        # a marked secret came back
        (PING_1 + b"\n", [RESULT_1.replace(b"true", SECRET_RESULT)]),
    ],
)
def test_oracle_catches_wrong_answers(stream: bytes, answers: Any) -> None:
    assert check(stream, answers)[0] != []
