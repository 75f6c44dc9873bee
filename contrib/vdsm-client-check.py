#!/usr/bin/env python3
"""Drive hostagent with vdsm's own client library, unmodified.

A manual check (issue 18): vdsm's ``vdsm.client`` (what ``vdsm-client``
and the engine's tools are built on) talks STOMP 1.2 over TLS to the
agent's TLS port and does what an engine does with managed volumes::

    contrib/vdsm-client-check.py VDSM_SRC --port 54321 \\
        --cert client.pem --key client.key --ca ca.pem

VDSM_SRC is a vdsm source tree (``git clone`` of oVirt/vdsm, or
``$VDSM_SRC``).  Its ``lib/vdsm`` and ``lib/yajsonrpc`` are copied to a
scratch directory and "built" there the way vdsm's autotools build
would, so the tree itself is never written to:

* ``vdsm/common/constants.py`` and ``vdsm/common/config.py`` are
  rendered from their ``.in`` templates, every ``@VAR@`` set to "" except
  ``@sysconfdir@`` (the scratch ``etc``, see below) and the run/lib
  directories (scratch paths): nothing else of them is reachable from
  the client;
* the API schema pickles come from ``lib/vdsm/api/schema_to_pickle.py``.

No vdsm code is changed.  The client certificate is put where vdsm's
client looks for it (``<sysconfdir>/pki/vdsm/keys/vdsmkey.pem``,
``certs/vdsmcert.pem``, ``certs/cacert.pem``), as on a vdsm host.

The check attaches a loop device it creates (it must run as root),
re-attaches it, lists it, loses the device under it (``losetup -d``) and
waits for ``ManagedVolume.changed`` on ``jms.queue.events``, then
detaches.  Each step prints one line; the exit status is 0 when all
passed.  Needs the ``decorator`` package (vdsm's), ``PyYAML`` and a
Python that still has ``asyncore`` (3.11).
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

EVENTS = "jms.queue.events"


def build(src: Path, scratch: Path) -> Path:
    """A built copy of vdsm's client libraries; the directory to import
    from."""
    lib = scratch / "lib"
    for package in ("vdsm", "yajsonrpc"):
        shutil.copytree(src / "lib" / package, lib / package)
    etc = scratch / "etc"
    values = {
        "sysconfdir": str(etc),
        "CONFDIR": str(etc / "vdsm"),
        "VDSMRUNDIR": str(scratch / "run"),
        "VDSMLIBDIR": str(scratch / "lib-vdsm"),
        "VDSMDIR": str(lib / "vdsm"),
    }
    for name in ("constants", "config"):
        template = lib / "vdsm" / "common" / f"{name}.py.in"
        text = re.sub(
            r"@([A-Za-z_]+)@",
            lambda m: values.get(m.group(1), ""),
            template.read_text(),
        )
        template.with_suffix("").write_text(text)
    api = lib / "vdsm" / "api"
    for schema in ("vdsm-api", "vdsm-api-gluster", "vdsm-events"):
        subprocess.run(
            [
                sys.executable,
                str(api / "schema_to_pickle.py"),
                str(api / f"{schema}.yml"),
                str(api / f"{schema}.pickle"),
            ],
            check=True,
        )
    return lib


def install_pki(scratch: Path, cert: str, key: str, ca: str) -> None:
    """The client certificate where vdsm's client reads it."""
    pki = scratch / "etc" / "pki" / "vdsm"
    (pki / "keys").mkdir(parents=True)
    (pki / "certs").mkdir(parents=True)
    shutil.copy(key, pki / "keys" / "vdsmkey.pem")
    shutil.copy(cert, pki / "certs" / "vdsmcert.pem")
    shutil.copy(ca, pki / "certs" / "cacert.pem")


def step(name: str, detail: Any) -> None:
    """Report one passed step."""
    print(f"ok   {name}: {detail}", flush=True)


