"""os-brick's real LightOS connector against a fake discovery-client.

This kernel has no NVMe-oF, so, as with the real discovery-client, the
volume's device never shows up: connect fails with os-brick's "did not
show up" after the discovery entry was written (and withdrawn), and
disconnect withdraws an entry left behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakelightos import Entry, FakeDiscoveryClient, ParserError, parse

from hostagent.brick import Brick
from hostagent.config import BrickConfig
from hostagent.errors import ConnectorFailed

SUBSYS = "nqn.2016-01.com.lightbitslabs:uuid:0c2d1f4e-2b7a-4a5c-9f0e-1"
HOSTNQN_FILE = Path("/etc/nvme/hostnqn")
# The connector waits this long for the device (os-brick: 60 s).
WAIT = 1


@pytest.fixture
def lightos(
    tmp_path: Path,
) -> Iterator[tuple[Brick, Any, FakeDiscoveryClient]]:
    fake = FakeDiscoveryClient(tmp_path / "discovery.d").start()
    brick = Brick(BrickConfig(), tmp_path / "locks", tmp_path / "mnt")
    conn = brick.connector("lightos")
    # What os-brick reads from its [os_brick] options (see the driver
    # notes): where the service watches, where it answers.
    conn.discovery_dir_path = str(fake.directory)
    conn.discovery_address = "127.0.0.1"
    conn.discovery_port = fake.port
    conn.WAIT_DEVICE_TIMEOUT = WAIT
    yield brick, conn, fake
    fake.stop()


def data(vol: str) -> dict[str, Any]:
    """connection_info["data"] as Cinder's LightOS driver sends it."""
    return {
        "uuid": vol,
        "subsysnqn": SUBSYS,
        "hostnqn": "ignored-by-the-connector",
        "lightos_nodes": {
            "192.0.2.11": {
                "transport_type": "tcp",
                "target_portal": "192.0.2.11",
                "target_port": 8009,
            },
            "192.0.2.12": {
                "transport_type": "tcp",
                "target_portal": "192.0.2.12",
                "target_port": 8009,
            },
        },
    }


def expected_entries() -> set[Entry]:
    hostnqn = HOSTNQN_FILE.read_text().strip()
    return {
        Entry("tcp", ip, 8009, hostnqn, SUBSYS)
        for ip in ("192.0.2.11", "192.0.2.12")
    }


def entry_written(conn: Any, fake: FakeDiscoveryClient) -> str:
    """A new volume's discovery entry, written by the connector's
    dsc_connect_volume and seen by the service; the volume's uuid."""
    vol = str(uuid.uuid4())
    conn.dsc_connect_volume(data(vol))
    assert fake.wait_for(("add", f"{vol}.conf"))
    return vol


def test_connect_ends_in_device_not_found(
    lightos: tuple[Brick, Any, FakeDiscoveryClient],
) -> None:
    brick, _, fake = lightos
    vol = str(uuid.uuid4())
    with pytest.raises(ConnectorFailed) as e:
        brick.connect("lightos", data(vol))
    assert e.value.code == 926
    assert e.value.data["error_class"] == "BrickException"
    assert f"Device with uuid {vol} did not show up" in e.value.message
    name = f"{vol}.conf"
    # The service got the entry, failed in the kernel, and the
    # connector withdrew the entry before raising.
    assert fake.wait_for(("remove", name))
    assert fake.events == [("add", name), ("remove", name)]
    assert fake.warnings == []
    assert len(fake.connect_errors) == 2
    assert all("/dev/nvme-fabrics" in x for x in fake.connect_errors)
    assert list(fake.directory.iterdir()) == []
    assert fake.entries == {}


def test_entry_written_as_the_service_reads_it(
    lightos: tuple[Brick, Any, FakeDiscoveryClient],
) -> None:
    _, conn, fake = lightos
    vol = entry_written(conn, fake)
    assert set(fake.entries[f"{vol}.conf"]) == expected_entries()
    # A second connect leaves the existing entry alone.
    mtime = (fake.directory / f"{vol}.conf").stat().st_mtime
    conn.dsc_connect_volume(data(vol))
    assert (fake.directory / f"{vol}.conf").stat().st_mtime == mtime


def test_disconnect_removes_entry(
    lightos: tuple[Brick, Any, FakeDiscoveryClient],
) -> None:
    # An entry left behind (an agent killed during connect): the
    # disconnect of reconciliation withdraws it.
    brick, conn, fake = lightos
    vol = entry_written(conn, fake)
    brick.disconnect("lightos", data(vol), None)
    assert fake.wait_for(("remove", f"{vol}.conf"))
    assert fake.entries == {}
    # Again: nothing there, nothing fails.
    brick.disconnect("lightos", data(vol), None)


def test_connect_without_nodes_is_a_connector_error(
    lightos: tuple[Brick, Any, FakeDiscoveryClient],
) -> None:
    brick, _, fake = lightos
    bad = data(str(uuid.uuid4()))
    del bad["lightos_nodes"]
    with pytest.raises(ConnectorFailed) as e:
        brick.connect("lightos", bad)
    assert e.value.data["error_class"] == "KeyError"
    fake.scan()
    assert fake.events == []


def test_service_found_and_host_nqn(
    lightos: tuple[Brick, Any, FakeDiscoveryClient],
) -> None:
    brick, conn, fake = lightos
    assert conn.find_dsc() == "found"
    assert ("HEAD", "/metrics") in fake.requests
    props = brick.connector_properties()
    assert props["nqn"] == HOSTNQN_FILE.read_text().strip()
    fake.stop()
    assert conn.find_dsc() == ""


def test_fake_parser_follows_the_service() -> None:
    good = (
        "# os_brick connector dsc file for LightOS volume: x\n"
        "-t tcp -a 10.0.0.1 -s 8009 -q nqn.h -n nqn.s  # trailing\n"
        "--transport=tcp --traddr=host-1 --trsvcid=4420 "
        "--hostnqn=nqn.h --subsysnqn=nqn.s -p\n"
        "-t tcp -a 10.0.0.1 -s 8009 -q nqn.h -n nqn.s\n"
        "-t tcp -a 10.0.0.2 -s 8009 -n nqn.s\n"
    )
    entries, warnings = parse(good)
    assert entries == [
        Entry("tcp", "10.0.0.1", 8009, "nqn.h", "nqn.s"),
        Entry("tcp", "host-1", 4420, "nqn.h", "nqn.s", persistent=True),
    ]
    assert len(warnings) == 1 and "hostnqn" in warnings[0]
    for bad in (
        "-t rdma -a 10.0.0.1 -s 8009 -q h -n s",
        "-t tcp -a bad_addr! -s 8009 -q h -n s",
        "-t tcp -a 10.0.0.1 -s port -q h -n s",
        "-t tcp -a 10.0.0.1 -s 8009 -q h -n s -x 1",
    ):
        with pytest.raises(ParserError):
            parse(bad)
