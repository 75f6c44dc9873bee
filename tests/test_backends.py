"""[backend.NAME] sections, attach with a backend, capabilities, CLI."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Agent,
    Loops,
    load_config,
    local_info,
    need,
    new_vol_id,
)
from support import ATTACH, DETACH, INFO, ROOT

from hostagent import config

ISCSI_INFO = {
    "driver_volume_type": "iscsi",
    "data": {
        "target_portal": "192.0.2.5:3260",
        "target_iqn": "iqn.2010-10.org.example:vol",
        "target_lun": 1,
    },
}


def test_backend_sections_inherit_brick_defaults(tmp_path: Path) -> None:
    c = load_config(
        tmp_path,
        """
[brick]
drivers = ["iscsi", "fibre_channel", "rbd", "storpool"]
multipath = false
device_scan_attempts = 5

[backend.gold]
driver = "fibre_channel"
multipath = true
enforce_multipath = true

[backend.ceph-b]
driver = "rbd"
ceph_conf = "/etc/ceph/b.conf"

[backend.sp]
driver = "storpool"
storpool_conf = "/etc/storpool-b.conf"
""",
    )
    gold = c.backend["gold"]
    assert (gold.name, gold.driver) == ("gold", "fibre_channel")
    assert (gold.multipath, gold.enforce_multipath) == (True, True)
    assert gold.device_scan_attempts == 5  # from [brick]
    ceph = c.backend["ceph-b"]
    assert ceph.multipath is False  # from [brick]
    assert ceph.ceph_conf == "/etc/ceph/b.conf"
    assert c.backend["sp"].storpool_conf == "/etc/storpool-b.conf"
    assert config.backend_options(ceph) == {
        "driver": "rbd",
        "multipath": False,
        "enforce_multipath": False,
        "device_scan_attempts": 5,
        "ceph_conf": "/etc/ceph/b.conf",
    }


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            '[backend.gold]\ndriver = "iscsi"\ncolour = 1\n',
            "backend.gold.colour",
        ),
        (
            "[backend.gold]\nmultipath = true\n",
            "backend.gold.driver is required",
        ),
        (
            '[backend.gold]\ndriver = "floppy"\n',
            "backend.gold.driver: unknown",
        ),
        ('[backend.gold]\ndriver = "aoe"\n', "not in brick.drivers"),
        (
            '[backend.gold]\ndriver = "iscsi"\nceph_conf = "/etc/c"\n',
            "backend.gold.ceph_conf applies to rbd",
        ),
        (
            '[backend.gold]\ndriver = "rbd"\nceph_conf = "c.conf"\n',
            "backend.gold.ceph_conf must be an absolute path",
        ),
        (
            '[backend.gold]\ndriver = "iscsi"\nmultipath = "yes"\n',
            "backend.gold.multipath must be of type bool",
        ),
        (
            '[backend.gold]\ndriver = "iscsi"\ndevice_scan_attempts = 0\n',
            "backend.gold.device_scan_attempts must be >= 1",
        ),
        (
            '[backend.gold]\ndriver = "iscsi"\nname = "x"\n',
            "backend.gold.name",
        ),
        ('[backend."a b"]\ndriver = "iscsi"\n', "[backend.a b]"),
        ("[backend]\ngold = 1\n", "[backend.gold] must be a table"),
    ],
)
def test_bad_backend_names_the_key(
    tmp_path: Path, text: str, needle: str
) -> None:
    with pytest.raises(config.ConfigError) as e:
        load_config(tmp_path, text)
    assert needle in str(e.value)


def test_daemon_refuses_a_bad_backend(agent_factory: Any) -> None:
    a: Agent = agent_factory()
    a.configure(backend={"gold": {"driver": "local", "tint": "gold"}})
    a.start(wait=False)
    assert a.proc is not None
    assert a.proc.wait(30) == 2
    assert "backend.gold.tint" in a.log()


@pytest.fixture
def bagent(agent_factory: Any) -> Agent:
    a: Agent = agent_factory()
    a.configure(
        brick={"drivers": ["local", "fibre_channel", "aoe"]},
        backend={
            "fast": {"driver": "local", "device_scan_attempts": 2},
            "san": {"driver": "fibre_channel", "enforce_multipath": True},
            "old": {"driver": "aoe"},
        },
    )
    a.start()
    return a


def test_attach_with_backend_is_recorded_and_detached(
    bagent: Agent, loops: Loops
) -> None:
    dev = loops.create()
    vid = new_vol_id()
    res = bagent.call(
        ATTACH,
        {"vol_id": vid, "connection_info": local_info(dev), "backend": "fast"},
    )
    assert res["path"] == dev
    (info,) = bagent.call(INFO)
    assert info["backend"] == "fast"
    with sqlite3.connect(bagent.db_path) as con:
        assert con.execute("SELECT backend FROM volume").fetchall() == [
            ("fast",)
        ]
    # Same info and backend: idempotent (backend is by name only).
    assert (
        bagent.call(
            ATTACH,
            {
                "vol_id": vid,
                "connection_info": local_info(dev),
                "backend": "fast",
            },
        )
        == res
    )
    # The same volume without the backend (or with another) is 929.
    err = bagent.error(ATTACH, [vid, local_info(dev)])
    assert err.code == 929
    assert "'fast'" in err.message
    # Detach after a restart: the backend comes from the database.
    bagent.restart()
    assert bagent.call(DETACH, [vid]) is True
    assert bagent.call(INFO) == []


def test_unknown_backend_is_invalid_params(
    bagent: Agent, loops: Loops
) -> None:
    dev = loops.create()
    err = bagent.error(
        ATTACH,
        {
            "vol_id": new_vol_id(),
            "connection_info": local_info(dev),
            "backend": "platinum",
        },
    )
    assert err.code == -32602
    assert "'platinum' is not configured" in err.message
    assert "fast, old, san" in err.message
    assert err.data == {"param": "backend", "backend": "platinum"}
    err = bagent.error(
        ATTACH,
        {
            "vol_id": new_vol_id(),
            "connection_info": local_info(dev),
            "backend": "no spaces!",
        },
    )
    assert err.code == -32602
    assert bagent.call(INFO) == []


def test_backend_for_another_driver_is_refused(
    bagent: Agent, loops: Loops
) -> None:
    err = bagent.error(
        ATTACH,
        {
            "vol_id": new_vol_id(),
            "connection_info": local_info(loops.create()),
            "backend": "san",
        },
    )
    assert err.code == -32602
    assert (
        "backend 'san' is for fibre_channel volumes, but "
        "connection_info.driver_volume_type is 'local'"
    ) in err.message
    assert bagent.call(INFO) == []


def test_capabilities_list_drivers_and_backends(bagent: Agent) -> None:
    caps = bagent.call("Host.getCapabilities")
    assert caps["drivers"] == ["local", "fibre_channel", "aoe"]
    status = caps["driver_status"]
    assert status["local"] == {"ready": True, "tools": {}, "problems": []}
    assert status["fibre_channel"]["ready"] is False
    assert status["fibre_channel"]["tools"] == {
        "multipath": True,
        "multipathd": True,
    }
    assert status["aoe"]["tools"] == {
        "aoe-discover": True,
        "aoe-revalidate": True,
        "aoe-flush": True,
    }
    assert status["aoe"]["problems"] == [
        "aoe driver not loaded (no /dev/etherd/discover)"
    ]
    backends = caps["backends"]
    assert sorted(backends) == ["fast", "old", "san"]
    assert backends["fast"] == {
        "driver": "local",
        "multipath": True,
        "enforce_multipath": False,
        "device_scan_attempts": 2,
        "ready": True,
        "tools": {},
        "problems": [],
    }
    assert backends["san"]["enforce_multipath"] is True
    assert backends["san"]["ready"] is False


def test_missing_tool_is_reported(agent_factory: Any, tmp_path: Path) -> None:
    """rbd (ceph-common) is not installed here; one on PATH is found."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    a: Agent = agent_factory(env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    a.start()
    status = a.call("Host.getCapabilities")["driver_status"]
    assert status["rbd"] == {
        "ready": False,
        "tools": {"rbd": False},
        "problems": ["rbd not found"],
    }
    # /usr/sbin is searched even when PATH lacks it (systemd's has it).
    assert status["iscsi"]["tools"]["iscsiadm"] is True
    (bin_dir / "rbd").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "rbd").chmod(0o755)
    status = a.call("Host.getCapabilities")["driver_status"]
    assert status["rbd"] == {
        "ready": True,
        "tools": {"rbd": True},
        "problems": [],
    }


