"""``hostagent-client``: call the agent from a shell, vdsm-client style.

    hostagent-client [options] NAMESPACE METHOD [name=value | name:=json ...]

``name=value`` passes a string, ``name:=json`` a JSON value, ``-f FILE``
(``-`` for stdin) a JSON object of params; arguments override the file.
A file holding a bare connection info (it has ``driver_volume_type``) is
taken as the ``connection_info`` param.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hostagent import schema
from hostagent.client import DEFAULT_PORT, DEFAULT_SOCKET, Client, RpcError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hostagent-client",
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Call a hostagentd over JSON-RPC.",
    )
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--socket", default=None, help="Unix socket path")
    p.add_argument("--host", help="TLS: agent host name")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--cert", help="TLS: client certificate")
    p.add_argument("--key", help="TLS: client key")
    p.add_argument("--ca", help="TLS: CA that signed the agent")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("-f", dest="file", help="JSON params from FILE or -")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON (the default when not on a terminal)",
    )
    shape.add_argument(
        "--text",
        action="store_true",
        help="print a summary where there is one (default on a terminal)",
    )
    # For the bash completion (contrib/hostagent-client.bash): one line per
    # method, "NAMESPACE VERB name= name:= ...".
    p.add_argument("--list-methods", action="store_true")
    p.add_argument("namespace", nargs="?")
    p.add_argument("method", nargs="?")
    p.add_argument("params", nargs="*")
    return p


def _connect(args: argparse.Namespace) -> Client:
    return Client.from_args(args, DEFAULT_SOCKET)


def _discover(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The agent's OpenRPC document, or the built-in one when unreachable."""
    try:
        with _connect(args) as c:
            return c.call("rpc.discover"), "from the agent"
    except (OSError, RpcError, ValueError):
        return schema.document(), "built in; the agent is not reachable"


def help_text(
    parser: argparse.ArgumentParser, doc: dict[str, Any], src: str
) -> str:
    """Usage plus every method and its params from an OpenRPC document."""
    lines = [
        parser.format_usage().rstrip(),
        "",
        "  NAMESPACE METHOD [name=value | name:=json ...] [-f FILE|-]",
        "",
        "options:",
        "  --socket PATH      Unix socket (default " + DEFAULT_SOCKET + ")",
        "  --host H --port N --cert F --key F --ca F   TLS listener",
        "  --timeout S        seconds to wait for the answer",
        "  -f FILE|-          JSON object of params (- = stdin)",
        "  --json | --text    JSON, or a summary (Host getCapabilities);",
        "                     default: a summary on a terminal, else JSON",
        "",
        f"methods ({src}):",
    ]
    for m in doc.get("methods", []):
        ns, _, verb = m["name"].partition(".")
        params = " ".join(
            p["name"] + ("" if p.get("required") else "?")
            for p in m.get("params", [])
        )
        lines.append(f"  {ns} {verb} {params}".rstrip())
        lines.append(f"      {m.get('summary', '')}")
    lines += [
        "",
        "examples:",
        "  hostagent-client Host getCapabilities",
        "  hostagent-client ManagedVolume volumes_info",
        "  hostagent-client ManagedVolume attach_volume vol_id=UUID "
        "-f conn.json",
        "  hostagent-client ManagedVolume detach_volume vol_id=UUID",
    ]
    return "\n".join(lines) + "\n"


def method_lines(doc: dict[str, Any], src: str) -> str:
    """``--list-methods`` output: ``NAMESPACE VERB name= name:= ...``.

    A param whose schema is a string (or null) is offered as ``name=``, any
    other as ``name:=`` (a JSON value), as :func:`build_params` reads them.
    The first line, a comment, says where the list came from.
    """
    lines = [f"# {src}"]
    for m in doc.get("methods", []):
        name = m.get("name", "")
        ns, dot, verb = name.partition(".")
        if not dot or not ns or not verb or any(c.isspace() for c in name):
            continue
        words = [ns, verb]
        for p in m.get("params", []):
            pname = p.get("name", "")
            if not pname or any(c.isspace() for c in pname):
                continue
            kind = (p.get("schema") or {}).get("type")
            # A string that may also be null (an optional name) is still
            # typed as a plain string on the command line.
            plain = kind == "string" or (
                isinstance(kind, list) and "string" in kind
            )
            words.append(pname + ("=" if plain else ":="))
        lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


