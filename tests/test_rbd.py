"""RBD through os-brick's RBD connector with local attach (krbd).

No Ceph cluster here and no rbd kernel module, so ``rbd`` is a shim on
the daemon's PATH playing the rbd tool, the kernel and udev at once, in
fakehost.py's private /dev: ``map`` checks the image exists in the fake
cluster (else it fails with rbd's own message and status), makes a
/dev/rbdN block node (a real loop device's numbers) and udev's
/dev/rbd/<pool>/<image> link, and prints the device; ``showmapped
--format=json`` lists mappings in Mimic's format; ``unmap`` removes
them.  Every call's argv and CEPH_CONF are logged for the assertions.

The shim is a real executable found on PATH: os-brick runs it through
its ordinary execute (the agent's wrapper only adds CEPH_CONF for a
backend), as it would run ceph-common's rbd.  Against a real cluster the
same attach is a manual check (README, "RBD"); nothing here runs one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import fakehost
import pytest
from conftest import Loops, new_vol_id
from support import ATTACH, DETACH, INFO
from test_fc import FakeHostAgent

from hostagent import brick
from hostagent.drivers import rbd

KEY = "AQBx3+9lAAAAABAAq2Vd4xjz0kTyYV0XuSkXQQ=="
KEYRING = f"[client.cinder]\n\tkey = {KEY}\n"

RBD = r"""#!/usr/bin/env python3
import json, os, stat, sys
from pathlib import Path

state = Path(os.environ["FAKE_CEPH"])
args = sys.argv[1:]
with open(state / "calls", "a") as f:
    conf = os.environ.get("CEPH_CONF")
    f.write(json.dumps({"argv": args, "CEPH_CONF": conf}) + "\n")
maps = json.loads((state / "mapped").read_text() or "[]")
images = dict(l.split() for l in (state / "images").read_text().splitlines())

def opt(name):
    return args[args.index(name) + 1] if name in args else None

def fail(msg, code):
    sys.stderr.write(msg + "\n")
    sys.exit(code)

if args[:1] == ["map"]:
    image, pool = args[1], opt("--pool")
    conf = opt("--conf")
    if conf is not None and not os.path.exists(conf):
        fail("did not load config file, using default settings.", 1)
    if f"{pool}/{image}" not in images:
        fail(f"rbd: error opening image {image}: (2) No such file or "
             "directory\nrbd: map failed: (2) No such file or directory", 2)
    n = max([int(m["id"]) for m in maps] + [-1]) + 1
    dev = f"/dev/rbd{n}"
    rdev = os.stat(images[f"{pool}/{image}"]).st_rdev
    os.mknod(dev, stat.S_IFBLK | 0o660, rdev)
    os.makedirs(f"/dev/rbd/{pool}", exist_ok=True)
    os.symlink(f"../../rbd{n}", f"/dev/rbd/{pool}/{image}")
    maps.append({"id": str(n), "pool": pool, "namespace": "", "name": image,
                 "snap": "-", "device": dev})
    print(dev)
elif args[:1] == ["showmapped"]:
    print(json.dumps(maps))
elif args[:1] == ["unmap"]:
    dev = args[1]
    m = next((m for m in maps if m["device"] == dev), None)
    if m is None:
        fail("rbd: sysfs write failed\nrbd: unmap failed: (2) No such file "
             "or directory", 2)
    os.unlink(f"/dev/rbd/{m['pool']}/{m['name']}")
    os.unlink(dev)
    maps.remove(m)
else:
    fail("rbd: error parsing command", 1)
(state / "mapped").write_text(json.dumps(maps))
"""


class FakeCeph:
    """The shim's state: images, mappings, the calls it got."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        (self.bin / "rbd").write_text(RBD)
        (self.bin / "rbd").chmod(0o755)
        (root / "images").touch()
        (root / "mapped").write_text("[]")

    def create(self, spec: str, device: str) -> None:
        """An image ``pool/name`` whose data is ``device``."""
        with open(self.root / "images", "a") as f:
            f.write(f"{spec} {device}\n")

    def calls(self) -> list[dict[str, Any]]:
        p = self.root / "calls"
        return (
            [json.loads(x) for x in p.read_text().splitlines()]
            if (p.exists())
            else []
        )

    def mapped(self) -> list[dict[str, str]]:
        return list(json.loads((self.root / "mapped").read_text()))

    def agent(self, agent_factory: Any) -> FakeHostAgent:
        """A fake-host agent whose PATH finds this shim's ``rbd``."""
        a: FakeHostAgent = agent_factory(
            env={
                "PATH": f"{self.bin}:{os.environ['PATH']}",
                "FAKE_CEPH": str(self.root),
            },
            cls=FakeHostAgent,
            spec={},
        )
        return a


