"""The host's LVM and managed volumes (hostagent.lvmcheck).

Each test points LVM (the real lvmconfig and lvmdevices, through
LVM_SYSTEM_DIR) at a sample /etc/lvm in a temporary directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hostagent import lvmcheck

MPATH = "36001405aaaabbbbccccdddd00000001"
HOST_ENTRY = (
    "IDTYPE=sys_wwid IDNAME=naa.600a0b80001234 DEVNAME=/dev/sda2 "
    "PVID=bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb PART=2"
)
MPATH_ENTRY = (
    f"IDTYPE=mpath_uuid IDNAME=mpath-{MPATH} DEVNAME=/dev/mapper/{MPATH} "
    "PVID=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
)
# What vdsm-tool config-lvm-filter writes: the host's PVs, nothing else.
VDSM_FILTER = 'filter = [ "a|^/dev/disk/by-id/lvm-pv-uuid-abc$|", "r|.*|" ]'
SAMPLES = {
    "debian-default": "# nothing set\nconfig {\n  checks = 1\n}\n",
    "vdsm-filter": f"devices {{\n  {VDSM_FILTER}\n}}\n",
    "multiline": (
        "devices {\n"
        '    # comment with a "quote\n'
        '    global_filter = [ "r|^/dev/rbd.*|",  # inline comment\n'
        '                      "a|.*|" ]\n'
        "    use_devicesfile = 0\n"
        '    devicesfile = "other.devices"\n'
        "}\n"
        "global {\n    umask = 077\n}\n"
    ),
    "devicesfile": "devices {\n use_devicesfile=1\n}\n",
}


@pytest.fixture(autouse=True)
def _need_lvm() -> None:
    if not lvmcheck.lvm_present():
        pytest.fail("LVM tests need lvm2 (contrib/install-deps.sh)")


def system_dir(tmp_path: Path, conf: str, local: str = "") -> str:
    d = tmp_path / "lvm"
    (d / "devices").mkdir(parents=True)
    (d / "lvm.conf").write_text(conf)
    if local:
        (d / "lvmlocal.conf").write_text(local)
    return str(d)


def devices(d: str, *lines: str, name: str = "system.devices") -> Path:
    p = Path(d) / "devices" / name
    p.write_text("VERSION=1.1.1\n" + "".join(f"{x}\n" for x in lines))
    return p


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_file_reader_agrees_with_lvmconfig(tmp_path: Path, name: str) -> None:
    d = system_dir(tmp_path, SAMPLES[name])
    real = lvmcheck.read_config(d)
    ours = lvmcheck.read_config(d, use_lvmconfig=False)
    assert real.source == "lvmconfig"
    assert (real.filter, real.global_filter) == (
        ours.filter,
        ours.global_filter,
    )
    assert (real.use_devicesfile, real.devicesfile) == (
        ours.use_devicesfile,
        ours.devicesfile,
    )


def test_lvmlocal_overrides(tmp_path: Path) -> None:
    d = system_dir(
        tmp_path, SAMPLES["multiline"], local=SAMPLES["vdsm-filter"]
    )
    for use in (True, False):
        cfg = lvmcheck.read_config(d, use_lvmconfig=use)
        assert cfg.filter[-1] == "r|.*|"
        assert cfg.global_filter == ["r|^/dev/rbd.*|", "a|.*|"]


def test_parse_text() -> None:
    got = lvmcheck.parse_text(
        'a {\n b = [ "x\\"y", 2 ]\n c { d = -1.5 }\n}\n'
        'devices/filter=["r|.*|"]'
    )
    assert got == {
        "a": {"b": ['x"y', 2], "c": {"d": -1.5}},
        "devices": {"filter": ["r|.*|"]},
    }
    for bad in ("a {", "a = ", "a = b", "}", "a = [ 1"):
        with pytest.raises(ValueError):
            lvmcheck.parse_text(bad)


def test_filter_rules_follow_lvm() -> None:
    names = ("/dev/dm-3", "/dev/mapper/x")
    assert lvmcheck.accepts(["r|.*|"], names) is False
    assert lvmcheck.accepts([], names) is True
    # One accepted alias accepts the device.
    assert lvmcheck.accepts(["r|dm-|", "a|mapper|"], names) is True
    # No pattern matching any alias: accepted.
    assert lvmcheck.accepts(["r|^/dev/sd|"], names) is True
    # The first matching pattern decides for each alias.
    assert lvmcheck.accepts(["r|.*|", "a|mapper|"], names) is False
    with pytest.raises(ValueError):
        lvmcheck.accepts(["x|.*|"], names)


def test_status_default_config_lets_lvm_scan(tmp_path: Path) -> None:
    s = lvmcheck.status(system_dir(tmp_path, SAMPLES["debian-default"]))
    assert s["lvm"] is True
    assert s["keeps_managed_volumes_out"] is False
    assert "/dev/mapper/" in s["why"]
    assert s["filter"] == ["a|.*|"] and s["use_devicesfile"] is False


def test_status_vdsm_filter_keeps_out(tmp_path: Path) -> None:
    s = lvmcheck.status(system_dir(tmp_path, SAMPLES["vdsm-filter"]))
    assert s["keeps_managed_volumes_out"] is True, s["why"]
    assert s["filter"][-1] == "r|.*|"


def test_status_partial_filter_is_not_enough(tmp_path: Path) -> None:
    conf = 'devices { global_filter = [ "r|^/dev/mapper/|" ] }\n'
    s = lvmcheck.status(system_dir(tmp_path, conf))
    assert s["keeps_managed_volumes_out"] is False
    assert "/dev/sdzz" in s["why"]
    assert "/dev/mapper/" not in s["why"]


def test_status_bad_filter_item(tmp_path: Path) -> None:
    conf = 'devices { filter = [ "r|^/dev/[|" ] }\n'
    s = lvmcheck.status(system_dir(tmp_path, conf))
    assert s["keeps_managed_volumes_out"] is False
    assert "cannot evaluate the filter" in s["why"]


def test_status_devices_file(tmp_path: Path) -> None:
    d = system_dir(tmp_path, SAMPLES["devicesfile"])
    # Enabled but no file: LVM ignores it, and the filter accepts all.
    s = lvmcheck.status(d)
    assert s["use_devicesfile"] is True and s["devices_file"] is None
    assert s["keeps_managed_volumes_out"] is False
    path = devices(d, HOST_ENTRY)
    s = lvmcheck.status(d, multipath_ids=[MPATH])
    assert s["keeps_managed_volumes_out"] is True, s["why"]
    assert s["devices_file"] == str(path)
    devices(d, HOST_ENTRY, MPATH_ENTRY)
    s = lvmcheck.status(d, multipath_ids=[MPATH])
    assert s["keeps_managed_volumes_out"] is False
    assert f"mpath-{MPATH}" in s["why"]


def test_invalidate_removes_listed_volume(tmp_path: Path) -> None:
    d = system_dir(tmp_path, SAMPLES["devicesfile"])
    path = devices(d, HOST_ENTRY, MPATH_ENTRY)
    done = lvmcheck.invalidate_devices({"multipath_id": MPATH}, d)
    assert done["action"] == "removed"
    assert done["removed"] == [f"mpath-{MPATH}"]
    entries = lvmcheck.read_devices_file(str(path))
    assert entries is not None
    assert [e.idname for e in entries] == ["naa.600a0b80001234"]
    again = lvmcheck.invalidate_devices({"multipath_id": MPATH}, d)
    assert again["action"] == "none" and "not listed" in again["why"]


def test_invalidate_does_nothing_without_cause(tmp_path: Path) -> None:
    d = system_dir(tmp_path, SAMPLES["vdsm-filter"])
    path = devices(d, HOST_ENTRY, MPATH_ENTRY)
    before = path.read_text()
    # No multipath_id: vdsm does nothing either.
    assert lvmcheck.invalidate_devices({"path": "/dev/sdb"}, d)["why"] == (
        "no multipath_id"
    )
    # A devices file LVM does not use (use_devicesfile=0) is left alone.
    done = lvmcheck.invalidate_devices({"multipath_id": MPATH}, d)
    assert done["action"] == "none" and "filter" in done["why"]
    assert path.read_text() == before