def test_enforced_multipath_is_ready_only_when_multipathd_runs(
    agent_factory: Any, tmp_path: Path
) -> None:
    """ready asks what the attach asks: does multipathd run?

    multipath-tools are installed here but multipathd cannot run, so the
    enforced backend is not ready and its attach is 928; a multipathd
    that answers ``show status`` (as a running one does) makes it ready.
    """
    need("multipath", "multipathd", "iscsiadm")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    a: Agent = agent_factory(env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    a.configure(
        backend={
            "mp": {"driver": "iscsi", "enforce_multipath": True},
            "lax": {"driver": "iscsi"},
        }
    )
    a.start()
    caps = a.call("Host.getCapabilities")
    mp = caps["backends"]["mp"]
    assert mp["tools"] == {
        "iscsiadm": True,
        "multipath": True,
        "multipathd": True,
    }
    assert mp["problems"] == [
        "multipathd is not running and multipath is enforced"
    ]
    assert mp["ready"] is False
    # Not enforced: os-brick would fall back to one path.
    assert caps["backends"]["lax"]["ready"] is True
    assert caps["driver_status"]["iscsi"]["ready"] is True
    err = a.error(
        ATTACH,
        {
            "vol_id": new_vol_id(),
            "connection_info": ISCSI_INFO,
            "backend": "mp",
        },
    )
    assert err.code == 928
    assert "multipathd is not running" in err.message
    assert a.call(INFO) == []
    (bin_dir / "multipathd").write_text(
        '#!/bin/sh\n[ "$*" = "show status" ] && echo "up 0"\n'
    )
    (bin_dir / "multipathd").chmod(0o755)
    mp = a.call("Host.getCapabilities")["backends"]["mp"]
    assert (mp["ready"], mp["problems"]) == (True, [])


def test_cli_shows_capabilities_readably(bagent: Agent) -> None:
    def caps(form: str) -> str:
        out = bagent.cli(form, "Host", "getCapabilities")
        assert out.returncode == 0, out.stderr
        return out.stdout

    out = caps("--text")
    lines = out.splitlines()
    assert lines[0].startswith("hostagent ")
    assert any(line.split()[:2] == ["local", "ready"] for line in lines), out
    fc = next(line for line in lines if line.split()[:1] == ["fibre_channel"])
    assert "NOT READY" in fc
    assert "no Fibre Channel HBA" in out
    assert any(
        line.split()[:3] == ["san", "fibre_channel", "NOT"] for line in lines
    )
    assert "initiator" in out
    raw = caps("--json")
    assert sorted(json.loads(raw)["backends"]) == ["fast", "old", "san"]


def test_documented_backend_examples_load(tmp_path: Path) -> None:
    """contrib/hostagent.toml's commented backend examples are valid."""
    text = (ROOT / "contrib" / "hostagent.toml").read_text()
    examples = text[text.index("# [backend.gold]") :]
    toml = "\n".join(line.removeprefix("# ") for line in examples.splitlines())
    drivers = '[brick]\ndrivers = ["fibre_channel", "rbd", "storpool"]\n'
    c = load_config(tmp_path, drivers + toml)
    assert sorted(c.backend) == ["ceph-b", "gold", "sp"]
    assert c.backend["gold"].device_scan_attempts == 5
