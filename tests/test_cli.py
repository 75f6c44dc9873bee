"""hostagent-client against a real daemon."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CLIENT,
    Agent,
    Loops,
    local_info,
    local_info_file,
    new_vol_id,
    run_client,
    short_dir,
)
from pki import start_tls_agent

from hostagent import schema
from hostagent.cli import build_params, usage_example


def test_ping(agent: Agent) -> None:
    out = agent.cli("Host", "ping")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is True


def test_help_lists_methods_from_rpc_discover(agent: Agent) -> None:
    out = agent.cli("--help")
    assert out.returncode == 0
    assert "from the agent" in out.stdout
    for m in schema.METHODS:
        assert f"  {m.namespace} {m.verb}" in out.stdout
    assert "attach_volume vol_id connection_info" in out.stdout


def test_help_without_agent_uses_built_in_schema(tmp_path: Path) -> None:
    out = run_client("--socket", str(tmp_path / "none.sock"), "--help")
    assert out.returncode == 0
    assert "built in" in out.stdout
    assert "ManagedVolume volumes_info vol_ids?" in out.stdout


def test_attach_with_file_and_detach(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    dev = loops.create()
    vid = new_vol_id()
    conn = local_info_file(tmp_path, dev)
    out = agent.cli(
        "ManagedVolume",
        "attach_volume",
        f"vol_id={vid}",
        "-f",
        str(conn),
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["path"] == dev
    out = agent.cli("ManagedVolume", "volumes_info", f'vol_ids:=["{vid}"]')
    assert json.loads(out.stdout)[0]["exists"] is True
    out = agent.cli("ManagedVolume", "detach_volume", f"vol_id={vid}")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is True


def test_params_from_stdin(agent: Agent, loops: Loops) -> None:
    dev = loops.create()
    vid = new_vol_id()
    params = {"vol_id": vid, "connection_info": local_info(dev)}
    out = agent.cli(
        "ManagedVolume",
        "attach_volume",
        "-f",
        "-",
        stdin=json.dumps(params),
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["vol_id"] == vid


def test_error_goes_to_stderr_with_status_1(agent: Agent) -> None:
    out = agent.cli("ManagedVolume", "detach_volume", "vol_id=../x")
    assert out.returncode == 1
    assert out.stdout == ""
    assert "error -32602" in out.stderr


def test_unreachable_agent(tmp_path: Path) -> None:
    out = run_client("--socket", str(tmp_path / "none.sock"), "Host", "ping")
    assert out.returncode == 1
    assert "cannot talk to" in out.stderr


def test_build_params_forms() -> None:
    got: dict[str, Any] = build_params(
        "ManagedVolume.attach_volume",
        ["vol_id=abc", "n:=5", 's:="x=y"', "url=a:=b"],
        None,
    )
    assert got == {"vol_id": "abc", "n": 5, "s": "x=y", "url": "a:=b"}
    bare = build_params(
        "ManagedVolume.attach_volume",
        ["vol_id=v"],
        json.dumps({"driver_volume_type": "local", "data": {}}),
    )
    assert bare["connection_info"]["driver_volume_type"] == "local"


# -- vdsm-client habits (issue 16) -------------------------------------------


def run_client_env(
    env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``hostagent-client ARGS`` with ``env`` added to the environment."""
    return subprocess.run(
        [CLIENT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **env),
    )


