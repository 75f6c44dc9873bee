"""Managed links: ``run_dir/volumes/<vol_id>`` -> the volume's device.

A volume attached with a storage domain id (vdsm's ``sd_id``) has its
link where vdsm puts it, ``run_dir/managedvolumes/<sd_id>_<vol_id>``;
the row keeps the ``sd_id``, so detach and start-up find that name.

The directory is on a tmpfs (/run): creating, replacing or removing a
link takes microseconds, less than handing the call to a thread, so
every link operation runs on the event loop, in live calls and at
start-up alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from hostagent import db
from hostagent.db import StoredVolume
from hostagent.errors import NotALink

log = logging.getLogger(__name__)


class ManagedLinks:
    """The symlinks, one per attached volume, in their two directories.

    ``directory`` holds ``<vol_id>`` links, ``managed`` (when given)
    the ``<sd_id>_<vol_id>`` ones of volumes attached with an sd_id.
    """

    def __init__(self, directory: Path, managed: Path | None = None) -> None:
        self.directory = directory
        self.managed = managed or directory.parent / "managedvolumes"

    def _where(self, vol_id: str, sd_id: str | None) -> tuple[Path, str]:
        if sd_id:
            return self.managed, f"{sd_id}_{vol_id}"
        return self.directory, vol_id

    def path(self, vol_id: str, sd_id: str | None = None) -> Path:
        """Where ``vol_id``'s link is."""
        directory, name = self._where(vol_id, sd_id)
        return directory / name

    def create_directory(self) -> None:
        """Make the directories (at start-up; /run is empty after a boot)."""
        for d in (self.directory, self.managed):
            d.mkdir(parents=True, exist_ok=True, mode=0o755)

    def check(self, vol_id: str, sd_id: str | None = None) -> None:
        """931 when something other than a symlink is at ``vol_id``'s path.

        A directory or a file there is not the agent's: it is neither
        replaced nor removed, and the operation is refused before it
        changes anything.
        """
        link = self.path(vol_id, sd_id)
        try:
            mode = os.lstat(link).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISLNK(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a symlink"
            raise NotALink(
                f"the managed path {link} is {kind}, not the agent's "
                "symlink; nothing was changed: move it away and retry",
                {"vol_id": vol_id, "managed_path": str(link)},
            )

    def make(self, vol_id: str, target: str, sd_id: str | None = None) -> None:
        """Point ``vol_id``'s link at ``target`` (atomically).

        Refused (931) when something else than a symlink is there.
        """
        self.check(vol_id, sd_id)
        directory, name = self._where(vol_id, sd_id)
        link = directory / name
        tmp = directory / f".{name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)

    def remove(self, vol_id: str, sd_id: str | None = None) -> None:
        """Remove ``vol_id``'s link (no error if missing; 931 if not one)."""
        self.check(vol_id, sd_id)
        with contextlib.suppress(FileNotFoundError):
            self.path(vol_id, sd_id).unlink()

    def repair(
        self,
        records: Iterable[StoredVolume],
        count: Callable[[str], None],
        missing: Collection[str] = (),
    ) -> None:
        """Make the directories match the rows (start-up reconciliation).

        Links without a row (or under a name the row does not give)
        go, links of ``attached`` rows are created or pointed back at
        the row's path; ``count`` is told each.  The vol_ids in
        ``missing`` are attached rows whose device is gone: never a link
        to a missing device (a VM would start on nothing), so theirs go
        too; a re-attach makes it again.
        """
        records = list(records)
        for directory in (self.directory, self.managed):
            rows = {
                self._where(r.vol_id, r.sd_id)[1]: r
                for r in records
                if self._where(r.vol_id, r.sd_id)[0] == directory
            }
            self._repair(directory, rows, count, missing)

    def _repair(
        self,
        directory: Path,
        rows: dict[str, StoredVolume],
        count: Callable[[str], None],
        missing: Collection[str],
    ) -> None:
        seen: set[str] = set()
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") and name.endswith(".tmp"):
                    # make()'s temporary name: a crash between symlink
                    # and rename left it.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    continue
                if not entry.is_symlink():
                    # Not the agent's: neither replaced nor removed (a
                    # re-attach or detach of that volume answers 931).
                    log.warning(
                        "reconcile: %s is not a symlink; leaving it alone",
                        entry.path,
                    )
                    seen.add(name)
                    continue
                seen.add(name)
                rec = rows.get(name)
                if rec is not None and rec.vol_id in missing:
                    os.unlink(entry.path)
                    count("link_removed")
                    log.warning(
                        "reconcile: removed symlink %s: volume %s's "
                        "device is missing",
                        entry.path,
                        rec.vol_id,
                        extra={"VOL_ID": rec.vol_id},
                    )
                    continue
                self._check(entry.path, rec, count)
        for name, rec in rows.items():
            if (
                rec.state == db.ATTACHED
                and rec.path
                and name not in seen
                and rec.vol_id not in missing
            ):
                # /run is a tmpfs: a reboot or a crash before the link
                # step leaves an attached volume without its link.  No
                # link has that name (the scan saw none, and nothing
                # else writes here before the agent listens), so one
                # symlink() makes it: make()'s temporary name and
                # rename cost two more system calls per volume, which a
                # reboot with 10,000 volumes pays 10,000 times.
                try:
                    os.symlink(rec.path, self.path(rec.vol_id, rec.sd_id))
                except FileExistsError:  # made since the scan: re-point it
                    self.make(rec.vol_id, rec.path, rec.sd_id)
                count("link_created")
                # Debug: after a reboot this is every attached volume,
                # and reconcile's summary line gives the count.
                log.debug(
                    "reconcile: created symlink for attached volume %s -> %s",
                    rec.vol_id,
                    rec.path,
                    extra={"VOL_ID": rec.vol_id},
                )

    def _check(
        self,
        path: str,
        rec: StoredVolume | None,
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
            name = rec.vol_id
            self.make(name, rec.path, rec.sd_id)
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
