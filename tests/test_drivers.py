"""The driver registry: one module per driver, the rest asks it."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
from os_brick import initiator
from support import ROOT

from hostagent import config, drivers
from hostagent.drivers.base import Driver

PACKAGE = ROOT / "hostagent"
MODULES = sorted(
    m.name
    for m in pkgutil.iter_modules([str(PACKAGE / "drivers")])
    if m.name != "base"
)


@pytest.mark.parametrize("name", MODULES)
def test_every_driver_module_is_registered(name: str) -> None:
    module = importlib.import_module(f"hostagent.drivers.{name}")
    declared = module.DRIVER
    assert isinstance(declared, Driver)
    assert declared.name == name
    assert drivers.get(name) is declared


@pytest.mark.parametrize("name", sorted(drivers.known()))
def test_protocol_is_one_os_brick_knows(name: str) -> None:
    """Every implemented driver but AoE (ours) goes through os-brick's
    factory with its declared protocol."""
    protocol = drivers.get(name).protocol
    if name == "aoe":  # os-brick dropped its AoE connector
        assert not hasattr(initiator, protocol)
    else:
        assert getattr(initiator, protocol) == protocol


def test_config_lists_come_from_the_registry() -> None:
    assert drivers.known() == config.KNOWN_DRIVERS
    assert list(drivers.defaults()) == config.BrickConfig().drivers
    # Opt-in drivers, as their modules say.
    assert set(drivers.known()) - set(drivers.defaults()) == {
        "aoe",
        "storpool",
        "lightos",
    }
    assert set(config.DRIVER_ONLY_OPTIONS) == {"ceph_conf", "storpool_conf"}
    for option in config.DRIVER_ONLY_OPTIONS:
        assert hasattr(config.BackendConfig(), option)


def test_lightos_is_opt_in(tmp_path: Path) -> None:
    """Implemented now (issue 18): allowed when the config says so."""
    lightos = drivers.get("lightos")
    assert lightos.protocol == "LIGHTOS"
    assert getattr(initiator, lightos.protocol) == "LIGHTOS"
    assert "lightos" in drivers.known()
    assert "lightos" not in drivers.defaults()
    c = config.from_dict({"brick": {"drivers": ["lightos"]}})
    assert c.brick.drivers == ["lightos"]


def test_only_iscsi_and_fibre_channel_are_multipathed() -> None:
    multipathed = {n for n, d in drivers.REGISTRY.items() if d.multipath}
    assert multipathed == {"iscsi", "fibre_channel"}


@pytest.mark.parametrize("name", MODULES)
def test_driver_name_is_named_in_at_most_one_other_module(name: str) -> None:
    """Driver knowledge lives in its module; brick.py (the os-brick
    adapter) may name a driver whose connector needs special care."""
    literal = re.compile(rf"[\"']{name}[\"']")
    users = sorted(
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if "drivers" not in p.relative_to(PACKAGE).parts
        and literal.search(p.read_text())
    )
    assert len(users) <= 1, users
