#!/usr/bin/env python3
"""Example remote engine: attach, inspect and detach one volume on a host.

What a management engine does with hostagent, over the TLS listener:

    engine_client.py --host HOST [--port 54322] \\
        --cert engine-cert.pem --key engine-key.pem --ca ca.pem \\
        --vol-id 01713ade-9688-43ff-a46c-0e2e35974dce \\
        --connection-info conn.json

(``--socket PATH`` instead of ``--host`` runs the same sequence over the
agent's Unix socket, on the host itself.)

1. ``Host.getCapabilities``: the connector info the engine would hand to
   the storage array to export the volume to this host;
2. ``ManagedVolume.attach_volume`` with the connection info the array
   returned (``conn.json``, the os-brick/Cinder format);
3. ``ManagedVolume.volumes_info``: check the device really exists;
4. ``ManagedVolume.detach_volume`` (skipped with ``--keep``).

Error handling, as an engine should do it:

* the agent cannot be reached, or TLS fails: exit status 3, nothing done;
* 927 (another operation on the volume runs): retried with back-off,
  the agent serialises operations per volume;
* 929 (already attached with other connection info): reported and the
  volume left alone; it is someone else's attachment;
* 925/926/928/2009: the agent already undid its partial work; reported
  with the detail the agent gave (``error.data``), exit status 1;
* the connection drops during attach: reconnect and ask ``volumes_info``
  what happened (attach is idempotent, so it is then simply repeated);
* anything failing after a successful attach: the volume is detached
  again, so the example never leaks an attachment.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

from hostagent.client import DEFAULT_PORT, Client, RpcError

EXIT_OK = 0
EXIT_RPC = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3

BUSY = 927
MISMATCH = 929
BUSY_RETRIES = 5


class Engine:
    """One host's agent, seen from the engine."""

    def __init__(self, connect: Callable[[], Client], out: Any) -> None:
        self._connect = connect
        self._client: Client | None = None
        self.out = out

    def say(self, text: str) -> None:
        """Progress for the operator."""
        print(text, file=self.out, flush=True)

    def client(self) -> Client:
        """The current connection, opened on first use."""
        if self._client is None:
            self._client = self._connect()
        return self._client

    def close(self) -> None:
        """Close the connection, if any."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def call(self, method: str, params: Any = None) -> Any:
        """Call, retrying while the volume is busy (927)."""
        delay = 0.5
        for attempt in range(BUSY_RETRIES + 1):
            try:
                return self.client().call(method, params)
            except RpcError as e:
                if e.code != BUSY or attempt == BUSY_RETRIES:
                    raise
                self.say(f"  busy ({e.message}); retrying in {delay:g} s")
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def attach(self, vol_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """attach_volume; after a dropped connection, find out and retry."""
        params = {"vol_id": vol_id, "connection_info": info}
        try:
            result: dict[str, Any] = self.call(
                "ManagedVolume.attach_volume", params
            )
            return result
        except (ConnectionError, TimeoutError, ssl.SSLError) as e:
            self.say(f"  connection lost during attach ({e}); asking again")
            self.close()
            [row] = self.call(
                "ManagedVolume.volumes_info", {"vol_ids": [vol_id]}
            ) or [None]
            self.say(f"  agent says: {row['state'] if row else 'not known'}")
            # Same info again returns the existing attachment, or attaches.
            result = self.call("ManagedVolume.attach_volume", params)
            return result

    def run(self, vol_id: str, info: dict[str, Any], keep: bool) -> int:
        """The whole sequence; the exit status."""
        caps = self.call("Host.getCapabilities")
        connector = caps.get("connector_info")
        self.say(f"agent {caps.get('version')}: drivers {caps.get('drivers')}")
        if connector is None:
            self.say("  os-brick is not usable there: no connector info")
        else:
            self.say(
                f"  connector: host={connector.get('host')} "
                f"ip={connector.get('ip')} "
                f"initiator={connector.get('initiator')} "
                f"multipath={connector.get('multipath')}"
            )
        self.say(f"attach {vol_id} ({info.get('driver_volume_type')})")
        try:
            attached = self.attach(vol_id, info)
        except RpcError as e:
            if e.code == MISMATCH:
                self.say(
                    "  attached there with other connection info; "
                    "leaving it alone"
                )
            raise
        self.say(f"  path {attached['path']} -> {attached['managed_path']}")
        try:
            [row] = self.call(
                "ManagedVolume.volumes_info", {"vol_ids": [vol_id]}
            )
            self.say(f"  state {row['state']}, exists {row['exists']}")
            if not row["exists"]:
                self.say("  the device is missing on the host")
            if keep:
                self.say("kept attached (--keep)")
                return EXIT_OK if row["exists"] else EXIT_RPC
        except BaseException:
            self.say("  failed after attach: detaching it again")
            self._detach_quietly(vol_id)
            raise
        self.say(f"detach {vol_id}")
        self.call("ManagedVolume.detach_volume", {"vol_id": vol_id})
        self.say("  detached")
        return EXIT_OK if row["exists"] else EXIT_RPC

    def _detach_quietly(self, vol_id: str) -> None:
        try:
            self.close()
            self.call("ManagedVolume.detach_volume", {"vol_id": vol_id})
        except (OSError, RpcError) as e:
            self.say(f"  detach failed too: {e}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Attach, inspect and detach one volume through a "
        "hostagent (example engine)."
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="agent host (TLS listener)")
    where.add_argument("--socket", help="agent Unix socket (local mode)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--cert", help="engine client certificate (PEM)")
    p.add_argument("--key", help="its private key (PEM)")
    p.add_argument("--ca", help="CA that signed the agent's certificate")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--vol-id", required=True)
    p.add_argument(
        "--connection-info",
        required=True,
        metavar="FILE",
        help="JSON connection info from the storage array (- for stdin)",
    )
    p.add_argument("--keep", action="store_true", help="do not detach")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; the exit status."""
    args = _parser().parse_args(argv)
    if args.host and not (args.cert and args.key and args.ca):
        print(
            "engine_client: --host needs --cert, --key and --ca",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        if args.connection_info == "-":
            info = json.load(sys.stdin)
        else:
            with open(args.connection_info) as f:
                info = json.load(f)
    except (OSError, ValueError) as e:
        print(f"engine_client: connection info: {e}", file=sys.stderr)
        return EXIT_USAGE

    def connect() -> Client:
        return Client.from_args(args)

    where = f"{args.host}:{args.port}" if args.host else args.socket
    engine = Engine(connect, sys.stdout)
    try:
        return engine.run(args.vol_id, info, args.keep)
    except RpcError as e:
        print(f"engine_client: error {e.code}: {e.message}", file=sys.stderr)
        if e.data is not None:
            print(json.dumps(e.data, indent=2), file=sys.stderr)
        return EXIT_RPC
    except ssl.SSLError as e:
        print(f"engine_client: TLS with {where} failed: {e}", file=sys.stderr)
        return EXIT_CONNECT
    except OSError as e:
        print(f"engine_client: cannot talk to {where}: {e}", file=sys.stderr)
        return EXIT_CONNECT
    finally:
        engine.close()


if __name__ == "__main__":
    sys.exit(main())
