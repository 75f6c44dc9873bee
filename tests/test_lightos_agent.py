"""The lightos driver through the real daemon, against a fake
discovery-client (tests/fakelightos.py; see test_lightos.py).

This kernel has no NVMe-oF: as with the real service, the device never
shows up, and the attach fails as the real one would here (926 with
os-brick's class) after the discovery entry was added and withdrawn.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent, new_vol_id
from fakelightos import FakeDiscoveryClient
from test_lightos import data, expected_entries

ATTACH = "ManagedVolume.attach_volume"
INFO = "ManagedVolume.volumes_info"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDiscoveryClient]:
    f = FakeDiscoveryClient(tmp_path / "discovery.d").start()
    yield f
    f.stop()


def lightos_agent(agent_factory: Any, fake: FakeDiscoveryClient) -> Agent:
    a: Agent = agent_factory()
    a.configure(
        brick={
            "drivers": ["local", "lightos"],
            "lightos_discovery_dir": str(fake.directory),
            "lightos_discovery_address": "127.0.0.1",
            "lightos_discovery_port": fake.port,
            "lightos_device_wait": 2,
        }
    )
    a.start()
    return a


def info(vol: str) -> dict[str, Any]:
    return {"driver_volume_type": "lightos", "data": data(vol)}


def test_attach_fails_as_on_this_kernel(
    agent_factory: Any, fake: FakeDiscoveryClient
) -> None:
    a = lightos_agent(agent_factory, fake)
    vid, vol = new_vol_id(), str(uuid.uuid4())
    name = f"{vol}.conf"
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(a.error, ATTACH, [vid, info(vol)])
        # While the connector waits for the device, the service holds
        # the entries it read from the file the agent's connector wrote.
        assert fake.wait_for(("add", name))
        assert set(fake.entries[name]) == expected_entries()
        e = call.result()
    assert e.code == 926
    assert e.data["error_class"] == "BrickException"
    assert f"Device with uuid {vol} did not show up" in e.message
    # The service read the entry the connector wrote, with the agent's
    # settings, and saw it withdrawn; the failed attach's clean-up
    # found nothing more to withdraw.
    assert fake.wait_for(("remove", name))
    assert fake.events == [("add", name), ("remove", name)]
    assert fake.warnings == []
    assert all("/dev/nvme-fabrics" in x for x in fake.connect_errors)
    assert list(fake.directory.iterdir()) == []
    assert a.call(INFO) == []
    assert f"volume {vid}: connecting (lightos)" in a.log()


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    d = copy.deepcopy(d)
    del d[key]
    return d


def _node(**change: Any) -> dict[str, Any]:
    d = data(str(uuid.uuid4()))
    node = next(iter(d["lightos_nodes"].values()))
    node.update(change)
    return d


BAD = {
    "uuid missing": _without(data(str(uuid.uuid4())), "uuid"),
    "uuid a path": {**data("x"), "uuid": "../../../etc/cron.d/evil"},
    "uuid upper-case": {**data("x"), "uuid": str(uuid.uuid4()).upper()},
    "subsysnqn missing": _without(data(str(uuid.uuid4())), "subsysnqn"),
    "subsysnqn empty": {**data(str(uuid.uuid4())), "subsysnqn": ""},
    "subsysnqn flag": {**data(str(uuid.uuid4())), "subsysnqn": "n -p"},
    "subsysnqn comment": {**data(str(uuid.uuid4())), "subsysnqn": "n#x"},
    "subsysnqn equals": {**data(str(uuid.uuid4())), "subsysnqn": "a=b"},
    "nodes missing": _without(data(str(uuid.uuid4())), "lightos_nodes"),
    "nodes empty": {**data(str(uuid.uuid4())), "lightos_nodes": {}},
    "nodes a list": {**data(str(uuid.uuid4())), "lightos_nodes": [1]},
    "node not an object": {
        **data(str(uuid.uuid4())),
        "lightos_nodes": {"a": "b"},
    },
    "rdma": _node(transport_type="rdma"),
    "portal with a flag": _node(target_portal="10.0.0.1 -p"),
    "portal empty": _node(target_portal=""),
    "port 0": _node(target_port=0),
    "port too big": _node(target_port=65536),
    "port a bool": _node(target_port=True),
    "port text": _node(target_port="http"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_data_is_32602_and_touches_nothing(
    agent_factory: Any, fake: FakeDiscoveryClient, name: str
) -> None:
    a = lightos_agent(agent_factory, fake)
    conn = {"driver_volume_type": "lightos", "data": BAD[name]}
    e = a.error(ATTACH, [new_vol_id(), conn])
    assert e.code == -32602, e.message
    assert e.data == {"param": "connection_info.data"}
    assert "connection_info.data." in e.message
    assert a.call(INFO) == []
    fake.scan()
    assert fake.events == []
    assert "connecting (lightos)" not in a.log()


def test_readiness_in_capabilities(
    agent_factory: Any, fake: FakeDiscoveryClient, tmp_path: Path
) -> None:
    a = lightos_agent(agent_factory, fake)
    caps = a.call("Host.getCapabilities")
    status = caps["driver_status"]["lightos"]
    # No NVMe-oF in this kernel: not ready, and it says why.
    assert status["ready"] is False
    assert status["problems"] == [
        "/dev/nvme-fabrics not found (the kernel has no NVMe over "
        "Fabrics; load nvme-tcp)"
    ]
    assert "lightos" in caps["drivers"]
    a.stop()
    missing = tmp_path / "nowhere"
    a.configure(
        brick={
            "drivers": ["lightos"],
            "lightos_discovery_dir": str(missing),
        }
    )
    a.start()
    problems = a.call("Host.getCapabilities")["driver_status"]["lightos"][
        "problems"
    ]
    assert f"discovery-client directory {missing} not found" in problems


def test_not_allowed_by_default(agent: Agent) -> None:
    e = agent.error(ATTACH, [new_vol_id(), info(str(uuid.uuid4()))])
    assert e.code == 2009
