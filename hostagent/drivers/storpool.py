"""StorPool: os-brick's STORPOOL connector, with a backend's own config.

Opt-in (not in the default [brick].drivers): it needs StorPool's client
software and /etc/storpool.conf on the host.
"""

from __future__ import annotations

import configparser
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hostagent.drivers.base import Driver

STORPOOL_CONF = "/etc/storpool.conf"
STORPOOL_DEFAULTS = {"SP_API_HTTP_HOST": "127.0.0.1", "SP_API_HTTP_PORT": "81"}
STORPOOL_ENV = ("SP_AUTH_TOKEN", "SP_API_HTTP_HOST", "SP_API_HTTP_PORT")


def read_storpool_conf(path: str) -> dict[str, str]:
    """Read a StorPool config file the way StorPool's tools do.

    Shell-style ``KEY=value`` lines, then ``<path>.d/*.conf``; a
    ``[hostname]`` section overrides the unnamed one for this host, and
    the ``SP_*`` connection variables in the environment win over both
    (the same rules as os-brick's ``storpool_utils.get_conf``, which only
    reads ``/etc/storpool.conf``).
    """
    parser = configparser.ConfigParser(strict=False, allow_no_value=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    files = [Path(path)]
    extra = Path(path + ".d")
    if extra.is_dir():
        files += sorted(
            p
            for p in extra.iterdir()
            if p.is_file()
            and p.name.endswith(".conf")
            and not p.name.startswith(".")
        )
    for f in files:
        parser.read_string("[UNNAMED_SECTION]\n" + f.read_text(), str(f))
    conf = dict(STORPOOL_DEFAULTS)
    for section in ("UNNAMED_SECTION", platform.node()):
        if parser.has_section(section):
            conf.update({k: v or "" for k, v in parser[section].items()})
    conf.update({k: os.environ[k] for k in STORPOOL_ENV if k in os.environ})
    return conf


_STORPOOL_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


def check_storpool_data(data: dict[str, Any]) -> None:
    """Raise ValueError where os-brick's StorPool connect would refuse.

    Its connect_volume checks these before its first API call, but
    raises the BrickException its API failures raise too; a ValueError
    tells the volume service that nothing was connected, so no clean-up
    detach is sent (it could detach another record's volume).  The
    messages are os-brick's.
    """
    if data.get("client_id") is None:
        raise ValueError(
            "Invalid StorPool connection data, no client ID specified."
        )
    if data.get("volume") is None:
        raise ValueError(
            "Invalid StorPool connection data, no volume ID specified."
        )
    # os-brick puts the name into the API's URL path as it is: a "/" or
    # "?" in it would address another call.  StorPool's own names are
    # letters, digits and "_-.:"; Cinder's volume ids are UUIDs.
    if not isinstance(data["volume"], str) or not _STORPOOL_NAME.fullmatch(
        data["volume"]
    ):
        raise ValueError(
            "Invalid StorPool connection data, the volume ID may only "
            "hold letters, digits and _-.: (at most 200 characters)."
        )
    if data.get("access_mode") not in ("rw", "ro"):
        raise ValueError(
            "Invalid access_mode specified in the connection data."
        )


def host_problems(options: Mapping[str, str]) -> list[str]:
    """The StorPool config file (the backend's or the default) is needed."""
    conf = options.get("storpool_conf") or STORPOOL_CONF
    if not os.path.isfile(conf):
        return [f"StorPool config {conf} not found"]
    return []


DRIVER = Driver(
    name="storpool",
    protocol="STORPOOL",
    # The config file read instead of /etc/storpool.conf.
    options=("storpool_conf",),
    default=False,
    check_data=check_storpool_data,
    host_problems=host_problems,
)
