"""hostagent-client against a real daemon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import Agent, Loops, local_info, new_vol_id, run_client

from hostagent import schema
from hostagent.cli import build_params


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
    conn = tmp_path / "conn.json"
    conn.write_text(json.dumps(local_info(dev)))
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
    assert json.loads(out.stdout) is None


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
