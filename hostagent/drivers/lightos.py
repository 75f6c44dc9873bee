"""LightOS: os-brick's LIGHTOS connector (NVMe/TCP through Lightbits'
discovery-client service).

os-brick writes one ``<discovery dir>/<uuid>.conf`` per volume (a line
``-t tcp -a <portal> -s <port> -q <hostnqn> -n <subsysnqn>`` per node)
and the host's discovery-client service connects the subsystem; the
connector then waits for ``/dev/disk/by-id/nvme-uuid.<uuid>``.  Where
the service watches and answers, and how long the connector waits, are
``[brick]`` keys (os-brick reads them from its own ``[os_brick]``
options): :func:`configure` gives them to the connector.

Opt-in (not in the default ``[brick].drivers``): it needs Lightbits'
discovery-client on the host, which no distribution ships, as StorPool
needs its client.  vdsm's allow-list names it; here an operator adds it.

The connection data is checked up front (-32602): ``uuid`` goes into a
file path and the other values into the discovery file's lines, where a
space, ``#`` or ``=`` would be read as another flag or a comment.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any

from hostagent.drivers.base import Driver

# The [brick] keys of this driver, with what os-brick calls them.
DEFAULT_DISCOVERY_DIR = "/etc/discovery-client/discovery.d"
DEFAULT_DISCOVERY_ADDRESS = "localhost"
DEFAULT_DISCOVERY_PORT = 6060
# os-brick's LightOSConnector.WAIT_DEVICE_TIMEOUT.
DEFAULT_DEVICE_WAIT = 60.0
BRICK_OPTIONS = (
    "lightos_discovery_dir",
    "lightos_discovery_address",
    "lightos_discovery_port",
    "lightos_device_wait",
)
# The kernel's NVMe over Fabrics interface the discovery-client writes.
NVME_FABRICS = "/dev/nvme-fabrics"
HOSTNQN_FILE = "/etc/nvme/hostnqn"

_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
# An NQN is at most 223 bytes (NVMe base spec); the discovery file
# splits flags on spaces and "=", and "#" starts a comment.
_NQN = re.compile(r"[^\s#=]{1,223}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")


def check_lightos_data(data: dict[str, Any]) -> None:
    """Raise ValueError for connection data the connector must not get.

    The messages name the key, never the value.
    """
    uuid = data.get("uuid")
    if not isinstance(uuid, str) or not _UUID.fullmatch(uuid):
        raise ValueError(
            "connection_info.data.uuid must be a UUID in canonical "
            "lower-case form"
        )
    nqn = data.get("subsysnqn")
    if not isinstance(nqn, str) or not _NQN.fullmatch(nqn):
        raise ValueError(
            "connection_info.data.subsysnqn must be a non-empty NQN "
            "without spaces, '#' or '=' (at most 223 characters)"
        )
    nodes = data.get("lightos_nodes")
    if not isinstance(nodes, dict) or not nodes:
        raise ValueError(
            "connection_info.data.lightos_nodes must be a non-empty object"
        )
    for name, node in nodes.items():
        _check_node(f"connection_info.data.lightos_nodes[{name!r}]", node)


def _check_node(where: str, node: Any) -> None:
    if not isinstance(node, dict):
        raise ValueError(f"{where} must be an object")
    if node.get("transport_type") != "tcp":
        raise ValueError(f"{where}.transport_type must be 'tcp'")
    portal = node.get("target_portal")
    if not isinstance(portal, str) or not _portal_ok(portal):
        raise ValueError(
            f"{where}.target_portal must be an IP address or a host name"
        )
    port = node.get("target_port")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if (
        not isinstance(port, int)
        or isinstance(port, bool)
        or not 1 <= port <= 65535
    ):
        raise ValueError(f"{where}.target_port must be a port 1..65535")


def _portal_ok(portal: str) -> bool:
    try:
        ipaddress.ip_address(portal)
    except ValueError:
        return _HOSTNAME.fullmatch(portal) is not None
    return True


def host_problems(options: Mapping[str, str]) -> list[str]:
    """The discovery directory, the host NQN and the kernel's NVMe-oF."""
    problems = []
    directory = options.get("lightos_discovery_dir") or DEFAULT_DISCOVERY_DIR
    if not os.path.isdir(directory):
        problems.append(f"discovery-client directory {directory} not found")
    if not os.path.isfile(HOSTNQN_FILE):
        problems.append(f"host NQN file {HOSTNQN_FILE} not found")
    if not os.path.exists(NVME_FABRICS):
        problems.append(
            f"{NVME_FABRICS} not found (the kernel has no NVMe over "
            "Fabrics; load nvme-tcp)"
        )
    return problems


def configure(conn: Any, brick: Any) -> None:
    """Give os-brick's connector the ``[brick]`` lightos_* keys.

    os-brick reads them from its ``[os_brick]`` options when the
    connector is made; the agent sets the connector's attributes.
    """
    conn.discovery_dir_path = brick.lightos_discovery_dir
    conn.discovery_address = brick.lightos_discovery_address
    conn.discovery_port = brick.lightos_discovery_port
    conn.WAIT_DEVICE_TIMEOUT = brick.lightos_device_wait


DRIVER = Driver(
    name="lightos",
    protocol="LIGHTOS",
    default=False,
    brick_options=BRICK_OPTIONS,
    check_params=check_lightos_data,
    host_problems=host_problems,
    configure=configure,
)