@pytest.fixture
def ceph(
    agent_factory: Any, tmp_path: Path, loops: Loops
) -> tuple[FakeHostAgent, FakeCeph]:
    fake = FakeCeph(tmp_path / "ceph")
    fake.create("volumes/volume-1", loops.create())
    a = fake.agent(agent_factory)
    a.configure(
        backend={
            "ceph-b": {"driver": "rbd", "ceph_conf": "/etc/ceph/b.conf"},
        }
    )
    a.start()
    return a, fake


def rbd_info(name: str = "volumes/volume-1", **extra: Any) -> dict[str, Any]:
    return {
        "driver_volume_type": "rbd",
        "data": {
            "name": name,
            "hosts": ["192.0.2.10", "2001:db8::11"],
            "ports": ["6789", "3300"],
            "cluster_name": "ceph",
            "auth_enabled": True,
            "auth_username": "cinder",
            "secret_type": "ceph",
            "secret_uuid": "457eb676-33da-42ec-9a8c-9293d545c337",
            **extra,
        },
    }


MON_ARGS = [
    "--id",
    "cinder",
    "--mon_host",
    "192.0.2.10:6789,[2001:db8::11]:3300",
]


def test_map_and_unmap_command_lines(
    ceph: tuple[FakeHostAgent, FakeCeph],
) -> None:
    a, fake = ceph
    vid = new_vol_id()
    res = a.call(ATTACH, [vid, rbd_info()])
    # os-brick's path rule: udev's /dev/rbd/<pool>/<image> link.
    assert res["path"] == "/dev/rbd/volumes/volume-1"
    assert res["attachment"] == {
        "path": "/dev/rbd/volumes/volume-1",
        "type": "block",
    }
    assert [c["argv"] for c in fake.calls()] == [
        ["map", "volume-1", "--pool", "volumes", *MON_ARGS]
    ]
    assert fake.calls()[0]["CEPH_CONF"] is None  # no backend: defaults
    (info,) = a.call(INFO)
    assert info["exists"] is True
    assert a.call(DETACH, [vid]) is True
    assert [c["argv"] for c in fake.calls()[1:]] == [
        ["showmapped", "--format=json", *MON_ARGS],
        ["unmap", "/dev/rbd0", *MON_ARGS],
    ]
    assert fake.mapped() == []
    assert a.call(INFO) == []


def test_backend_ceph_conf_is_used_for_map_and_unmap(
    ceph: tuple[FakeHostAgent, FakeCeph],
) -> None:
    """The backend's options survive a restart: detach reads the DB."""
    a, fake = ceph
    vid = new_vol_id()
    a.call(
        ATTACH,
        {"vol_id": vid, "connection_info": rbd_info(), "backend": "ceph-b"},
    )
    a.restart()
    a.call(DETACH, [vid])
    calls = fake.calls()
    assert [c["argv"][0] for c in calls] == ["map", "showmapped", "unmap"]
    assert {c["CEPH_CONF"] for c in calls} == {"/etc/ceph/b.conf"}


def test_keyring_goes_to_a_private_conf_and_nowhere_else(
    ceph: tuple[FakeHostAgent, FakeCeph],
) -> None:
    """cinderlib passes the keyring; os-brick writes it to a temp conf."""
    a, fake = ceph
    vid = new_vol_id()
    res = a.call(ATTACH, [vid, rbd_info(keyring=KEYRING)])
    (call,) = fake.calls()
    conf = call["argv"][call["argv"].index("--conf") + 1]
    assert call["argv"][:-2] == [
        "map",
        "volume-1",
        "--pool",
        "volumes",
        *MON_ARGS,
    ]
    assert res["attachment"]["conf"] == conf
    (info,) = a.call(INFO)
    assert info["connection_info"]["data"]["keyring"] == "***"
    assert KEY not in json.dumps(res) + json.dumps(info)
    assert KEY not in a.log()
    a.call(DETACH, [vid])
    assert [c["argv"][-2:] for c in fake.calls()[1:]] == [["--conf", conf]] * 2


