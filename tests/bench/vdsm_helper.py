"""vdsm's way to attach: a fresh Python process per attach and detach.

A stand-in for vdsm's ``managedvolume-helper`` (oVirt's
lib/vdsm/storage/managedvolume-helper), which supervdsm runs as root for
every attach and every detach: it imports os-brick, asks for the
connector properties, makes a connector, calls ``connect_volume`` (or
``disconnect_volume``) with the JSON read from stdin and prints the
result as JSON.  This script takes the same steps in the same order, so
``python tests/bench/vdsm_helper.py attach < info.json`` costs what one
helper run costs.  Two differences, both in the helper's favour:
``multipath=False`` (this machine has no multipathd, which vdsm's
``enforce_multipath=True`` would demand) and privileged calls run in
this root process instead of through a privsep daemon (as the agent
runs them), so no helper daemon is started per call.  Not imported by
the benchmarks: they run it as a script.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any


def connector(protocol: str) -> Any:
    """os-brick's connector for ``protocol``, the helper's way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from os_brick import privileged
        from os_brick.initiator import connector as brick

    privileged.default.set_client_mode(False)
    props = brick.get_connector_properties(
        root_helper=None, my_ip=None, multipath=False, enforce_multipath=False
    )
    return brick.InitiatorConnector.factory(
        protocol,
        None,
        use_multipath=props["multipath"],
        device_scan_attempts=3,
        conn=props,
    )


def main(argv: list[str]) -> int:
    """``attach`` (stdin: connection_info) or ``detach`` (stdin: both)."""
    doc = json.loads(sys.stdin.read())
    if argv == ["attach"]:
        conn = connector(doc["driver_volume_type"])
        out = conn.connect_volume(doc["data"])
    elif argv == ["detach"]:
        info = doc["connection_info"]
        conn = connector(info["driver_volume_type"])
        conn.disconnect_volume(
            info["data"], doc["attachment"], force=False, ignore_errors=False
        )
        out = {}
    else:
        print("usage: vdsm_helper.py attach|detach < JSON", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
