"""Managed links: ``run_dir/volumes/<vol_id>`` -> the volume's device.

The directory is on a tmpfs (/run): creating, replacing or removing a
link takes microseconds, less than handing the call to a thread, so
every link operation runs on the event loop, in live calls and at
start-up alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from hostagent import db
from hostagent.db import VolumeRecord

log = logging.getLogger(__name__)


class ManagedLinks:
    """The symlinks in one directory, one per attached volume."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, vol_id: str) -> Path:
        """Where ``vol_id``'s link is."""
        return self.directory / vol_id

    def create_directory(self) -> None:
        """Make the directory (at start-up; /run is empty after a boot)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o755)

    def make(self, vol_id: str, target: str) -> None:
        """Point ``vol_id``'s link at ``target`` (atomically)."""
        link = self.directory / vol_id
        tmp = self.directory / f".{vol_id}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)

    def remove(self, vol_id: str) -> None:
        """Remove ``vol_id``'s link (no error if missing)."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / vol_id).unlink()

    def repair(
        self, records: Iterable[VolumeRecord], count: Callable[[str], None]
    ) -> None:
        """Make the directory match the rows (start-up reconciliation).

        Links without a row go, links of ``attached`` rows are created
        or pointed back at the row's path; ``count`` is told each.
        """
        rows = {r.vol_id: r for r in records}
        seen: set[str] = set()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") and name.endswith(".tmp"):
                    # make()'s temporary name: a crash between symlink
                    # and rename left it.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    continue
                if not entry.is_symlink():
                    log.warning(
                        "reconcile: %s is not a symlink; leaving it alone",
                        entry.path,
                    )
                    continue
                seen.add(name)
                self._check(entry.path, rows.get(name), name, count)
        for rec in rows.values():
            if (
                rec.state == db.ATTACHED
                and rec.path
                and rec.vol_id not in seen
            ):
                # /run is a tmpfs: a reboot or a crash before the link
                # step leaves an attached volume without its link.
                self.make(rec.vol_id, rec.path)
                count("link_created")
                log.info(
                    "reconcile: created symlink for attached volume %s -> %s",
                    rec.vol_id,
                    rec.path,
                    extra={"VOL_ID": rec.vol_id},
                )

    def _check(
        self,
        path: str,
        rec: VolumeRecord | None,
        name: str,
        count: Callable[[str], None],
    ) -> None:
        target = os.readlink(path)
        if rec is None:
            os.unlink(path)
            count("link_removed")
            log.info(
                "reconcile: removed symlink %s -> %s: no volume record",
                path,
                target,
            )
        elif rec.state == db.ATTACHED and rec.path and target != rec.path:
            self.make(name, rec.path)
            count("link_repaired")
            log.warning(
                "reconcile: symlink %s pointed to %s, not to volume %s's "
                "device %s; repaired",
                path,
                target,
                name,
                rec.path,
                extra={"VOL_ID": name},
            )
