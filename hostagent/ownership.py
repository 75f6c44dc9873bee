"""Device ownership for qemu: owner, group and mode of an attached node.

The engine starts VMs with ``seclabel relabel=no``, so qemu (running as
its own user) opens the device node as it is.  Like vdsm, the agent
gives the node the configured owner/group/mode at once and writes a udev
rule that gives them again on every later ``add``/``change`` event
(udev's own rules would otherwise put back ``root:disk`` on the next
event, e.g. a multipath path coming back).

What the node had before is returned as a :class:`NodeState` for the
caller to store, and is also written into the rule file itself: an agent
killed between the chown and its database write still finds it there
(:func:`recorded`), so :func:`release` can always give it back.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

from hostagent.schema import UUID_PATTERN

log = logging.getLogger(__name__)

# Rules in /run vanish at boot, as the attachments they describe do
# (the reconciler re-attaches and so re-creates them).
RULES_DIR = "/run/udev/rules.d"
SYS_DEV_BLOCK = "/sys/dev/block"
DEFAULT_MODE = 0o660
_PREFIX = "99-hostagent-managed_"
_SUFFIX = ".rules"
_RECORD_TAG = "# hostagent-previous: "
_UUID = re.compile(UUID_PATTERN)
# Values written between double quotes in a rule: udev matches them as
# globs ("*", "?", "[", "|" are special) and has no plain escape for '"'.
# An identifier with anything else is left out of the match.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9 ._:/+,=@-]{1,255}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._:!+-]{1,64}")
_UDEVADM_TIMEOUT = 10.0


class OwnershipError(Exception):
    """The node or the rule could not be changed (an OS error)."""


@dataclass(frozen=True)
class NodeState:
    """Owner, group and mode a device node had before :func:`grant`.

    ``rdev`` is the node's device number, so that :func:`release` never
    gives this state to another device that reused the name.
    """

    path: str
    rdev: int
    uid: int
    gid: int
    mode: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (what the service stores)."""
        return {
            "path": self.path,
            "rdev": self.rdev,
            "uid": self.uid,
            "gid": self.gid,
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeState:
        """The inverse of :meth:`to_dict`; ValueError when malformed."""
        try:
            path, rdev = d["path"], d["rdev"]
            uid, gid, mode = d["uid"], d["gid"], d["mode"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"bad node state record: {d!r}") from e
        if not (isinstance(path, str) and path.startswith("/dev/")):
            raise ValueError(f"bad node state path: {path!r}")
        for name, v in (("rdev", rdev), ("uid", uid), ("gid", gid)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"bad node state {name}: {v!r}")
        if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise ValueError(f"bad node state mode: {mode!r}")
        return cls(path, rdev, uid, gid, mode)


# -- config values ---------------------------------------------------------


def parse_owner(value: str | int, key: str = "storage.device_owner") -> int:
    """The uid of a user name or number; ValueError naming ``key``."""
    return _parse_id(value, key, "user", lambda n: pwd.getpwnam(n).pw_uid)


def parse_group(value: str | int, key: str = "storage.device_group") -> int:
    """The gid of a group name or number; ValueError naming ``key``."""
    return _parse_id(value, key, "group", lambda n: grp.getgrnam(n).gr_gid)


def parse_mode(value: str | int, key: str = "storage.device_mode") -> int:
    """Permission bits from octal text ("0660", "660", "0o660").

    Only read/write/execute bits: setuid, setgid and sticky mean
    nothing on a device node, so asking for them is a mistake.
    """
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected octal permission bits")
    if isinstance(value, int):
        mode = value
    else:
        text = value.strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]{1,4}", text):
            raise ValueError(
                f"{key}: {value!r} is not an octal mode such as 0660"
            )
        mode = int(text, 8)
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{key}: mode {mode:#o} is outside 0000..0777")
    return mode


def _parse_id(value: str | int, key: str, kind: str, lookup: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a {kind} name or number")
    if isinstance(value, int) or value.strip().isdigit():
        n = int(value)
        if not 0 <= n < 2**32 - 1:
            raise ValueError(f"{key}: {kind} id {n} is out of range")
        return n
    name = value.strip()
    if not name:
        raise ValueError(f"{key}: empty {kind} name")
    try:
        return int(lookup(name))
    except KeyError:
        raise ValueError(f"{key}: no such {kind} {name!r}") from None


# -- rule files ------------------------------------------------------------


def rule_name(vol_id: str, sd_id: str | None = None) -> str:
    """vdsm's rule file name, ours: ``99-hostagent-managed_[sd_]vol.rules``.

    Both ids must be canonical UUIDs, so a name can never leave the
    rules directory nor match another volume's file.
    """
    _check_uuid(vol_id, "vol_id")
    if sd_id is None:
        return f"{_PREFIX}{vol_id}{_SUFFIX}"
    _check_uuid(sd_id, "sd_id")
    return f"{_PREFIX}{sd_id}_{vol_id}{_SUFFIX}"


def _check_uuid(value: str, what: str) -> None:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise ValueError(f"{what} must be a canonical lower-case UUID")


def udev_match(rdev: int, sys_dev_block: str = SYS_DEV_BLOCK) -> str:
    """The match keys of a rule that selects the block device ``rdev``.

    A device-mapper device is matched by its DM_UUID alone
    (``mpath-<wwid>`` for multipath): the map may be torn down and made
    again under another dm-N, and it is still the same volume.  Any
    other device is matched by its kernel name, which pins the one
    visible node (an NVMe namespace reachable through several
    controllers shares its wwid with hidden nvmeXcYnZ nodes), plus,
    when sysfs has one, its stable identifier (wwid, a loop device's
    backing file): a name reused by another device after ours vanished
    without a detach does not get qemu's ownership.
    """
    sysdir = os.path.realpath(
        os.path.join(sys_dev_block, f"{os.major(rdev)}:{os.minor(rdev)}")
    )
    name = os.path.basename(sysdir)
    if not _SAFE_NAME.fullmatch(name):
        raise OwnershipError(f"unexpected kernel name {name!r}")
    keys = ['SUBSYSTEM=="block"']
    dm_uuid = _read(os.path.join(sysdir, "dm", "uuid"))
    if dm_uuid and _SAFE_VALUE.fullmatch(dm_uuid):
        keys.append(f'ENV{{DM_UUID}}=="{dm_uuid}"')
        return ", ".join(keys)
    keys.append(f'KERNEL=="{name}"')
    for key, rel in (
        ("ATTR{wwid}", "wwid"),
        ("ATTRS{wwid}", "device/wwid"),
        ("ATTR{loop/backing_file}", "loop/backing_file"),
    ):
        value = _read(os.path.join(sysdir, rel))
        if value and _SAFE_VALUE.fullmatch(value):
            keys.append(f'{key}=="{value}"')
            break
    return ", ".join(keys)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def rule_text(
    match: str, uid: int, gid: int, mode: int, previous: NodeState
) -> str:
    """The rule file: the record of ``previous``, then the rule line."""
    chown = shutil.which("chown") or "/bin/chown"
    chmod = shutil.which("chmod") or "/bin/chmod"
    record = json.dumps(previous.to_dict(), sort_keys=True)
    # RUN+= chown/chmod rather than OWNER=/GROUP=/MODE=: udev applying
    # those also resets the SELinux label to the default, which pauses
    # VMs (vdsm's finding, rhbz#1147910).
    return (
        "# Written by hostagent for a managed volume; removed on detach.\n"
        f"{_RECORD_TAG}{record}\n"
        f'ACTION=="add|change", {match}, '
        f'RUN+="{chown} {uid}:{gid} $env{{DEVNAME}}", '
        f'RUN+="{chmod} {mode:04o} $env{{DEVNAME}}"\n'
    )


def recorded(
    vol_id: str, sd_id: str | None = None, rules_dir: str = RULES_DIR
) -> NodeState | None:
    """The previous state written in the volume's rule, None if no rule."""
    path = os.path.join(rules_dir, rule_name(vol_id, sd_id))
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise OwnershipError(f"cannot read {path}: {e.strerror}") from e
    for line in lines:
        if line.startswith(_RECORD_TAG):
            try:
                return NodeState.from_dict(
                    json.loads(line[len(_RECORD_TAG) :])
                )
            except ValueError as e:
                raise OwnershipError(f"{path}: {e}") from e
    raise OwnershipError(f"{path} has no record of the previous owner")


def _write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def reload_udev() -> bool:
    """``udevadm control --reload``; False when no udevd took it.

    No trigger: :func:`grant` sets the node itself, and a change event
    would re-run every rule for the device (LVM's pvscan among them).
    """
    udevadm = shutil.which("udevadm") or (
        "/usr/bin/udevadm" if os.path.exists("/usr/bin/udevadm") else None
    )
    if udevadm is None:
        return False
    try:
        r = subprocess.run(
            [udevadm, "control", "--reload"],
            capture_output=True,
            timeout=_UDEVADM_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("udevadm control --reload: %s", e)
        return False
    if r.returncode != 0:
        # No udevd (containers, this project's CI): the rules are read
        # when one starts; the node was already set by hand.
        log.debug("udevadm control --reload: %s", r.stderr.strip())
        return False
    return True


# -- grant and release -----------------------------------------------------


def grant(
    path: str,
    vol_id: str,
    owner: str | int,
    group: str | int,
    mode: int = DEFAULT_MODE,
    sd_id: str | None = None,
    rules_dir: str = RULES_DIR,
    sys_dev_block: str = SYS_DEV_BLOCK,
) -> NodeState:
    """Give the block node at ``path`` owner/group/mode, now and on events.

    ``path`` may be a link (``/dev/mapper/<id>``): the node it resolves
    to is changed.  Returns the state the node had before; when the
    volume's rule already exists for this very device (a repeated
    attach), the state recorded there, so the first owner is kept.
    The rule is written (with the record) before the node is touched.
    """
    uid = parse_owner(owner, "owner")
    gid = parse_group(group, "group")
    mode = parse_mode(mode, "mode")
    rule = os.path.join(rules_dir, rule_name(vol_id, sd_id))
    node = os.path.realpath(path)
    try:
        st = os.stat(node)
    except OSError as e:
        raise OwnershipError(f"cannot stat {path}: {e.strerror}") from e
    if not stat.S_ISBLK(st.st_mode):
        raise OwnershipError(f"{path} is not a block device")
    current = NodeState(
        node, st.st_rdev, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)
    )
    previous = current
    try:
        old = recorded(vol_id, sd_id, rules_dir)
    except OwnershipError as e:
        log.warning("replacing unreadable rule: %s", e)
        old = None
    if old is not None and old.rdev == current.rdev:
        previous = old
    elif old is not None:
        # The volume came back as another device: the one the rule was
        # for gets its own state back, if it is still there.
        _restore(old)
    text = rule_text(
        udev_match(st.st_rdev, sys_dev_block), uid, gid, mode, previous
    )
    try:
        _write_atomic(rule, text)
    except OSError as e:
        raise OwnershipError(f"cannot write {rule}: {e.strerror}") from e
    try:
        os.chown(node, uid, gid)
        os.chmod(node, mode)
    except OSError as e:
        # Nothing changed for good: give back what was there, drop the
        # rule, so a failed attach leaves the host as it was.
        _restore(previous)
        _unlink(rule)
        raise OwnershipError(f"cannot chown {node}: {e.strerror}") from e
    reload_udev()
    log.info(
        "volume %s: %s now %d:%d %04o (was %d:%d %04o)",
        vol_id, node, uid, gid, mode,
        previous.uid, previous.gid, previous.mode,
    )  # fmt: skip
    return previous


def release(
    vol_id: str,
    previous: NodeState | None = None,
    sd_id: str | None = None,
    rules_dir: str = RULES_DIR,
) -> bool:
    """Remove the volume's rule and give the node back its old state.

    ``previous`` is what :func:`grant` returned (from the database);
    without it, the record in the rule file is used.  The rule goes
    first, so no event can re-apply qemu's owner after the restore.  A
    node that is gone, or is now another device, is left alone.
    Returns True when a node was restored; repeating it is harmless.
    """
    rule = os.path.join(rules_dir, rule_name(vol_id, sd_id))
    if previous is None:
        previous = recorded(vol_id, sd_id, rules_dir)
    try:
        removed = _unlink(rule)
    except OSError as e:
        raise OwnershipError(f"cannot remove {rule}: {e.strerror}") from e
    if removed:
        reload_udev()
    if previous is None:
        return False
    return _restore(previous)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _restore(state: NodeState) -> bool:
    try:
        st = os.stat(state.path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise OwnershipError(f"cannot stat {state.path}: {e.strerror}") from e
    if not stat.S_ISBLK(st.st_mode) or st.st_rdev != state.rdev:
        log.info("%s is another device now; left alone", state.path)
        return False
    try:
        os.chown(state.path, state.uid, state.gid)
        os.chmod(state.path, state.mode)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise OwnershipError(
            f"cannot restore {state.path}: {e.strerror}"
        ) from e
    return True
