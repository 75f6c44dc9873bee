"""Device ownership for qemu on real loop devices (hostagent.ownership)."""

from __future__ import annotations

import grp
import os
import pwd
import uuid
from pathlib import Path

import pytest
from conftest import ODD_NODE, Loops, node_state
from udevsyntax import check_line, check_text, udevadm_verify

from hostagent import ownership
from hostagent.ownership import NodeState, OwnershipError

SD = str(uuid.uuid4())
NOBODY = pwd.getpwnam("nobody").pw_uid
KVM = grp.getgrnam("kvm").gr_gid


@pytest.fixture
def rules(tmp_path: Path) -> str:
    return str(tmp_path / "rules.d")


def test_grant_sets_node_and_writes_rule(
    odd_loop: str, loops: Loops, rules: str
) -> None:
    vol = str(uuid.uuid4())
    prev = ownership.grant(
        odd_loop, vol, "nobody", "kvm", 0o640, sd_id=SD, rules_dir=rules
    )
    assert (prev.uid, prev.gid, prev.mode) == ODD_NODE
    assert prev.path == odd_loop and prev.rdev == os.stat(odd_loop).st_rdev
    assert node_state(odd_loop) == (NOBODY, KVM, 0o640)
    rule = Path(rules) / f"99-hostagent-managed_{SD}_{vol}.rules"
    assert os.listdir(rules) == [rule.name]
    text = rule.read_text()
    name = os.path.basename(odd_loop)
    backing = os.path.realpath(loops.backing(odd_loop))
    line = text.splitlines()[-1]
    assert line.startswith('ACTION=="add|change", SUBSYSTEM=="block", ')
    assert f'KERNEL=="{name}"' in line
    assert f'ATTR{{loop/backing_file}}=="{backing}"' in line
    assert f" {NOBODY}:{KVM} $env{{DEVNAME}}" in line
    assert " 0640 $env{DEVNAME}" in line
    assert check_text(text) == []
    verified = udevadm_verify(str(rule))
    if verified is not None:
        assert verified[0], verified[1]
    assert ownership.recorded(vol, SD, rules) == prev


def test_release_restores_exact_state(odd_loop: str, rules: str) -> None:
    vol = str(uuid.uuid4())
    prev = ownership.grant(odd_loop, vol, NOBODY, KVM, rules_dir=rules)
    assert node_state(odd_loop) == (NOBODY, KVM, 0o660)
    assert ownership.release(vol, prev, rules_dir=rules) is True
    assert node_state(odd_loop) == ODD_NODE
    assert os.listdir(rules) == []
    # Twice: nothing left to do, nothing broken.
    assert ownership.release(vol, prev, rules_dir=rules) is True
    assert ownership.release(vol, None, rules_dir=rules) is False
    assert node_state(odd_loop) == ODD_NODE


def test_repeated_grant_keeps_first_owner(odd_loop: str, rules: str) -> None:
    vol = str(uuid.uuid4())
    first = ownership.grant(
        odd_loop, vol, NOBODY, KVM, sd_id=SD, rules_dir=rules
    )
    again = ownership.grant(
        odd_loop, vol, NOBODY, KVM, sd_id=SD, rules_dir=rules
    )
    assert again == first
    assert (again.uid, again.gid, again.mode) == ODD_NODE
    assert len(os.listdir(rules)) == 1
    ownership.release(vol, again, sd_id=SD, rules_dir=rules)
    assert node_state(odd_loop) == ODD_NODE


def test_release_without_db_record_uses_rule(
    odd_loop: str, rules: str
) -> None:
    # The agent died between the chown and its database write.
    vol = str(uuid.uuid4())
    ownership.grant(
        odd_loop, vol, NOBODY, KVM, 0o600, sd_id=SD, rules_dir=rules
    )
    assert ownership.release(vol, None, sd_id=SD, rules_dir=rules) is True
    assert node_state(odd_loop) == ODD_NODE
    assert os.listdir(rules) == []


def test_release_leaves_other_or_gone_device(
    odd_loop: str, loops: Loops, rules: str
) -> None:
    vol = str(uuid.uuid4())
    prev = ownership.grant(odd_loop, vol, NOBODY, KVM, rules_dir=rules)
    other = loops.create(1)
    other_before = node_state(other)
    # The name now belongs to another device number: not restored.
    moved = NodeState(other, prev.rdev, 1, 2, 0o777)
    assert ownership.release(vol, moved, rules_dir=rules) is False
    assert node_state(other) == other_before
    gone = NodeState("/dev/hostagent-no-such-node", prev.rdev, 1, 2, 0o7)
    assert ownership.release(vol, gone, rules_dir=rules) is False
    ownership.release(vol, prev, rules_dir=rules)
    assert node_state(odd_loop) == ODD_NODE


def test_grant_on_new_device_restores_the_old_one(
    odd_loop: str, loops: Loops, rules: str
) -> None:
    vol = str(uuid.uuid4())
    ownership.grant(odd_loop, vol, NOBODY, KVM, rules_dir=rules)
    other = loops.create(1)
    other_before = node_state(other)
    prev = ownership.grant(other, vol, NOBODY, KVM, rules_dir=rules)
    assert node_state(odd_loop) == ODD_NODE
    assert (prev.uid, prev.gid, prev.mode) == other_before
    assert ownership.release(vol, prev, rules_dir=rules) is True
    assert node_state(other) == other_before


