"""hostagent.devices on real loop devices, mounts and processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Loops, mounted, need

from hostagent import devices, release


def refused(path: str, exc: type[devices.DeviceError], **kw: object) -> str:
    """check_local_device raises ``exc``; its message, checked for form."""
    with pytest.raises(exc) as info:
        devices.check_local_device(path, **kw)  # type: ignore[arg-type]
    err = info.value
    assert type(err) is exc
    assert err.detail["reason"] == exc.reason
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in err.message)
    return err.message


@pytest.fixture
def partitioned(loops: Loops) -> Iterator[tuple[str, list[str]]]:
    """A loop device with an MBR of two partitions the kernel knows.

    This kernel has no partition-table parsers (``losetup -P`` finds
    nothing), so partx reads the table and adds the partitions by
    BLKPG; they would outlive ``losetup -d``, so they are deleted first.
    """
    need("sfdisk", "partx")
    dev = loops.create(16)
    table = "label: dos\n" + "size=4MiB, type=83\n" * 2
    subprocess.run(
        ["sfdisk", "-q", "--no-reread", dev],
        input=table,
        text=True,
        check=True,
    )
    # A run killed inside this fixture leaves its partitions on the
    # loop number, and partx -a refuses to add them again.
    subprocess.run(["partx", "-d", dev], check=False, capture_output=True)
    subprocess.run(["partx", "-a", dev], check=True)
    try:
        parts = [f"{dev}p1", f"{dev}p2"]
        for p in parts:
            assert os.path.exists(p), f"{p} did not appear"
        yield dev, parts
    finally:
        subprocess.run(["partx", "-d", dev], check=True)


@contextmanager
def holding(dev: str, flags: int = os.O_RDONLY) -> Iterator[int]:
    """A child process that keeps ``dev`` open (fd 3); yields its pid."""
    code = (
        "import os, sys, time\n"
        f"os.dup2(os.open({dev!r}, {flags}), 3)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        yield child.pid
    finally:
        child.kill()
        child.wait()


def root_disk() -> tuple[str, str]:
    """(node of the device "/" is on, node of its whole disk)."""
    devno = next(m.devno for m in devices.mounts() if m.mountpoint == "/")
    block = Path(os.path.realpath(f"/sys/dev/block/{devno}"))
    disk = block.parent if (block / "partition").exists() else block
    return f"/dev/{block.name}", f"/dev/{disk.name}"


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("path", "word"),
    [
        ("/etc/passwd", "regular file"),
        ("/etc", "directory"),
        ("/dev/null", "character device"),
    ],
)
def test_not_block_devices_refused(path: str, word: str) -> None:
    assert word in refused(path, devices.NotBlockDevice)


def test_tmp_file_and_dir_refused(tmp_path: Path) -> None:
    f = tmp_path / "disk.img"
    f.write_bytes(b"\0" * 4096)
    assert "regular file" in refused(str(f), devices.NotBlockDevice)
    assert "directory" in refused(str(tmp_path), devices.NotBlockDevice)


def test_proc_and_sys_refused(tmp_path: Path, loops: Loops) -> None:
    dev = loops.create()
    refused("/proc/self/mountinfo", devices.PseudoFsPath)
    # Resolves to a fine block device, but names it through /proc.
    refused(f"/proc/self/root{dev}", devices.PseudoFsPath)
    refused("/sys/block", devices.PseudoFsPath)
    refused("/dev/../proc/self/mountinfo", devices.PseudoFsPath)
    link = tmp_path / "innocent"
    link.symlink_to("/proc/self/mounts")
    assert "resolves to" in refused(str(link), devices.PseudoFsPath)


@pytest.mark.parametrize(
    "path", ["", "dev/loop0", "/dev/loop0\n", "/dev/\x00loop0", "/dev/\x9b"]
)
def test_bad_paths_refused(path: str) -> None:
    refused(path, devices.BadPath)


def test_control_characters_from_the_host_are_escaped(
    tmp_path: Path, loops: Loops
) -> None:
    dev = loops.create(32)
    with mounted(dev, tmp_path / "a\nCRITICAL forged") as where:
        message = refused(dev, devices.DeviceMounted)
        assert "a\\x0aCRITICAL forged" in message
        found = devices.holders(dev)
        assert found.mounts[0].mountpoint == str(where)
        assert "\n" not in found.describe()
        assert "\n" not in str(found.as_data())
    weird = tmp_path / "x\ny"
    weird.write_text("")
    link = tmp_path / "link"
    link.symlink_to(weird)
    with pytest.raises(devices.NotBlockDevice) as info:
        devices.check_local_device(str(link))
    assert str(info.value.detail["resolved"]).endswith("x\\x0ay")


def test_missing_and_dangling_refused(tmp_path: Path) -> None:
    refused(str(tmp_path / "nothing"), devices.DeviceNotFound)
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "gone")
    refused(str(link), devices.DeviceNotFound)


def test_host_root_disk_refused() -> None:
    node, disk = root_disk()
    assert "/" in refused(node, devices.DeviceMounted)
    if disk != node:
        assert "/" in refused(disk, devices.HostDisk)


def test_free_loop_accepted(loops: Loops) -> None:
    dev = loops.create()
    got = devices.check_local_device(dev)
    st = os.stat(dev)
    assert got.path == dev
    assert (got.major, got.minor) == (
        os.major(st.st_rdev),
        os.minor(st.st_rdev),
    )
    assert got.dm_uuid is None


def test_detached_loop_has_no_media(loops: Loops) -> None:
    dev = loops.create()
    loops.detach(dev)
    assert "no media" in refused(dev, devices.NoMedia)


def test_mounted_loop_refused(tmp_path: Path, loops: Loops) -> None:
    dev = loops.create(32)
    with mounted(dev, tmp_path / "mnt") as where:
        assert str(where) in refused(dev, devices.DeviceMounted)
        found = devices.holders(dev)
        assert [m.mountpoint for m in found.mounts] == [str(where)]
        assert found.busy
    devices.check_local_device(dev)
    assert not devices.holders(dev).busy


def test_partitioned_loop_with_mounted_partition(
    tmp_path: Path, partitioned: tuple[str, list[str]]
) -> None:
    dev, (p1, p2) = partitioned
    with mounted(p1, tmp_path / "mnt") as where:
        message = refused(dev, devices.HostDisk)
        assert str(where) in message
        assert os.path.basename(p1) in message
        refused(p1, devices.DeviceMounted)
        devices.check_local_device(p2)
        assert [m.mountpoint for m in devices.holders(dev).mounts] == [
            str(where)
        ]
    devices.check_local_device(dev)
    stack = devices.stacked_devices(dev)
    assert [(s.name, s.kind) for s in stack] == [
        (os.path.basename(p1), "partition"),
        (os.path.basename(p2), "partition"),
    ]
    assert all(s.parent == os.path.basename(dev) for s in stack)
    # Partitions are not holders: nothing blocks removing the disk.
    assert not devices.holders(dev).busy


def test_exclusive_open_refused(loops: Loops) -> None:
    dev = loops.create()
    with holding(dev, os.O_RDONLY | os.O_EXCL) as pid:
        assert "exclusive open" in refused(dev, devices.DeviceInUse)
        assert [p.pid for p in devices.holders(dev).processes] == [pid]
    devices.check_local_device(dev)


def test_local_allowed(tmp_path: Path, loops: Loops) -> None:
    dev = loops.create()
    devices.check_local_device(dev, ["/dev/loop*"])
    message = refused(dev, devices.NotAllowed, allowed_globs=["/dev/sd*"])
    assert "local_allowed" in message
    # LVM style: the name as given matches, the dm-N it resolves to not.
    vg = tmp_path / "vg"
    vg.mkdir()
    (vg / "lv").symlink_to(dev)
    devices.check_local_device(str(vg / "lv"), [f"{vg}/*"])
    # A non-normal given path only counts through what it resolves to.
    odd = f"/dev/../dev/{os.path.basename(dev)}"
    devices.check_local_device(odd, ["/dev/loop*"])
    refused(f"{vg}/../vg/lv", devices.NotAllowed, allowed_globs=[f"{vg}/*"])
    # Outside the allowed names nothing is said about what a path is.
    for other in ("/etc/passwd", "/etc", "/dev/null"):
        message = refused(
            other, devices.NotAllowed, allowed_globs=["/dev/loop*"]
        )
        assert "file" not in message
        assert "directory" not in message


def test_glob_never_crosses_a_slash() -> None:
    assert not devices.allowed("/dev/loop0/../vda", "/dev/vda", ["/dev/loop*"])
    assert not devices.allowed("/dev/vg/a/b", "/dev/dm-3", ["/dev/vg/*"])
    assert devices.allowed("/dev/vg/a", "/dev/dm-3", ["/dev/vg/*"])
    assert devices.allowed("/x", "/dev/dm-3", [])


# ---------------------------------------------------------------- identity


def test_identity_whatever_path_names_it(tmp_path: Path, loops: Loops) -> None:
    a, b = loops.create(), loops.create()
    link = tmp_path / "alias"
    link.symlink_to(a)
    same = [a, str(link), f"/dev/../dev/{os.path.basename(a)}", f"{a}/"[:-1]]
    ids = {devices.device_id(p) for p in same}
    assert len(ids) == 1
    assert devices.same_device(str(link), a)
    assert not devices.same_device(a, b)
    assert devices.device_id(a) != devices.device_id(b)


def test_identity_refuses_non_devices(tmp_path: Path) -> None:
    with pytest.raises(devices.NotBlockDevice):
        devices.device_id("/dev/null")
    with pytest.raises(devices.DeviceNotFound):
        devices.device_id(str(tmp_path / "none"))


# ---------------------------------------------------------------- holders


def test_holders_name_a_process(loops: Loops) -> None:
    dev = loops.create()
    assert not devices.holders(dev).busy
    with holding(dev) as pid:
        # Not exclusive: the guard lets it pass, detach must not.
        devices.check_local_device(dev)
        found = devices.holders(dev)
        assert found.busy
        assert [(p.pid, p.device) for p in found.processes] == [
            (pid, os.path.basename(dev))
        ]
        assert found.processes[0].comm == Path(sys.executable).name[:15]
        assert f"pid {pid}" in found.describe()
        assert found.as_data()["processes"] == [
            {
                "pid": pid,
                "comm": found.processes[0].comm,
                "device": os.path.basename(dev),
            }
        ]
        assert devices.holders(dev, ignore_pids={pid}).processes == ()
    assert devices.holders(dev).processes == ()


def test_holders_of_a_disk_include_its_partitions(
    partitioned: tuple[str, list[str]],
) -> None:
    dev, (p1, _) = partitioned
    with holding(p1) as pid:
        found = devices.holders(dev)
        assert [(p.pid, p.device) for p in found.processes] == [
            (pid, os.path.basename(p1))
        ]


def test_holders_of_sleep(loops: Loops) -> None:
    dev = loops.create()
    with open(dev, "rb") as f:
        child = subprocess.Popen(["sleep", "60"], stdin=f)
    try:
        found = devices.holders(dev)
        assert [(p.pid, p.comm) for p in found.processes] == [
            (child.pid, "sleep")
        ]
    finally:
        child.kill()
        child.wait()


# ------------------------------------------------- dm stacks (fake sysfs)
#
# This kernel has no device-mapper, so dm stacks are drawn as sysfs
# draws them (dev/block/MAJ:MIN links, holders/ links, dm/name, dm/uuid)
# over a real loop device's number.

WWID = "36001405deadbeef0000000000000001"


def fake_dm(root: Path, name: str, dm_name: str, uuid: str, dev: str) -> Path:
    """A /sys/devices/virtual/block/<name> directory of a dm device."""
    d = root / "devices/virtual/block" / name
    (d / "dm").mkdir(parents=True)
    (d / "holders").mkdir()
    (d / "dm/name").write_text(dm_name + "\n")
    (d / "dm/uuid").write_text(uuid + "\n")
    (d / "dev").write_text(dev + "\n")
    (d / "size").write_text("2048\n")
    return d


def hold(lower: Path, upper: Path) -> None:
    """``upper`` sits on ``lower``, as sysfs links it."""
    (lower / "holders" / upper.name).symlink_to(
        os.path.relpath(upper, lower / "holders")
    )


@pytest.fixture
def mpath_sysfs(tmp_path: Path, loops: Loops) -> tuple[str, Path]:
    """A loop device drawn as multipath map dm-2 with a stack on it."""
    dev = loops.create()
    st = os.stat(dev)
    devno = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    root = tmp_path / "sys"
    mp = fake_dm(root, "dm-2", WWID, f"mpath-{WWID}", devno)
    p1 = fake_dm(root, "dm-3", f"{WWID}p1", f"part1-mpath-{WWID}", "253:3")
    p2 = fake_dm(root, "dm-6", f"{WWID}-part2", "", "253:6")
    lv = fake_dm(root, "dm-5", "guestvg-root", "LVM-abc", "253:5")
    other = fake_dm(root, "dm-4", "hostvg-data", "LVM-def", "253:4")
    hold(mp, p1)
    hold(mp, p2)
    hold(mp, other)
    hold(p1, lv)
    (root / "dev/block").mkdir(parents=True)
    (root / "dev/block" / devno).symlink_to(
        os.path.relpath(mp, root / "dev/block")
    )
    return dev, root


def test_dm_identity_is_the_uuid(mpath_sysfs: tuple[str, Path]) -> None:
    dev, root = mpath_sysfs
    got = devices.device_id(dev, sysfs=str(root))
    assert got.dm_uuid == f"mpath-{WWID}"
    assert got.dm_name == WWID
    assert got.key == f"dm-uuid:mpath-{WWID}"


def test_removal_order(mpath_sysfs: tuple[str, Path]) -> None:
    dev, root = mpath_sysfs
    stack = devices.stacked_devices(dev, sysfs=str(root))
    names = [s.name for s in stack]
    assert sorted(names) == ["dm-3", "dm-4", "dm-5", "dm-6"]
    assert names.index("dm-5") < names.index("dm-3")
    assert {s.kind for s in stack} == {"dm"}


def test_partition_maps_are_attributed(mpath_sysfs: tuple[str, Path]) -> None:
    dev, root = mpath_sysfs
    maps = devices.partition_maps(dev, sysfs=str(root))
    # dm-5 (on dm-3) first; the host's own LV dm-4 is not the volume's.
    assert [(m.name, m.parent) for m in maps] == [
        ("dm-5", "dm-3"),
        ("dm-3", "dm-2"),
        ("dm-6", "dm-2"),
    ]
    assert maps[1].describe() == f"dm-3 ({WWID}p1)"


def test_a_maps_paths_are_scanned_with_it(
    mpath_sysfs: tuple[str, Path], loops: Loops
) -> None:
    """A process holding one of a multipath map's paths is a holder of
    the map, unless it is multipathd (its path checkers keep every path
    open); the map and its paths are found in one scan of /proc."""
    dev, root = mpath_sysfs
    path = loops.create()
    st = os.stat(path)
    name = os.path.basename(path)
    slave = root / "devices/virtual/block/dm-2/slaves" / name
    slave.mkdir(parents=True)
    (slave / "dev").write_text(
        f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}\n"
    )
    keeper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ctypes, os, sys, time\n"
            "ctypes.CDLL(None).prctl(15, b'multipathd', 0, 0, 0)\n"
            f"os.dup2(os.open({path!r}, os.O_RDONLY), 3)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert keeper.stdout is not None
        assert keeper.stdout.readline().strip() == "ready"
        with holding(path) as pid, holding(dev) as map_pid:
            found = devices.holders(dev, sysfs=str(root))
            assert [(p.pid, p.device) for p in found.processes] == [
                (map_pid, os.path.basename(dev))
            ]
            assert sorted(
                (p.pid, p.comm, p.device) for p in found.path_processes
            ) == sorted(
                [
                    (pid, found.processes[0].comm, name),
                    (keeper.pid, "multipathd", name),
                ]
            )
            survey = release.survey(dev, sysfs=str(root))
            assert survey is not None
            assert [(p.pid, p.device) for p in survey.processes] == [
                (map_pid, os.path.basename(dev)),
                (pid, name),
            ]
    finally:
        keeper.kill()
        keeper.wait()


def test_held_by_a_map_refused(mpath_sysfs: tuple[str, Path]) -> None:
    dev, root = mpath_sysfs
    message = refused(dev, devices.DeviceHeld, sysfs=str(root))
    assert "hostvg-data" in message
    found = devices.holders(dev, sysfs=str(root))
    assert found.busy
    assert sorted(m.name for m in found.maps) == [
        "dm-3",
        "dm-4",
        "dm-5",
        "dm-6",
    ]
