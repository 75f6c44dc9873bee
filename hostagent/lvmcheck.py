"""Keeping the host's LVM away from managed volumes, as vdsm does.

A managed volume belongs to a VM: a guest that puts LVM on it must not
find its VGs scanned, let alone activated, by the host.  vdsm relies on
the host being set up by ``vdsm-tool config-lvm-filter``: either a
``filter`` that accepts only the host's own devices and rejects the
rest (``"r|.*|"``), or ``use_devicesfile = 1`` with a devices file that
lists only them.  :func:`status` tells whether this host is set up so
(for ``getCapabilities`` and a start-up warning).

vdsm's ``_invalidate_lvm_devices`` (after an attach with a
``multipath_id``) only marks stale the device list vdsm builds for its
*own* LVM commands (every multipath device but the managed volumes,
passed with ``--devices``/``--config``), so the next command rebuilds it
without the new volume.  The agent runs no LVM commands of its own;
the one persistent device list the host's LVM keeps is its devices
file.  :func:`invalidate_devices` therefore removes the volume from
that file if it is listed, and otherwise does nothing.  It does not run
``pvscan --cache``: that reads the device's PV header and records it
online (with ``-aay``, activates its VGs), the opposite of the goal.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LVM_SYSTEM_DIR = "/etc/lvm"
_TIMEOUT = 30.0
_KEYS = ("filter", "global_filter", "use_devicesfile", "devicesfile")
# What a managed volume looks like to LVM: each tuple is the names
# (aliases) of one device, per kind of attachment.
_SAMPLE_ID = "36001405feedfacefeedfacefeedface0"
SAMPLE_DEVICES: tuple[tuple[str, ...], ...] = (
    (
        f"/dev/mapper/{_SAMPLE_ID}",
        "/dev/dm-250",
        f"/dev/disk/by-id/dm-uuid-mpath-{_SAMPLE_ID}",
        f"/dev/disk/by-id/dm-name-{_SAMPLE_ID}",
    ),
    (
        "/dev/sdzz",
        f"/dev/disk/by-id/scsi-{_SAMPLE_ID}",
        "/dev/disk/by-path/ip-192.0.2.1:3260-iscsi-iqn.2000-01.x:t-lun-1",
    ),
    ("/dev/nvme9n9", "/dev/disk/by-id/nvme-uuid.0000-feed"),
    ("/dev/rbd99", "/dev/rbd/pool/volume-feed"),
)


@dataclass
class LvmConfig:
    """The devices settings that decide what the host's LVM scans."""

    filter: list[str]
    global_filter: list[str]
    use_devicesfile: bool
    devicesfile: str
    source: str


def lvm_present() -> bool:
    """True when the ``lvm`` tool is installed here."""
    return _tool("lvm") is not None


def _tool(name: str) -> str | None:
    path = os.environ.get("PATH", os.defpath)
    return shutil.which(name, path=path + ":/usr/sbin:/sbin")