def test_grant_refuses_non_block(tmp_path: Path, rules: str) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(OwnershipError, match="not a block device"):
        ownership.grant(str(f), str(uuid.uuid4()), 0, 0, rules_dir=rules)
    with pytest.raises(OwnershipError, match="cannot stat"):
        ownership.grant(
            str(tmp_path / "none"), str(uuid.uuid4()), 0, 0, rules_dir=rules
        )
    assert not os.path.exists(rules)


@pytest.mark.parametrize(
    ("vol", "sd"),
    [
        ("../../etc/passwd", None),
        (str(uuid.uuid4()).upper(), None),
        (str(uuid.uuid4()), "x/../y"),
        (str(uuid.uuid4()) + "\n", None),
        ("", None),
    ],
)
def test_names_cannot_escape(vol: str, sd: str | None, odd_loop: str) -> None:
    with pytest.raises(ValueError, match="UUID"):
        ownership.rule_name(vol, sd)
    with pytest.raises(ValueError, match="UUID"):
        ownership.grant(
            odd_loop, vol, 0, 0, sd_id=sd, rules_dir="/nonexistent"
        )
    assert node_state(odd_loop) == ODD_NODE


def test_parse_config_values() -> None:
    assert ownership.parse_owner("nobody") == NOBODY
    assert ownership.parse_owner("107") == 107  # a number, not looked up
    assert ownership.parse_owner(0) == 0
    assert ownership.parse_group("kvm") == KVM
    assert ownership.parse_mode("0660") == 0o660
    assert ownership.parse_mode("640") == 0o640
    assert ownership.parse_mode("0o600") == 0o600
    with pytest.raises(ValueError, match=r"storage\.device_owner.*no such"):
        ownership.parse_owner("no-such-user-here")
    with pytest.raises(ValueError, match=r"storage\.device_group.*no such"):
        ownership.parse_group("no-such-group-here")
    with pytest.raises(ValueError, match=r"backend\.x\.device_group"):
        ownership.parse_group("", "backend.x.device_group")
    for bad in ("0999", "rw", "", "04660", "-1"):
        with pytest.raises(ValueError, match=r"storage\.device_mode"):
            ownership.parse_mode(bad)
    with pytest.raises(ValueError, match="out of range"):
        ownership.parse_owner(str(2**32))


def test_dm_matched_by_uuid(tmp_path: Path) -> None:
    # No device-mapper in this kernel: a sysfs tree shaped like one.
    sysdev = tmp_path / "dev" / "block"
    dmdir = tmp_path / "devices" / "virtual" / "block" / "dm-3"
    (dmdir / "dm").mkdir(parents=True)
    (dmdir / "dm" / "uuid").write_text("mpath-36001405abcdef0123456789\n")
    sysdev.mkdir(parents=True)
    (sysdev / "253:3").symlink_to(dmdir)
    match = ownership.udev_match(os.makedev(253, 3), str(sysdev))
    assert match == (
        'SUBSYSTEM=="block", ENV{DM_UUID}=="mpath-36001405abcdef0123456789"'
    )
    prev = NodeState("/dev/dm-3", os.makedev(253, 3), 0, 6, 0o660)
    text = ownership.rule_text(match, NOBODY, KVM, 0o660, prev)
    assert check_text(text) == []
    rule = tmp_path / "99-hostagent-managed_x.rules"
    rule.write_text(text)
    verified = udevadm_verify(str(rule))
    if verified is not None:
        assert verified[0], verified[1]
    nvme = tmp_path / "devices" / "nvme0n1"
    nvme.mkdir()
    (nvme / "wwid").write_text("uuid.1b4e28ba-2fa1-11d2-883f-0016d3cca427\n")
    (sysdev / "259:0").symlink_to(nvme)
    match = ownership.udev_match(os.makedev(259, 0), str(sysdev))
    assert match == (
        'SUBSYSTEM=="block", KERNEL=="nvme0n1", '
        'ATTR{wwid}=="uuid.1b4e28ba-2fa1-11d2-883f-0016d3cca427"'
    )
    # A glob character would turn the value into a pattern: left out.
    (nvme / "wwid").write_text("eui.*\n")
    match = ownership.udev_match(os.makedev(259, 0), str(sysdev))
    assert match == 'SUBSYSTEM=="block", KERNEL=="nvme0n1"'


def test_syntax_checker_catches_mistakes() -> None:
    good = 'ACTION=="add", KERNEL=="sda", RUN+="/bin/true $env{DEVNAME}"'
    assert check_line(good) == []
    assert check_line('KERNEL=="sda" RUN+="/bin/true"')
    assert check_line('KERNEL="sda", RUN+="/bin/true"')
    assert check_line('ENV=="x", RUN+="/bin/true"')
    assert check_line('KERNEL=="sda, RUN+="/bin/true"')
    assert check_line('KERNEL=="sda"')


def test_reload_without_udevd() -> None:
    # This machine runs no udevd: a reload is not an error, just unheard.
    assert ownership.reload_udev() is os.path.exists("/run/udev/control")
