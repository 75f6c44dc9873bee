"""The AoE connector (hostagent.drivers.aoe.connector_class).

This kernel has no aoe module, so the aoe *driver* is played by shims
of aoetools' three commands on PATH.  Each shim checks its control file
the way the real script does (same message, exit status 1), logs its
argv, then does what the driver does on that write: ``discover`` makes
every answering target appear under the etherd directory, ``revalidate``
re-reads a target's size, ``flush`` drops a target.  A target is a real
loop device.  The real aoetools are used for the "no aoe driver" case.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent, Loops, need, new_vol_id
from support import ATTACH, INFO
from test_fc import FakeHostAgent

from hostagent.brick import Brick, os_brick_parts
from hostagent.config import BrickConfig
from hostagent.drivers.aoe import aoe_device_name, connector_class
from hostagent.errors import ConnectorFailed

# os-brick runs commands in-process here; eventlet warns about the fork.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# The shim: one script, three names.  $AOE_ETHERD stands for /dev/etherd.
SHIM = r"""#!/bin/sh
zero=`basename $0`
d=${AOE_ETHERD:?}
case $zero in
aoe-discover) f=$d/discover ;;
aoe-revalidate) f=$d/revalidate ;;
aoe-flush) f=$d/flush ;;
esac
if ! test -w $f; then
    echo 1>&2 $zero: $f does not exist or is not writeable.
    exit 1
fi
echo "$zero $*" >> $d/.calls
case $zero in
aoe-discover)
    # .targets: "NAME DEVICE ANSWER_AT": the target answers from the
    # ANSWER_AT-th discovery on (a slow or distant target).
    n=$(( $(cat $d/.discovers 2>/dev/null || echo 0) + 1 ))
    echo $n > $d/.discovers
    while read name dev at; do
        [ "$n" -ge "${at:-1}" ] && ln -sfn "$dev" "$d/$name"
    done < $d/.targets
    ;;
aoe-revalidate)
    dev=$(awk -v n="$1" '$1 == n {print $2}' $d/.targets)
    if [ -z "$dev" ] || ! [ -e "$d/$1" ]; then
        echo "$zero: revalidate failed" 1>&2
        exit 1
    fi
    losetup -c "$dev"
    ;;
aoe-flush)
    for name in "$@"; do rm -f "$d/$name"; done
    ;;
