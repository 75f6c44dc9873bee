"""``hostagent-client``: call the agent from a shell, vdsm-client style.

    hostagent-client [options] NAMESPACE METHOD [name=value | name:=json ...]

``name=value`` passes a string, or JSON when the value is a JSON object
or array (as vdsm-client reads it); ``name:=json`` any JSON value; ``-f
FILE`` (``-`` for stdin) a JSON object of params; arguments override the
file.  A file holding a bare connection info (it has
``driver_volume_type``) is taken as the ``connection_info`` param.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from hostagent import cmdline, schema
from hostagent.client import (
    DEFAULT_SOCKET,
    Client,
    RpcError,
    TlsFileError,
)

EXIT_ERROR = 1
EXIT_USAGE = 2

_parser = cmdline.client_parser

# What the usage hint after a -32602 shows for a param, by name, when its
# schema alone does not make a good example.
_EXAMPLES = {
    "vol_id": "vol_id=UUID",
    "vol_ids": "vol_ids='[\"UUID\", ...]'",
    "connection_info": f"connection_info='{schema.EXAMPLE_CONNECTION}'",
    "backend": "backend=NAME",
    "sd_id": "sd_id=UUID",
}


def socket_path(args: argparse.Namespace) -> str:
    """``--socket``, else ``$HOSTAGENT_SOCKET``, else the default."""
    return args.socket or os.environ.get(cmdline.SOCKET_ENV) or DEFAULT_SOCKET


def _connect(args: argparse.Namespace) -> Client:
    return Client.from_args(args, socket_path(args))


def _where(args: argparse.Namespace) -> str:
    return f"{args.host}:{args.port}" if args.host else socket_path(args)


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
        "  (NAMESPACE.METHOD as one word works too: Host.ping)",
        "",
        "options:",
        "  --socket PATH      Unix socket (default $"
        + cmdline.SOCKET_ENV
        + ", else "
        + DEFAULT_SOCKET
        + ")",
        "  -a HOST -p PORT --cert F --key F --ca F   the TLS listener",
        "  --timeout S        seconds to wait for the answer",
        "  -f FILE|-          JSON object of params (- = stdin)",
        "  --json | --text    JSON, or a summary (Host getCapabilities);",
        "                     default: a summary on a terminal, else JSON",
        "  --list-methods     one line per method, for scripts",
        "",
        "params: name=value (a {...} or [...] value is JSON, the rest a "
        "string),",
        '        name:=json (any JSON: 5, true, null, "text")',
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
        "  " + usage_example("ManagedVolume.attach_volume"),
        "  hostagent-client ManagedVolume attach_volume vol_id=UUID "
        "-f conn.json",
        "  hostagent-client ManagedVolume detach_volume vol_id=UUID",
    ]
    return "\n".join(lines) + "\n"


def usage_example(method: str) -> str:
    """A command line calling ``method`` right (from the built-in schema).

    Optional params are in brackets; ``""`` for a method the client does
    not know.
    """
    spec = schema.BY_NAME.get(method)
    if spec is None:
        return ""
    words = ["hostagent-client", spec.namespace, spec.verb]
    for p in spec.params:
        kind = p.schema.get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        if p.name in _EXAMPLES:
            word = _EXAMPLES[p.name]
        elif "object" in kinds:
            word = f"{p.name}='{{...}}'"
        elif "array" in kinds:
            word = f"{p.name}='[...]'"
        elif "string" in kinds:
            word = f"{p.name}=VALUE"
        else:
            word = f"{p.name}:=JSON"
        words.append(word if p.required else f"[{word}]")
    return " ".join(words)


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


def _wants_json(method: str, name: str) -> bool:
    """Whether the schema types param ``name`` as an object or array."""
    spec = schema.BY_NAME.get(method)
    for p in spec.params if spec else ():
        if p.name == name:
            kind = p.schema.get("type")
            kinds = kind if isinstance(kind, list) else [kind]
            return "object" in kinds or "array" in kinds
    return False


def _value(method: str, name: str, raw: str) -> Any:
    """``name=raw``: JSON when ``raw`` is a JSON object or array.

    vdsm-client users pass structures this way, and no string param of
    ours starts with ``{`` or ``[``.  A value that looks like one but is
    not valid JSON is an error for a param the schema wants structured,
    and stays a string otherwise.
    """
    if raw.lstrip()[:1] not in ("{", "["):
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        if _wants_json(method, name):
            raise ValueError(f"{name}: not valid JSON: {e}") from None
        return raw
    return value if isinstance(value, (dict, list)) else raw


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
            params[arg[:eq]] = _value(method, arg[:eq], arg[eq + 1 :])
        else:
            raise ValueError(f"{arg!r}: expected name=value or name:=json")
    return params


def _split_dotted(args: argparse.Namespace) -> None:
    """``Host.ping`` as one word: NAMESPACE.METHOD, the rest are params."""
    ns = args.namespace
    if not ns or "." not in ns or "=" in ns:
        return
    args.namespace, _, verb = ns.partition(".")
    if args.method is not None:
        args.params.insert(0, args.method)
    args.method = verb


def _fail(message: str, status: int = EXIT_ERROR) -> int:
    """Print ``hostagent-client: message`` on stderr; return ``status``."""
    print(f"hostagent-client: {message}", file=sys.stderr)
    return status


def _print_error(e: RpcError, method: str) -> None:
    print(f"error {e.code}: {e.message}", file=sys.stderr)
    data = e.data
    # Data that only repeats the message (a -32602's reason, the param
    # the message already names) is not printed a second time.
    redundant = (isinstance(data, str) and data in e.message) or (
        isinstance(data, dict)
        and set(data) == {"param"}
        and str(data["param"]) in e.message
    )
    if data is not None and not redundant:
        print(json.dumps(data, indent=2), file=sys.stderr)
    example = usage_example(method) if e.code == -32602 else ""
    if example:
        print(f"usage: {example}", file=sys.stderr)


def _quiet_broken_pipe(run: Callable[[], int]) -> int:
    """``run()``, ending quietly when the reader of stdout went away.

    ``| head`` closes the pipe early; the rest of the output has nowhere
    to go, which is no error worth a traceback.
    """
    try:
        status = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so
        # that flush does not fail (and print) a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hostagent-client``."""
    return _quiet_broken_pipe(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _split_dotted(args)
    if args.list_methods:
        sys.stdout.write(method_lines(*_discover(args)))
        return 0
    if args.help or not args.namespace or not args.method:
        doc, src = _discover(args)
        out = sys.stdout if args.help else sys.stderr
        out.write(help_text(parser, doc, src))
        return 0 if args.help else EXIT_USAGE
    if args.host and not (args.cert and args.key):
        return _fail(
            "--host needs --cert and --key: the agent accepts only "
            "clients with a certificate from its CA",
            EXIT_USAGE,
        )
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
        return _fail(str(e), EXIT_USAGE)
    try:
        client = _connect(args)
    except TlsFileError as e:
        return _fail(str(e), EXIT_USAGE)
    except TimeoutError:
        return _fail(
            f"no connection to {_where(args)} within {args.timeout:g} s"
        )
    except (OSError, ValueError) as e:
        return _fail(f"cannot talk to {_where(args)}: {e}")
    try:
        with client:
            result = client.call(method, params or None)
    except RpcError as e:
        _print_error(e, method)
        return EXIT_ERROR
    except TimeoutError:
        return _fail(
            f"no answer from {_where(args)} within {args.timeout:g} s "
            "(--timeout); the agent may still finish the call: "
            "ManagedVolume volumes_info shows where it stands"
        )
    except (OSError, ValueError) as e:
        return _fail(f"cannot talk to {_where(args)}: {e}")
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
