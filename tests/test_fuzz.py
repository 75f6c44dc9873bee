"""Property tests: generated JSON-RPC traffic against a running daemon.

Each example is one connection's worth of lines (see ``tests/fuzzing.py``
for what is generated and what the oracle demands).  After every example
the daemon must be alive and its database must pass ``PRAGMA
integrity_check`` with no volume left half attached.  ``make fuzz`` runs
the same code for a long campaign.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from conftest import Agent, Loops
from fuzzing import MAX_BATCH, POOL, Stats, db_problems, run_stream, streams
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# About 40 s on the 2-core reference machine.
EXAMPLES = int(os.environ.get("HOSTAGENT_FUZZ_EXAMPLES", "400"))


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
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "agent").mkdir()
    (tmp / "loops").mkdir()
    loops = Loops(tmp / "loops")
    agent = Agent(tmp / "agent")
    fuzz_config(agent)
    agent.start()
    try:
        yield Fuzzed(agent, [loops.create(), loops.create()])
    finally:
        if agent.alive():
            for vid in POOL:
                agent.call("ManagedVolume.detach_volume", [vid])
            agent.stop()
        loops.cleanup()
        shutil.rmtree(agent.sock_dir, ignore_errors=True)


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
    assert "Traceback" not in fuzzed.agent.log()