def test_missing_image_is_926_with_rbds_message(
    ceph: tuple[FakeHostAgent, FakeCeph],
) -> None:
    a, fake = ceph
    err = a.error(ATTACH, [new_vol_id(), rbd_info("volumes/nope")])
    assert err.code == 926
    assert err.data["error_class"] == "ProcessExecutionError"
    assert (
        "rbd: map failed: (2) No such file or directory" in err.data["error"]
    )
    assert fake.mapped() == []
    assert a.call(INFO) == []


def test_malformed_name_is_926(ceph: tuple[FakeHostAgent, FakeCeph]) -> None:
    a, fake = ceph
    err = a.error(ATTACH, [new_vol_id(), rbd_info("no-pool-here")])
    assert err.code == 926
    assert err.data["error_class"] == "ValueError"
    assert fake.calls() == []


def test_without_ceph_common_is_926(agent_factory: Any) -> None:
    """A host without the rbd tool: os-brick says so before mapping.

    Any rbd this machine has is hidden in the daemon's namespace.
    """
    a: FakeHostAgent = agent_factory(
        cls=FakeHostAgent, spec={"hide": fakehost.tool_paths("rbd")}
    )
    a.start()
    status = a.call("Host.getCapabilities")["driver_status"]["rbd"]
    assert status["problems"] == ["rbd not found"]
    err = a.error(ATTACH, [new_vol_id(), rbd_info()])
    assert err.code == 926
    assert "ceph-common package is not installed" in err.message
    # The failed connect's clean-up disconnect needs the rbd tool too,
    # and fails; without the tool nothing was mapped (and the kernel
    # maps no such image), so nothing is left.
    assert a.call(INFO) == []
    assert "rbd disconnect_volume failed (ProcessExecutionError: " in a.log()
    assert (
        "but the rbd tool (ceph-common) is not installed and the kernel "
        "maps no image volumes/volume-1: nothing to disconnect, done"
        in a.log()
    )


def kernel_map(sysfs: Path, n: int, pool: str, name: str) -> None:
    """A /sys/bus/rbd/devices/<n> entry, as krbd makes for a mapping."""
    d = sysfs / str(n)
    d.mkdir(parents=True)
    for key, value in {
        "pool": pool,
        "name": name,
        "pool_ns": "",
        "snap": "-",
    }.items():
        (d / key).write_text(value + "\n")


class Which:
    """The one call asked of the connector: ``which rbd``.

    Without the tool, rootwrap's execute raises ProcessExecutionError (a
    command that fails or cannot be found).  The rbd kernel module is
    what this machine does not have, so the test lays out its sysfs
    directory itself.
    """

    def __init__(self, found: bool) -> None:
        self.found = found
        self.calls: list[tuple[str, ...]] = []

    def _execute(self, *cmd: str, **kwargs: Any) -> tuple[str, str]:
        from oslo_concurrency import processutils

        self.calls.append(cmd)
        if not self.found:
            raise processutils.ProcessExecutionError(exit_code=1, cmd=cmd)
        return "/usr/bin/rbd\n", ""


def test_without_the_tool_an_image_the_kernel_maps_is_kept(
    tmp_path: Path,
) -> None:
    """The tool removed after an attach: the mapping is still there.

    Only an image the kernel does not map counts as disconnected.
    """
    sysfs = tmp_path / "devices"
    assert rbd.rbd_kernel_maps(sysfs) == set()  # no rbd module
    kernel_map(sysfs, 0, "volumes", "volume-1")
    kernel_map(sysfs, 3, "images", "volume-1")
    assert rbd.rbd_kernel_maps(sysfs) == {
        "volumes/volume-1",
        "images/volume-1",
    }
    # The tool is there: a failed disconnect is a real failure.
    assert brick.rbd_nothing_mapped(Which(True), {"name": "a/b"}) is None
    conn = Which(False)
    data = rbd_info()["data"]
    assert brick.rbd_nothing_mapped(conn, data, sysfs) is None
    assert conn.calls == [("which", "rbd")]
    why = brick.rbd_nothing_mapped(
        conn, rbd_info("volumes/other")["data"], sysfs
    )
    assert why == (
        "the rbd tool (ceph-common) is not installed and the kernel maps "
        "no image volumes/other"
    )