def build_params(
    method: str, args: list[str], file_text: str | None
) -> dict[str, Any]:
    """Params from ``-f`` contents and ``name=value``/``name:=json`` args."""
    params: dict[str, Any] = {}
    if file_text is not None:
        loaded = json.loads(file_text)
        if not isinstance(loaded, dict):
            raise ValueError("-f: the file must hold a JSON object")
        spec = schema.BY_NAME.get(method)
        names = {p.name for p in spec.params} if spec else set()
        if "driver_volume_type" in loaded and "connection_info" in names:
            loaded = {"connection_info": loaded}
        params.update(loaded)
    for arg in args:
        eq = arg.find("=")
        if eq > 0 and arg[eq - 1] == ":":
            name, raw = arg[: eq - 1], arg[eq + 1 :]
            try:
                params[name] = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{name}: not valid JSON: {e}") from None
        elif eq > 0:
            params[arg[:eq]] = arg[eq + 1 :]
        else:
            raise ValueError(f"{arg!r}: expected name=value or name:=json")
    return params


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hostagent-client``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_methods:
        sys.stdout.write(method_lines(*_discover(args)))
        return 0
    if args.help or not args.namespace or not args.method:
        doc, src = _discover(args)
        out = sys.stdout if args.help else sys.stderr
        out.write(help_text(parser, doc, src))
        return 0 if args.help else EXIT_USAGE
    if args.host and not (args.cert and args.key):
        print(
            "hostagent-client: --host needs --cert and --key: the agent "
            "accepts only clients with a certificate from its CA",
            file=sys.stderr,
        )
        return EXIT_USAGE
    method = f"{args.namespace}.{args.method}"
    try:
        file_text = None
        if args.file == "-":
            file_text = sys.stdin.read()
        elif args.file:
            with open(args.file) as f:
                file_text = f.read()
        params = build_params(method, args.params, file_text)
    except (OSError, ValueError) as e:
        print(f"hostagent-client: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _connect(args) as client:
            result = client.call(method, params or None)
    except RpcError as e:
        print(f"error {e.code}: {e.message}", file=sys.stderr)
        if e.data is not None:
            print(json.dumps(e.data, indent=2), file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as e:
        where = (
            f"{args.host}:{args.port}"
            if args.host
            else (args.socket or DEFAULT_SOCKET)
        )
        print(
            f"hostagent-client: cannot talk to {where}: {e}", file=sys.stderr
        )
        return EXIT_ERROR
    text = args.text or (not args.json and sys.stdout.isatty())
    if method == "Host.getCapabilities" and text:
        print(capabilities_text(result), end="")
    else:
        print(json.dumps(result, indent=2))
    return 0


def capabilities_text(caps: dict[str, Any]) -> str:
    """``Host getCapabilities`` for a person: what works here, and why not.

    One line per driver and per backend (READY or NOT READY, the tools
    found or missing, the problems), then the connector info os-brick
    reports.  ``--json`` gives the full document.
    """
    out = [f"hostagent {caps.get('version', '?')}", "", "drivers:"]
    status = caps.get("driver_status", {})
    for d in caps.get("drivers", []):
        out.append("  " + _status_line(d, status.get(d, {})))
    backends = caps.get("backends", {})
    out += ["", "backends:" if backends else "backends: none configured"]
    for name, b in backends.items():
        opts = ", ".join(
            f"{k}={json.dumps(v)}"
            for k, v in b.items()
            if k not in ("driver", "ready", "tools", "problems")
        )
        out.append(
            "  " + _status_line(f"{name:<12} {b.get('driver', '?')}", b)
        )
        out.append(f"      {opts}")
    info = caps.get("connector_info")
    if info is None:
        out += ["", "connector_info: not available (os-brick cannot run)"]
    else:
        out += ["", "connector_info:"]
        width = max((len(k) for k in info), default=0)
        for k, v in sorted(info.items()):
            shown = ", ".join(map(str, v)) if isinstance(v, list) else v
            out.append(f"  {k:<{width}}  {shown}")
    return "\n".join(out) + "\n"


def _status_line(label: str, st: dict[str, Any], extra: str = "") -> str:
    state = "ready" if st.get("ready") else "NOT READY"
    tools = " ".join(
        f"{t}{'' if ok else '(missing)'}"
        for t, ok in st.get("tools", {}).items()
    )
    line = f"{label:<26} {state:<10} {tools}".rstrip()
    if extra:
        line += f"\n      {extra}"
    for problem in st.get("problems", []):
        line += f"\n      - {problem}"
    return line


if __name__ == "__main__":
    sys.exit(main())