def test_json_object_after_name_equals_attaches(
    agent: Agent, loops: Loops
) -> None:
    """``connection_info='{...}'``, as a vdsm-client user types it."""
    dev = loops.create()
    vid = new_vol_id()
    out = agent.cli(
        "ManagedVolume",
        "attach_volume",
        f"vol_id={vid}",
        f"connection_info={json.dumps(local_info(dev))}",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["path"] == dev
    # An array after "=" is JSON too.
    out = agent.cli("ManagedVolume", "volumes_info", f'vol_ids=["{vid}"]')
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert row["vol_id"] == vid and row["exists"] is True
    out = agent.cli("ManagedVolume.detach_volume", f"vol_id={vid}")
    assert out.returncode == 0, out.stderr
    assert agent.call("ManagedVolume.volumes_info") == []


def test_build_params_json_after_equals() -> None:
    method = "ManagedVolume.attach_volume"
    got = build_params(
        method, ['connection_info={"driver_volume_type": "x"}'], None
    )
    assert got == {"connection_info": {"driver_volume_type": "x"}}
    # Only objects and arrays: a number, true or a quoted string stay text.
    got = build_params(method, ["a=5", "b=true", 'c="q"', "d=[x"], None)
    assert got == {"a": "5", "b": "true", "c": '"q"', "d": "[x"}
    # Broken JSON where the schema wants an object is an error, not text.
    with pytest.raises(ValueError, match="connection_info: not valid JSON"):
        build_params(method, ["connection_info={driver_volume_type"], None)


def test_namespace_and_method_as_one_word(agent: Agent) -> None:
    out = agent.cli("Host.ping")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is True
    vid = new_vol_id()
    out = agent.cli("ManagedVolume.volumes_info", f'vol_ids=["{vid}"]')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_hostagent_socket_variable(agent: Agent, tmp_path: Path) -> None:
    out = run_client_env({"HOSTAGENT_SOCKET": agent.socket}, "Host", "ping")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is True
    # --socket wins over the variable.
    none = str(tmp_path / "none.sock")
    out = run_client_env(
        {"HOSTAGENT_SOCKET": none}, "--socket", agent.socket, "Host", "ping"
    )
    assert out.returncode == 0, out.stderr
    out = run_client_env({"HOSTAGENT_SOCKET": none}, "Host", "ping")
    assert out.returncode == 1
    assert f"cannot talk to {none}" in out.stderr


def test_short_tls_options(agent_factory: Any, pki: Any) -> None:
    """``-a HOST -p PORT`` reach the TLS listener, as vdsm-client's do."""
    tls = start_tls_agent(agent_factory, pki)
    creds = pki.client()
    out = run_client(
        *("-a", "localhost", "-p", str(tls.port)),
        *("--cert", creds.cert, "--key", creds.key, "--ca", creds.ca),
        "Host.ping",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is True


def test_missing_tls_files_are_named(pki: Any, tmp_path: Path) -> None:
    creds = pki.client()
    missing = str(tmp_path / "nowhere" / "client.pem")
    files = {"--cert": creds.cert, "--key": creds.key, "--ca": creds.ca}
    for option, what in (
        ("--cert", "certificate"),
        ("--key", "key"),
        ("--ca", "CA"),
    ):
        given = dict(files, **{option: missing})
        out = run_client(
            *("-a", "localhost", "-p", "1"),
            *(x for kv in given.items() for x in kv),
            "Host",
            "ping",
        )
        assert out.returncode == 2, out.stderr
        assert f"TLS {what} file {missing}: No such file" in out.stderr
        assert "cannot talk" not in out.stderr
        assert "127.0.0.1" not in out.stderr and "localhost" not in out.stderr


def test_timeout_says_no_answer(tmp_path: Path) -> None:
    """A listener that accepts and never answers: the client says so."""
    path = str(short_dir() / "mute.sock")
    with socket.socket(socket.AF_UNIX) as mute:
        mute.bind(path)
        mute.listen()
        out = run_client("--socket", path, "--timeout", "0.5", "Host", "ping")
    assert out.returncode == 1
    assert f"no answer from {path} within 0.5 s" in out.stderr
    assert "cannot talk" not in out.stderr


def test_invalid_params_printed_once_with_an_example(agent: Agent) -> None:
    out = agent.cli("ManagedVolume", "attach_volume", f"vol_id={new_vol_id()}")
    assert out.returncode == 1
    reason = "missing a required argument: 'connection_info'"
    assert out.stderr.count(reason) == 1, out.stderr
    assert (
        "usage: hostagent-client ManagedVolume attach_volume vol_id=UUID "
        """connection_info='{"driver_volume_type": "iscsi", "data": {...}}'"""
        " [sd_id=UUID] [backend=NAME]"
    ) in out.stderr
    out = agent.cli("ManagedVolume", "detach_volume", "vol_id=../x")
    assert out.stderr.count("vol_id must be a UUID") == 1, out.stderr
    assert "hostagent-client ManagedVolume detach_volume vol_id=UUID" in (
        out.stderr
    )


def test_closed_pipe_is_quiet(agent: Agent) -> None:
    """``| head``: the reader went away before the answer was printed."""
    proc = subprocess.Popen(
        [CLIENT, "--socket", agent.socket, "rpc", "discover"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 1
    assert err == ""


def test_help_shows_the_new_forms(tmp_path: Path) -> None:
    out = run_client("--socket", str(tmp_path / "none.sock"), "--help")
    assert out.returncode == 0
    for text in ("-a HOST -p PORT", "$HOSTAGENT_SOCKET", "Host.ping"):
        assert text in out.stdout, text
    assert usage_example("ManagedVolume.attach_volume") in out.stdout
