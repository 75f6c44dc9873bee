"""``exists`` for many volumes at once (one /proc/partitions read)."""

from __future__ import annotations

import os

from conftest import Agent, Loops, local_info, new_vol_id
from support import ATTACH, INFO

from hostagent.udev import devices_with_media


def test_devices_with_media_follows_the_loop_device(loops: Loops) -> None:
    dev = loops.create()
    number = os.stat(dev).st_rdev
    assert number in devices_with_media()
    loops.detach(dev)
    assert number not in devices_with_media()


def test_exists_of_several_volumes(agent: Agent, loops: Loops) -> None:
    devs = [loops.create() for _ in range(3)]
    vids = [new_vol_id() for _ in devs]
    for vid, dev in zip(vids, devs, strict=True):
        agent.call(
            ATTACH,
            {"vol_id": vid, "connection_info": local_info(dev)},
        )
    loops.detach(devs[1])
    exists = {v["vol_id"]: v["exists"] for v in agent.call(INFO)}
    assert exists == {vids[0]: True, vids[1]: False, vids[2]: True}


def test_another_volumes_secret_changes_no_entry(
    agent: Agent, loops: Loops
) -> None:
    """Results are masked by key alone: a string that one caller uses as
    a secret is shown as it is under another volume's plain keys (else a
    caller could rewrite everyone's volumes_info), also by the entries
    volumes_info keeps between calls."""
    first, second = new_vol_id(), new_vol_id()
    agent.call(
        ATTACH,
        {
            "vol_id": first,
            "connection_info": local_info(loops.create(), note="s3cret-xyz"),
        },
    )
    (info,) = agent.call(INFO)
    assert info["connection_info"]["data"]["note"] == "s3cret-xyz"
    agent.call(
        ATTACH,
        {
            "vol_id": second,
            "connection_info": local_info(
                loops.create(), auth_password="s3cret-xyz"
            ),
        },
    )
    for _ in range(2):  # the first answer builds entries, the next keeps
        shown = {
            v["vol_id"]: v["connection_info"]["data"] for v in agent.call(INFO)
        }
        assert shown[first]["note"] == "s3cret-xyz"
        assert shown[second]["auth_password"] == "***"
