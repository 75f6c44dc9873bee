"""The command lines of ``hostagentd`` and ``hostagent-client``.

Only the standard library (and :mod:`hostagent.config`, which needs no
more) is imported here: ``contrib/make-man.py`` builds the man pages from
these parsers during the RPM build, with the build host's bare python3,
where os-brick, orjson and the rest are not installed.
"""

from __future__ import annotations

import argparse

from hostagent import __version__, config, schema

DEFAULT_SOCKET = "/run/hostagent/hostagent.sock"
DEFAULT_PORT = 54322
# Saves typing --socket on every command (make run prints the export).
SOCKET_ENV = "HOSTAGENT_SOCKET"
DEFAULT_TIMEOUT = 300.0

CLIENT_DESCRIPTION = """\
Call a hostagentd over JSON-RPC, the way vdsm-client calls vdsm: name the
namespace and the method (or both as one word, Host.ping), then the params
as name=value.  A value that is a JSON object or array ({...} or [...]) is
passed as JSON, any other as a string; name:=json passes any JSON value
(a number, true, null, a string in quotes).  -f FILE (- for stdin) reads a
JSON object of params, which the arguments override; a file holding a bare
connection info (it has driver_volume_type) is taken as the
connection_info param.  Without a method, the help lists every method the
agent publishes (rpc.discover).
"""

DAEMON_DESCRIPTION = """\
Per-host storage attachment agent: attaches and detaches block volumes
through os-brick for a remote management engine, over JSON-RPC 2.0 on a
Unix socket (and, when configured, mutual TLS).  Every attachment is kept
in a SQLite database under storage.state_dir; interrupted operations are
reconciled at start-up.  Normally run by systemd (hostagent.service,
socket-activated by hostagent.socket).
"""


def client_parser() -> argparse.ArgumentParser:
    """The parser of ``hostagent-client``'s command line."""
    p = argparse.ArgumentParser(
        prog="hostagent-client",
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=CLIENT_DESCRIPTION,
    )
    # Our own help: it lists the methods, which argparse cannot know.
    p.add_argument(
        "-h", "--help", action="store_true", help="show the help and exit"
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the agent's Unix socket (default: ${SOCKET_ENV}, else "
        f"{DEFAULT_SOCKET})",
    )
    p.add_argument(
        "-a",
        "--host",
        metavar="HOST",
        help="talk TLS to the agent on HOST instead (needs --cert, --key)",
    )
    p.add_argument(
        "-p",
        "--port",
        metavar="PORT",
        type=int,
        default=DEFAULT_PORT,
        help=f"the agent's TLS port (default: {DEFAULT_PORT})",
    )
    p.add_argument(
        "--cert", metavar="FILE", help="TLS: this client's certificate"
    )
    p.add_argument("--key", metavar="FILE", help="TLS: this client's key")
    p.add_argument(
        "--ca",
        metavar="FILE",
        help="TLS: the CA that signed the agent's certificate",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"how long to wait for the answer (default: {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "-f",
        dest="file",
        metavar="FILE",
        help="read a JSON object of params from FILE (- for stdin)",
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON (the default when not on a terminal)",
    )
    shape.add_argument(
        "--text",
        action="store_true",
        help="print a summary where there is one (Host getCapabilities; "
        "the default on a terminal)",
    )
    # For the bash completion (contrib/hostagent-client.bash): one line per
    # method, "NAMESPACE VERB name= name:= ...".
    p.add_argument(
        "--list-methods",
        action="store_true",
        help="list the methods and their params, one line each, and exit",
    )
    p.add_argument(
        "namespace", nargs="?", help="Host, ManagedVolume, ... or NS.METHOD"
    )
    p.add_argument(
        "method", nargs="?", help="ping, attach_volume, ... (see --help)"
    )
    p.add_argument(
        "params", nargs="*", help="name=value or name:=json, one per param"
    )
    return p


def daemon_parser() -> argparse.ArgumentParser:
    """The parser of ``hostagentd``'s command line."""
    p = argparse.ArgumentParser(
        prog="hostagentd",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DAEMON_DESCRIPTION,
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config file (default: $HOSTAGENT_CONFIG or "
        f"{config.DEFAULT_PATH}; a missing default file means defaults)",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config file (and that storage.state_dir and "
        "storage.run_dir are usable) and exit: 0 when good, 2 when not",
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"hostagentd {__version__}",
        help="print the version and exit",
    )
    return p


# Man page sections beyond what the parsers hold (contrib/make-man.py):
# per program, (title, [(term, text), ...]); an empty term is a plain
# paragraph.
_VID = "6d1c5f3e-8b4a-4c1e-9f2d-3a5b7c9e1f20"
MAN_SECTIONS: dict[str, list[tuple[str, list[tuple[str, str]]]]] = {
    "hostagent-client": [
        (
            "EXAMPLES",
            [
                ("hostagent-client Host ping", "Is the agent up?"),
                (
                    "hostagent-client Host getCapabilities",
                    "What this host can attach, and what is missing.",
                ),
                (
                    f"hostagent-client ManagedVolume attach_volume "
                    f"vol_id={_VID} "
                    f"connection_info='{schema.EXAMPLE_CONNECTION_FULL}'",
                    "Attach an iSCSI LUN; prints the device path.",
                ),
                (
                    "hostagent-client ManagedVolume volumes_info",
                    "Every volume attached through the agent.",
                ),
                (
                    f"hostagent-client ManagedVolume detach_volume "
                    f"vol_id={_VID}",
                    "Detach it again.",
                ),
                (
                    "hostagent-client -a agent.example -p 54322 "
                    "--cert client.pem --key client.key --ca ca.pem "
                    "Host.ping",
                    "The same over the TLS listener of a remote agent.",
                ),
            ],
        ),
        (
            "ENVIRONMENT",
            [
                (
                    SOCKET_ENV,
                    "The Unix socket used when --socket is not given "
                    "(make run prints the line that sets it).",
                )
            ],
        ),
        (
            "EXIT STATUS",
            [
                (
                    "",
                    "0 on success; 1 when the agent answered with an error "
                    "or could not be reached; 2 on a usage error.",
                )
            ],
        ),
        ("SEE ALSO", [("", "hostagentd(8)")]),
    ],
    "hostagentd": [
        (
            "FILES",
            [
                (
                    config.DEFAULT_PATH,
                    "The configuration (every key has a default).",
                ),
                (
                    "/var/lib/hostagent",
                    "storage.state_dir: the database, os-brick's locks.",
                ),
                (
                    "/run/hostagent",
                    "storage.run_dir: the socket, the volumes/ symlinks.",
                ),
            ],
        ),
        (
            "ENVIRONMENT",
            [
                (
                    "HOSTAGENT_CONFIG",
                    "The config file used when --config is not given.",
                )
            ],
        ),
        (
            "EXIT STATUS",
            [
                (
                    "",
                    "0 after a clean stop; 1 when it cannot start (a socket "
                    "in use, another instance running); 2 on a bad "
                    "configuration, an unusable storage.state_dir or "
                    "storage.run_dir included; 3 when the database needs "
                    "an operator.",
                )
            ],
        ),
        ("SEE ALSO", [("", "hostagent-client(1), systemd.service(5)")]),
    ],
}