def _env(system_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["LVM_SYSTEM_DIR"] = system_dir
    # The agent's own descriptors are none of LVM's business.
    env["LVM_SUPPRESS_FD_WARNINGS"] = "1"
    return env


def read_config(
    system_dir: str = LVM_SYSTEM_DIR, use_lvmconfig: bool = True
) -> LvmConfig:
    """The effective settings: ``lvmconfig`` when installed, else files.

    ``lvmconfig --typeconfig full`` also gives the values nothing sets
    (the build's defaults); the file fallback reads lvm.conf then
    lvmlocal.conf (which overrides it) and assumes LVM's defaults.
    """
    lvmconfig = _tool("lvmconfig") if use_lvmconfig else None
    if lvmconfig is not None:
        r = subprocess.run(
            [lvmconfig, "--typeconfig", "full"]
            + [f"devices/{k}" for k in _KEYS],
            capture_output=True,
            text=True,
            env=_env(system_dir),
            timeout=_TIMEOUT,
            check=False,
        )
        if r.returncode == 0:
            values = parse_text(r.stdout)
            return _config(values, "lvmconfig")
        log.warning("lvmconfig failed: %s", r.stderr.strip()[:200])
    values = {}
    for name in ("lvm.conf", "lvmlocal.conf"):
        try:
            with open(os.path.join(system_dir, name), encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        section = parse_text(text).get("devices", {})
        if isinstance(section, dict):
            values.update(section)
    return _config(values, os.path.join(system_dir, "lvm.conf"))


def _config(values: dict[str, Any], source: str) -> LvmConfig:
    def strings(v: Any) -> list[str]:
        if isinstance(v, str):
            return [v]
        if isinstance(v, list):
            return [str(x) for x in v]
        return ["a|.*|"]

    return LvmConfig(
        filter=strings(values.get("filter", ["a|.*|"])),
        global_filter=strings(values.get("global_filter", ["a|.*|"])),
        use_devicesfile=values.get("use_devicesfile", 0) == 1,
        devicesfile=str(values.get("devicesfile", "system.devices")),
        source=source,
    )


_TOKEN = re.compile(
    r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([A-Za-z_][\w/]*)'
    r"|(-?\d+(?:\.\d+)?)|([{}=\[\],]))"
)


def parse_text(text: str) -> dict[str, Any]:
    """lvm.conf syntax (also lvmconfig's output) as nested dicts.

    ``section { key = value }``; values are integers, floats, strings
    or ``[lists]``; ``#`` starts a comment.  A ``a/b = v`` key (what
    lvmconfig prints for a single value) is kept as ``b`` under ``a``.
    Raises ValueError where the text is not of that form.
    """
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos:].strip():
                raise ValueError(
                    f"bad LVM config near {text[pos : pos + 20]!r}"
                )
            break
        pos = m.end()
        if m.group(1) is None:
            tokens.append(m.group(0).strip())
    root: dict[str, Any] = {}
    stack = [root]
    i = 0

    def value(j: int) -> tuple[Any, int]:
        t = tokens[j]
        if t == "[":
            items: list[Any] = []
            j += 1
            while tokens[j] != "]":
                if tokens[j] == ",":
                    j += 1
                    continue
                v, j = value(j)
                items.append(v)
            return items, j + 1
        if t.startswith('"'):
            return re.sub(r"\\(.)", r"\1", t[1:-1]), j + 1
        if re.fullmatch(r"-?\d+", t):
            return int(t), j + 1
        if re.fullmatch(r"-?\d+\.\d+", t):
            return float(t), j + 1
        raise ValueError(f"bad LVM config value {t!r}")

    try:
        while i < len(tokens):
            t = tokens[i]
            if t == "}":
                stack.pop()
                i += 1
            elif tokens[i + 1] == "{":
                section = stack[-1].setdefault(t, {})
                stack.append(section)
                i += 2
            elif tokens[i + 1] == "=":
                v, i = value(i + 2)
                *parents, key = t.split("/")
                d = stack[-1]
                for p in parents:
                    d = d.setdefault(p, {})
                d[key] = v
            else:
                raise ValueError(f"bad LVM config near {t!r}")
    except IndexError:
        raise ValueError("LVM config ends too early") from None
    if len(stack) != 1:
        raise ValueError("LVM config has an unclosed section")
    return root


def _patterns(items: list[str]) -> list[tuple[bool, re.Pattern[str]]]:
    out = []
    for item in items:
        if len(item) < 3 or item[0] not in "ar" or item[1] != item[-1]:
            raise ValueError(f"filter item {item!r} is not a|regex| form")
        out.append((item[0] == "a", re.compile(item[2:-1])))
    return out


def accepts(items: list[str], names: Iterable[str]) -> bool:
    """Whether an LVM filter accepts a device known by ``names``.

    LVM's rule: for each name in turn, the first pattern matching it
    decides; one accepted name accepts the device; a device none of
    whose names matches anything is accepted too.
    """
    patterns = _patterns(items)
    rejected = False
    for name in names:
        for accept, rx in patterns:
            if rx.search(name):
                if accept:
                    return True
                rejected = True
                break
    return not rejected


@dataclass
class DevicesEntry:
    """One line of an LVM devices file."""

    idtype: str
    idname: str
    devname: str
    pvid: str


def devices_file(system_dir: str, cfg: LvmConfig) -> str:
    """Where LVM keeps the devices file named by ``cfg``."""
    return os.path.join(system_dir, "devices", cfg.devicesfile)


def read_devices_file(path: str) -> list[DevicesEntry] | None:
    """The entries of an LVM devices file; None when there is no file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    entries = []
    for line in lines:
        fields = dict(
            kv.split("=", 1) for kv in line.split() if "=" in kv
        )  # fmt: skip
        if "IDTYPE" in fields:
            entries.append(
                DevicesEntry(
                    fields["IDTYPE"],
                    fields.get("IDNAME", ""),
                    fields.get("DEVNAME", ""),
                    fields.get("PVID", ""),
                )
            )
    return entries


def _listed(entry: DevicesEntry, multipath_id: str) -> bool:
    return entry.idname == f"mpath-{multipath_id}" or entry.devname in (
        f"/dev/mapper/{multipath_id}",
    )


def status(
    system_dir: str = LVM_SYSTEM_DIR, multipath_ids: Iterable[str] = ()
) -> dict[str, Any]:
    """Whether the host's LVM keeps managed volumes out, and why.

    ``{"lvm", "filter", "global_filter", "use_devicesfile",
    "devices_file", "config_source", "keeps_managed_volumes_out",
    "why"}``.
    ``multipath_ids`` are those of volumes attached now: a devices file
    that lists one of them lets LVM scan it.
    """
    out: dict[str, Any] = {
        "lvm": lvm_present(),
        "filter": None,
        "global_filter": None,
        "use_devicesfile": None,
        "devices_file": None,
        "config_source": None,
    }
    if not out["lvm"]:
        return out | _verdict(True, "LVM is not installed")
    try:
        cfg = read_config(system_dir)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return out | _verdict(False, f"cannot read the LVM config: {e}")
    out |= {
        "filter": cfg.filter,
        "global_filter": cfg.global_filter,
        "use_devicesfile": cfg.use_devicesfile,
        "config_source": cfg.source,
    }
    if cfg.use_devicesfile:
        path = devices_file(system_dir, cfg)
        entries = read_devices_file(path)
        if entries is not None:
            out["devices_file"] = path
            ids = list(multipath_ids)
            listed = [e.idname for e in entries for m in ids if _listed(e, m)]
            if listed:
                return out | _verdict(
                    False, f"the devices file {path} lists {listed}"
                )
            return out | _verdict(
                True,
                f"LVM scans only the {len(entries)} device(s) listed in "
                f"{path}",
            )
        # LVM ignores use_devicesfile when the file does not exist.
    try:
        open_to = [
            names[0]
            for names in SAMPLE_DEVICES
            if accepts(cfg.global_filter, names) and accepts(cfg.filter, names)
        ]
    except (ValueError, re.error) as e:
        return out | _verdict(False, f"cannot evaluate the filter: {e}")
    if open_to:
        return out | _verdict(
            False,
            "no devices file, and the filter accepts devices such as "
            + ", ".join(open_to)
            + " (run vdsm-tool config-lvm-filter or set use_devicesfile)",
        )
    return out | _verdict(True, "the LVM filter rejects attached volumes")


def _verdict(ok: bool, why: str) -> dict[str, Any]:
    return {"keeps_managed_volumes_out": ok, "why": why}


def invalidate_devices(
    attachment: dict[str, Any], system_dir: str = LVM_SYSTEM_DIR
) -> dict[str, Any]:
    """After an attach: make sure the host's LVM will not use the device.

    Only for attachments with a ``multipath_id`` (as vdsm).  Removes the
    device from the host's LVM devices file if it is listed there
    (``lvmdevices --delpvid``/``--deldev``).  Returns ``{"action":
    "none"|"removed", "why", "removed": [...]}``; never raises for a
    host without LVM.  Raises OSError when lvmdevices fails.
    """
    mpath = attachment.get("multipath_id")
    if not isinstance(mpath, str) or not mpath:
        return _done("none", "no multipath_id")
    lvm = _tool("lvm")
    if lvm is None:
        return _done("none", "LVM is not installed")
    try:
        cfg = read_config(system_dir)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        raise OSError(f"cannot read the LVM config: {e}") from e
    if not cfg.use_devicesfile:
        return _done("none", "LVM uses no devices file; its filter decides")
    path = devices_file(system_dir, cfg)
    entries = read_devices_file(path) or []
    removed = []
    for entry in entries:
        if not _listed(entry, mpath):
            continue
        arg = (
            ["--delpvid", entry.pvid]
            if entry.pvid
            else ["--deldev", entry.devname]
        )
        r = subprocess.run(
            [lvm, "lvmdevices", *arg],
            capture_output=True,
            text=True,
            env=_env(system_dir),
            timeout=_TIMEOUT,
            check=False,
        )
        if r.returncode != 0:
            raise OSError(
                f"lvmdevices {' '.join(arg)} failed: {r.stderr.strip()[:200]}"
            )
        log.warning("removed managed volume %s from %s", entry.idname, path)
        removed.append(entry.idname)
    if removed:
        return _done("removed", f"listed in {path}", removed)
    return _done("none", f"not listed in {path}")


def _done(
    action: str, why: str, removed: list[str] | None = None
) -> dict[str, Any]:
    return {"action": action, "why": why, "removed": removed or []}