class Loop:
    """A loop device on a sparse file, made for the check."""

    def __init__(self, scratch: Path) -> None:
        """Create it (16 MiB)."""
        self.file = scratch / "volume.img"
        with self.file.open("wb") as f:
            f.truncate(16 << 20)
        self.dev = subprocess.run(
            ["losetup", "-f", "--show", str(self.file)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.attached = True

    def lose(self) -> None:
        """``losetup -d``: the node stays, the media goes."""
        subprocess.run(["losetup", "-d", self.dev], check=True)
        self.attached = False

    def cleanup(self) -> None:
        """Detach the loop device if it still has its file."""
        if self.attached:
            subprocess.run(["losetup", "-d", self.dev], check=False)
            self.attached = False


def check(args: argparse.Namespace, scratch: Path) -> None:
    """Every step against the agent; raises on the first failure."""
    lib = build(Path(args.vdsm_src), scratch)
    install_pki(scratch, args.cert, args.key, args.ca)
    sys.path.insert(0, str(lib))
    # Importable only now: built just above.
    from vdsm import client

    cli = client.connect(
        args.host, args.port, use_tls=True, timeout=args.timeout
    )
    loop = Loop(scratch)
    try:
        run_steps(client, cli, loop, args.timeout)
    finally:
        cli.close()
        loop.cleanup()


def run_steps(client: Any, cli: Any, loop: Loop, timeout: float) -> None:
    """ping, getCapabilities, attach, re-attach, info, event, detach."""
    step("Host.ping", cli.Host.ping())
    caps = cli.Host.getCapabilities()
    step("Host.getCapabilities", f"keys {sorted(caps)}")
    events: queue.Queue[Any] = queue.Queue()
    cli.subscribe(EVENTS, events)
    vol_id, sd_id = str(uuid.uuid4()), str(uuid.uuid4())
    info = {"driver_volume_type": "local", "data": {"device_path": loop.dev}}
    ids: dict[str, str] = {"vol_id": vol_id, "sd_id": sd_id}
    try:
        attached = cli.ManagedVolume.attach_volume(connection_info=info, **ids)
    except client.ServerError as e:
        if e.code != -32602 or "sd_id" not in e.resp_msg:
            raise
        print(f"note sd_id not accepted by this agent ({e.resp_msg})")
        del ids["sd_id"]
        attached = cli.ManagedVolume.attach_volume(connection_info=info, **ids)
    assert attached["path"] == loop.dev, attached
    assert attached["vol_id"] == vol_id, attached
    if "sd_id" in ids:
        name = Path(attached["managed_path"]).name
        assert name == f"{sd_id}_{vol_id}", attached
    step("ManagedVolume.attach_volume", attached)
    again = cli.ManagedVolume.attach_volume(connection_info=info, **ids)
    assert again == attached, (again, attached)
    step("ManagedVolume.attach_volume again (idempotent)", "same result")
    (record,) = cli.ManagedVolume.volumes_info(vol_ids=[vol_id])
    assert record["vol_id"] == vol_id and record["exists"], record
    step("ManagedVolume.volumes_info", record)
    loop.lose()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        method, params = events.get(timeout=max(left, 0.01))
        if params.get("vol_id") == vol_id and not params.get("exists"):
            break
    step(f"event on {EVENTS} after losetup -d", f"{method} {params}")
    step("ManagedVolume.detach_volume", cli.ManagedVolume.detach_volume(**ids))
    assert cli.ManagedVolume.volumes_info(vol_ids=[vol_id]) == []
    step("ManagedVolume.volumes_info after detach", "[]")


def main() -> int:
    """Parse the arguments, run the check, say how it went."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "vdsm_src",
        nargs="?",
        default=os.environ.get("VDSM_SRC"),
        help="a vdsm source tree (default: $VDSM_SRC)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=54321)
    p.add_argument("--cert", required=True, help="client certificate")
    p.add_argument("--key", required=True, help="its key")
    p.add_argument("--ca", required=True, help="CA of the agent's cert")
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    if not args.vdsm_src:
        p.error("no vdsm source tree: give VDSM_SRC")
    with tempfile.TemporaryDirectory(prefix="vdsm-client-") as tmp:
        try:
            check(args, Path(tmp))
        except Exception as e:
            print(f"FAIL {type(e).__name__}: {e}", flush=True)
            return 1
    print("all steps passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
