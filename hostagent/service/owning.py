"""The ownership steps: the attached node gets qemu's owner, and back.

``own`` gives the node the VM will use ``[storage] device_owner``,
``device_group`` and ``device_mode`` (and a udev rule keeping them,
see :mod:`hostagent.ownership`); ``owned`` stores what the node had
before in the row.  A crash between the two leaves that state in the
rule file, where ``disown`` (a detach, a roll-back) finds it when the
row has none, so the node always gets its old owner back.

Both run for a live attach and for one completed at start-up; with no
owner and no group configured, ``own`` changes nothing.  ``disown``
runs whatever the config says now: a volume attached under another
config still gets its node back.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass

from hostagent import ownership
from hostagent.config import Config
from hostagent.db import VolumeRecord
from hostagent.errors import ConnectorFailed
from hostagent.ownership import NodeState, OwnershipError
from hostagent.service.host import Host

log = logging.getLogger(__name__)


@dataclass
class Grant:
    """What ``own`` changed: the node's previous state (None: nothing)."""

    previous: NodeState | None = None


def _block_node(path: str) -> os.stat_result | None:
    """The node's stat when ``path`` is a block device, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st if stat.S_ISBLK(st.st_mode) else None


def _grant(
    config: Config, path: str, vol_id: str, sd_id: str | None
) -> NodeState | None:
    s = config.storage
    st = _block_node(path)
    if st is None:
        # A file on a share (nfs) or no node at all: qemu opens what
        # the share's own permissions allow, as with vdsm.
        log.debug("volume %s: %s is not a block device", vol_id, path)
        return None
    # One of owner and group alone leaves the other as the node has it.
    owner = s.device_owner or st.st_uid
    group = s.device_group or st.st_gid
    return ownership.grant(
        path,
        vol_id,
        owner,
        group,
        ownership.parse_mode(s.device_mode),
        sd_id,
        s.udev_rules_dir,
    )


async def own(
    h: Host, vol_id: str, sd_id: str | None, path: str, g: Grant
) -> None:
    """Give the node at ``path`` the configured owner, group and mode."""
    if not h.config.owns_devices:
        return
    try:
        g.previous = await h.in_worker(_grant, h.config, path, vol_id, sd_id)
    except OwnershipError as e:
        raise ConnectorFailed(
            f"volume {vol_id}: cannot give {path} its owner: {e}",
            {"operation": "device ownership", "error_class": "OwnershipError"},
        ) from e


async def owned(h: Host, vol_id: str, g: Grant) -> None:
    """Keep the node's previous state in the row."""
    if g.previous is not None:
        await h.in_db(h.db.set_owner_prev, vol_id, g.previous.to_dict())


async def undo_own(h: Host, vol_id: str, sd_id: str | None, g: Grant) -> None:
    """Give the node back what ``own`` found (a failed attach)."""
    await _release(h, vol_id, sd_id, g.previous)


async def disown(h: Host, rec: VolumeRecord) -> None:
    """Remove the rule, give the node back its previous state.

    The row's record first; without one (a crash before ``owned``),
    the one in the rule file.  Nothing to do without either.
    """
    previous = None
    if rec.owner_prev is not None:
        try:
            previous = NodeState.from_dict(rec.owner_prev)
        except ValueError as e:
            log.warning("volume %s: %s; using the rule's", rec.vol_id, e)
    await _release(h, rec.vol_id, rec.sd_id, previous)


async def _release(
    h: Host, vol_id: str, sd_id: str | None, previous: NodeState | None
) -> None:
    rules = h.config.storage.udev_rules_dir
    try:
        rule = os.path.join(rules, ownership.rule_name(vol_id, sd_id))
    except ValueError:
        # Not UUIDs (a row imported from elsewhere): no rule was ever
        # written for it, since grant() names its rule the same way.
        return
    if previous is None and not os.path.lexists(rule):
        # Nothing was changed (no owner configured at the attach): a
        # stat on /run, no trip to a worker thread.
        return
    try:
        restored = await h.in_worker(
            ownership.release, vol_id, previous, sd_id, rules
        )
    except OwnershipError as e:
        raise ConnectorFailed(
            f"volume {vol_id}: cannot give its device node back its "
            f"owner: {e}",
            {"operation": "device ownership", "error_class": "OwnershipError"},
        ) from e
    if restored:
        log.info(
            "volume %s: device node owner, group and mode given back",
            vol_id,
            extra={"VOL_ID": vol_id},
        )
