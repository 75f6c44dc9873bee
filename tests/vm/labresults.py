"""What the lab's tests check in a guest run's results, said once."""

from __future__ import annotations

from typing import Any

# iscsi_leftovers() of a guest where nothing of an attach is left.
NOTHING = {"sessions": [], "dm_devices": {}, "sd_devices": []}


def only(info: list[dict[str, Any]]) -> dict[str, Any]:
    """The single entry of a one-volume ``volumes_info``."""
    assert len(info) == 1, info
    return info[0]


def assert_multipath_attach(data: dict[str, Any], paths: int) -> None:
    """An agent's attach over multipath, as note_multipath_attach (in
    guest/labguest.py) recorded it: ``/dev/mapper/<wwid>``, the managed
    link under /run/hostagent, both leading to the map of dm uuid
    mpath-<wwid>, with ``paths`` paths under it."""
    result = data["result"]
    wwid = data["wwid"]
    assert wwid and result["path"] == f"/dev/mapper/{wwid}"
    assert result["managed_path"] == (
        f"/run/hostagent/volumes/{data['vol_id']}"
    )
    assert data["dm_name"] is not None, "no dm device mpath-<wwid>"
    assert data["path_realpath"] == f"/dev/{data['dm_name']}"
    assert data["managed_realpath"] == data["path_realpath"]
    assert len(data["dm_slaves"]) == paths