esac
exit 0
"""


class FakeAoE:
    """The shimmed aoetools and the driver state they act on."""

    def __init__(self, root: Path) -> None:
        self.etherd = root / "etherd"
        self.bin = root / "bin"
        self.etherd.mkdir()
        self.bin.mkdir()
        for name in ("aoe-discover", "aoe-revalidate", "aoe-flush"):
            p = self.bin / name
            p.write_text(SHIM)
            p.chmod(0o755)
        for ctl in ("discover", "revalidate", "flush"):
            (self.etherd / ctl).touch()
        (self.etherd / ".targets").touch()

    def export(self, name: str, device: str, answer_at: int = 1) -> None:
        """A target that answers discovery (from the n-th one on)."""
        with open(self.etherd / ".targets", "a") as f:
            f.write(f"{name} {device} {answer_at}\n")

    def calls(self) -> list[str]:
        """The aoetools command lines run so far."""
        p = self.etherd / ".calls"
        return p.read_text().splitlines() if p.exists() else []

    def unload(self) -> None:
        """As if the aoe module went away: no control files."""
        for ctl in ("discover", "revalidate", "flush"):
            (self.etherd / ctl).unlink()


@pytest.fixture
def aoe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Brick, FakeAoE]]:
    fake = FakeAoE(tmp_path)
    monkeypatch.setenv("PATH", f"{fake.bin}:{os.environ['PATH']}")
    monkeypatch.setenv("AOE_ETHERD", str(fake.etherd))
    brick = Brick(
        BrickConfig(device_scan_attempts=3),
        tmp_path / "locks",
        tmp_path / "mnt",
    )
    brick.load()
    cls = connector_class(os_brick_parts())
    monkeypatch.setattr(cls, "ETHERD", str(fake.etherd))
    monkeypatch.setattr(cls, "DISCOVER_DELAYS", (0.05,))
    yield brick, fake


def props(shelf: int = 1, slot: int = 1) -> dict[str, Any]:
    return {"target_shelf": shelf, "target_lun": slot}


def test_device_name_rules() -> None:
    assert aoe_device_name(props(0, 0)) == "e0.0"
    assert aoe_device_name(props(65534, 254)) == "e65534.254"
    for bad in (
        props(65535, 1),  # broadcast shelf
        props(1, 255),  # broadcast slot
        props(-1, 1),
        {"target_shelf": "1; reboot", "target_lun": 1},
        {"target_shelf": True, "target_lun": 1},
        {"target_lun": 1},
    ):
        with pytest.raises(ValueError):
            aoe_device_name(bad)


def test_connect_discovers_and_returns_etherd_path(
    aoe: tuple[Brick, FakeAoE], loops: Loops
) -> None:
    brick, fake = aoe
    dev = loops.create()
    fake.export("e3.7", dev)
    info = brick.connect("aoe", props(3, 7))
    path = str(fake.etherd / "e3.7")
    assert info == {"type": "block", "device": "e3.7", "path": path}
    assert os.path.realpath(path) == dev
    assert fake.calls() == ["aoe-discover "]
    conn = brick.connector("aoe")
    assert conn.get_volume_paths(props(3, 7)) == [path]
    assert conn.get_search_path() == str(fake.etherd)
    # Connecting again revalidates the known device instead.
    assert brick.connect("aoe", props(3, 7)) == info
    assert fake.calls()[-1] == "aoe-revalidate e3.7"
    brick.disconnect("aoe", props(3, 7), info)
    assert fake.calls()[-1] == "aoe-flush e3.7"
    assert not os.path.lexists(path)
    assert conn.get_volume_paths(props(3, 7)) == []
    # A device that is already gone is not flushed again.
    brick.disconnect("aoe", props(3, 7), info)
    assert fake.calls()[-1] == "aoe-flush e3.7"
    assert len(fake.calls()) == 3


def test_slow_target_is_rediscovered(
    aoe: tuple[Brick, FakeAoE], loops: Loops
) -> None:
    brick, fake = aoe
    fake.export("e1.1", loops.create(), answer_at=3)
    info = brick.connect("aoe", props())
    assert info["path"] == str(fake.etherd / "e1.1")
    assert fake.calls() == ["aoe-discover "] * 3


def test_target_that_never_answers_is_926(
    aoe: tuple[Brick, FakeAoE], loops: Loops
) -> None:
    brick, fake = aoe
    fake.export("e1.1", loops.create(), answer_at=99)
    with pytest.raises(ConnectorFailed) as e:
        brick.connect("aoe", props())
    assert e.value.data["error_class"] == "VolumeDeviceNotFound"
    assert "e1.1" in e.value.message
    # The first discovery plus one per scan attempt (3).
    assert fake.calls() == ["aoe-discover "] * 4


def test_no_aoe_driver_is_926_with_the_tools_message(
    aoe: tuple[Brick, FakeAoE],
) -> None:
    brick, fake = aoe
    fake.unload()
    with pytest.raises(ConnectorFailed) as e:
        brick.connect("aoe", props())
    assert e.value.data["error_class"] == "ProcessExecutionError"
    assert (
        "discover does not exist or is not writeable"
        in (e.value.data["error"])
    )


def test_bad_shelf_is_926_and_runs_nothing(
    aoe: tuple[Brick, FakeAoE],
) -> None:
    brick, fake = aoe
    with pytest.raises(ConnectorFailed) as e:
        brick.connect("aoe", {"target_shelf": "1 2", "target_lun": 1})
    assert e.value.data["error_class"] == "BrickException"
    assert "target_shelf" in e.value.message
    assert fake.calls() == []


def test_flush_failure_is_reported_unless_forced(
    aoe: tuple[Brick, FakeAoE], loops: Loops, caplog: pytest.LogCaptureFixture
) -> None:
    brick, fake = aoe
    fake.export("e1.1", loops.create())
    info = brick.connect("aoe", props())
    # Root may write a read-only file; a missing one fails for root too.
    (fake.etherd / "flush").unlink()
    with pytest.raises(ConnectorFailed) as e:
        brick.disconnect("aoe", props(), info)
    assert "flush does not exist" in e.value.data["error"]
    conn = brick.connector("aoe")
    with caplog.at_level(logging.WARNING, logger="hostagent.brick"):
        conn.disconnect_volume(props(), info, force=True, ignore_errors=True)
    assert "aoe-flush e1.1 failed; ignored (forced)" in caplog.text


def test_extend_revalidates_and_returns_new_size(
    aoe: tuple[Brick, FakeAoE], loops: Loops
) -> None:
    brick, fake = aoe
    dev = loops.create(size_mb=16)
    fake.export("e2.0", dev)
    brick.connect("aoe", props(2, 0))
    os.truncate(loops.backing(dev), 48 * 1024 * 1024)
    conn = brick.connector("aoe")
    assert conn.extend_volume(props(2, 0)) == 48 * 1024 * 1024
    assert fake.calls()[-1] == "aoe-revalidate e2.0"


def test_daemon_attach_with_real_aoetools_and_no_driver(
    agent_factory: Any,
) -> None:
    """Through the daemon: aoe allowed by config, the real aoetools run.

    With no aoe module there is no /dev/etherd/discover and the real
    aoe-discover says so; the agent answers 926 and keeps no record.
    """
    need("aoe-discover")
    # The driver's /dev/etherd, if this machine has it loaded, is left
    # out of the daemon's private /dev.
    a: FakeHostAgent = agent_factory(
        cls=FakeHostAgent, spec={"hide": ["/dev/etherd"]}
    )
    a.configure(brick={"drivers": ["local", "aoe"]})
    a.start()
    err = a.error(
        ATTACH,
        [new_vol_id(), {"driver_volume_type": "aoe", "data": props()}],
    )
    assert err.code == 926
    assert err.data["error_class"] == "ProcessExecutionError"
    assert "/dev/etherd/discover does not exist" in err.data["error"]
    assert a.call(INFO) == []


def test_daemon_refuses_aoe_unless_enabled(agent: Agent) -> None:
    err = agent.error(
        ATTACH,
        [new_vol_id(), {"driver_volume_type": "aoe", "data": props()}],
    )
    assert err.code == 2009
