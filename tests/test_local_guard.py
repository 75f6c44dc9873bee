"""The local driver's guard and device identity, over the real socket.

Host files, character devices, /proc and /sys paths, busy devices and
the host's own disks are refused before anything is recorded or
connected; one device is one volume, whatever path names it.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Agent,
    Loops,
    brick_calls,
    load_config,
    local_info,
    mounted,
    new_vol_id,
)
from pki import Pki, start_tls_agent
from support import ATTACH, DETACH

from hostagent import config, devices
from hostagent.client import RpcError


def rows(agent: Agent) -> list[tuple[Any, ...]]:
    """vol_id, path and device_key of every row, read with sqlite3."""
    with sqlite3.connect(agent.db_path) as con:
        return con.execute(
            "SELECT vol_id, path, device_key FROM volume ORDER BY vol_id"
        ).fetchall()


def refused(agent: Agent, path: str, code: int, reason: str) -> RpcError:
    """An attach of ``path`` fails with ``code``/``reason``, leaving
    nothing: no row, no link, no connector call."""
    vid = new_vol_id()
    err = agent.error(
        ATTACH, {"vol_id": vid, "connection_info": local_info(path)}
    )
    assert (err.code, err.data["reason"]) == (code, reason), err
    assert err.code != 100
    assert rows(agent) == []
    assert agent.links() == []
    assert brick_calls(agent, vid) == []
    return err


def root_disk() -> tuple[str, str]:
    """(node "/" is mounted from, its whole disk), from mountinfo."""
    with open("/proc/self/mountinfo") as f:
        devno = next(line.split()[2] for line in f if line.split()[4] == "/")
    block = Path(os.path.realpath(f"/sys/dev/block/{devno}"))
    disk = block.parent if (block / "partition").exists() else block
    return f"/dev/{block.name}", f"/dev/{disk.name}"


def test_host_files_and_root_disk_refused(
    agent: Agent, tmp_path: Path
) -> None:
    for path, reason in [
        ("/etc/passwd", "not_block_device"),
        ("/etc", "not_block_device"),
        ("/dev/null", "not_block_device"),
        ("/proc/self/mountinfo", "pseudo_fs"),
        ("/dev/../proc/self/mountinfo", "pseudo_fs"),
        ("/sys/block", "pseudo_fs"),
        ("dev/loop0", "bad_path"),
    ]:
        err = refused(agent, path, -32602, reason)
        assert err.data["param"] == "connection_info.data.device_path"
    link = tmp_path / "innocent"
    link.symlink_to("/etc/shadow")
    assert (
        "regular file"
        in refused(agent, str(link), -32602, "not_block_device").message
    )
    node, disk = root_disk()
    err = refused(agent, node, 927, "mounted")
    assert "mounted on the host (/" in err.message
    if disk != node:
        refused(agent, disk, 927, "host_disk")
    # Through /proc/self/root the same disk is still refused.
    refused(agent, f"/proc/self/root{node}", -32602, "pseudo_fs")


def test_busy_loops_refused_then_free(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    dev = loops.create(32)
    with mounted(dev, tmp_path / "mnt"):
        err = refused(agent, dev, 927, "mounted")
        assert str(tmp_path / "mnt") in err.message
    code = (
        "import os, sys, time\n"
        f"fd = os.open({dev!r}, os.O_RDONLY | os.O_EXCL)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        ["python3", "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        refused(agent, dev, 927, "in_use")
    finally:
        holder.kill()
        holder.wait()
    # Free again: attached, and the row keeps the device's identity.
    vid = new_vol_id()
    result = agent.call(
        ATTACH, {"vol_id": vid, "connection_info": local_info(dev)}
    )
    assert result["path"] == dev
    rdev = os.stat(dev).st_rdev
    key = f"devno:{os.major(rdev)}:{os.minor(rdev)}"
    assert rows(agent) == [(vid, dev, key)]
    agent.call(DETACH, [vid])


def test_device_without_media_is_926_without_a_row(
    agent: Agent, tmp_path: Path
) -> None:
    """A block node with nothing behind it (a loop minor the kernel has
    not made: a detached loop device's number may be taken by anyone's
    losetup on a shared machine, this one cannot)."""
    node = tmp_path / "gone"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, 1048500))
    err = refused(agent, str(node), 926, "no_media")
    assert err.data["error_class"] == "VolumeDeviceNotFound"


def test_same_device_by_another_path_is_927(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    dev = loops.create()
    first = new_vol_id()
    agent.call(ATTACH, {"vol_id": first, "connection_info": local_info(dev)})
    alias = tmp_path / "alias"
    alias.symlink_to(dev)
    for other in (str(alias), f"/dev/../dev/{os.path.basename(dev)}"):
        vid = new_vol_id()
        err = agent.error(
            ATTACH, {"vol_id": vid, "connection_info": local_info(other)}
        )
        assert err.code == 927, err
        assert err.data["attached_as"] == first
        assert "already attached as volume" in err.message
        # Refused before anything was recorded or connected.
        assert brick_calls(agent, vid) == []
        assert [r[0] for r in rows(agent)] == [first]
    # The first volume is untouched, and detaching it frees the device.
    assert os.readlink(agent.run_dir / "volumes" / first) == dev
    agent.call(DETACH, [first])
    second = new_vol_id()
    result = agent.call(
        ATTACH, {"vol_id": second, "connection_info": local_info(str(alias))}
    )
    assert result["path"] == str(alias)
    agent.call(DETACH, [second])


def test_device_appearing_during_the_wait_is_checked(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    """A path that is not there yet is checked once it appears."""
    late = tmp_path / "late"
    vid = new_vol_id()
    out: dict[str, Any] = {}

    def attach() -> None:
        try:
            agent.call(
                ATTACH,
                {"vol_id": vid, "connection_info": local_info(str(late))},
            )
        except RpcError as e:
            out["error"] = e

    worker = threading.Thread(target=attach)
    worker.start()
    agent.wait_log(f"volume {vid}: connecting")
    late.symlink_to("/etc/passwd")
    worker.join(30)
    err = out["error"]
    assert (err.code, err.data["reason"]) == (-32602, "not_block_device")
    assert rows(agent) == [] and agent.links() == []


def test_local_allowed_narrows(
    agent_factory: Any, loops: Loops, tmp_path: Path
) -> None:
    vg = tmp_path / "vg"
    vg.mkdir()
    a: Agent = agent_factory()
    a.configure(brick={"local_allowed": [f"{vg}/*"]})
    a.start()
    dev = loops.create()
    err = refused(a, dev, -32602, "not_allowed")
    assert "local_allowed" in err.message
    # Outside the allowed names nothing is said about what a path is.
    err = refused(a, "/etc/passwd", -32602, "not_allowed")
    assert "file" not in err.message
    (vg / "lv").symlink_to(dev)
    vid = new_vol_id()
    result = a.call(
        ATTACH,
        {"vol_id": vid, "connection_info": local_info(str(vg / "lv"))},
    )
    assert result["path"] == str(vg / "lv")
    refused_odd = a.error(
        ATTACH,
        {
            "vol_id": new_vol_id(),
            "connection_info": local_info(f"{vg}/../vg/lv"),
        },
    )
    assert refused_odd.data["reason"] == "not_allowed"
    a.call(DETACH, [vid])


def test_refused_over_tls(agent_factory: Any, pki: Pki) -> None:
    tls = start_tls_agent(agent_factory, pki)
    node, _ = root_disk()
    for path, code in [
        ("/etc/passwd", -32602),
        ("/dev/null", -32602),
        (node, 927),
    ]:
        with tls.client() as c, pytest.raises(RpcError) as e:
            c.call(
                ATTACH,
                {"vol_id": new_vol_id(), "connection_info": local_info(path)},
            )
        assert e.value.code == code
    assert rows(tls.agent) == []


@pytest.mark.parametrize(
    ("glob", "words"),
    [
        ("dev/loop*", "absolute"),
        ("/dev/../vda", "normal path"),
        ("/dev//loop*", "normal path"),
        ("/dev/loop*/", "normal path"),
        ("/dev/loop\n*", "control characters"),
        ("/sys/block/*", "/proc and /sys"),
    ],
)
def test_local_allowed_is_validated(
    tmp_path: Path, glob: str, words: str
) -> None:
    toml = f"[brick]\nlocal_allowed = [{glob!r}]\n".replace("'", '"')
    with pytest.raises(config.ConfigError) as e:
        load_config(tmp_path, toml)
    assert "brick.local_allowed[0]" in str(e.value)
    assert words in str(e.value)


def test_local_allowed_default_is_empty(tmp_path: Path) -> None:
    assert config.Config().brick.local_allowed == []
    c = load_config(tmp_path, '[brick]\nlocal_allowed = ["/dev/loop*"]\n')
    assert c.brick.local_allowed == ["/dev/loop*"]
    with pytest.raises(config.ConfigError):
        load_config(tmp_path, '[brick]\nlocal_allowed = "/dev/loop*"\n')


def test_identity_key_matches_devices(loops: Loops, tmp_path: Path) -> None:
    from hostagent.service import identity

    dev = loops.create()
    link = tmp_path / "l"
    link.symlink_to(dev)
    assert identity.device_key(str(link)) == devices.device_id(dev).key
    f = tmp_path / "file"
    f.write_text("x")
    hard = tmp_path / "hard"
    os.link(f, hard)
    assert identity.device_key(str(f)) == identity.device_key(str(hard))
    assert identity.device_key(str(f)).startswith("inode:")  # type: ignore[union-attr]
    assert identity.device_key(str(tmp_path / "none")) is None


def test_node_without_a_kernel_device_is_not_opened(tmp_path: Path) -> None:
    """Opening a loop number the kernel has not made would make it."""
    node = tmp_path / "gone"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, 1048501))
    with pytest.raises(devices.NoMedia) as e:
        devices.check_local_device(str(node))
    assert "the kernel has no device 7:1048501" in e.value.message
    assert not os.path.exists("/sys/dev/block/7:1048501")
