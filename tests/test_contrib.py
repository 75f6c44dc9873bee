"""contrib/: the sample config, the bash completion, the engine example."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import typing
from pathlib import Path
from typing import Any

from conftest import BIN, CLIENT, Agent, Loops, local_info, new_vol_id

from hostagent import config, schema

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


# -- contrib/hostagent.toml ---------------------------------------------------


def test_sample_config_has_every_key_with_its_default() -> None:
    text = (CONTRIB / "hostagent.toml").read_text()
    raw = tomllib.loads(text)
    assert config.from_dict(raw) == config.Config()
    hints = typing.get_type_hints(config.Config)
    # [backend.NAME] tables have no defaults: the file shows commented
    # examples (test_backends.py loads them).
    del hints["backend"]
    assert set(raw) == set(hints)
    lines = text.splitlines()
    for section, cls in hints.items():
        keys = {f.name for f in dataclasses.fields(cls)}
        assert set(raw[section]) == keys, section
        # Each key has a comment block above it (or shares the one of
        # the key right before it, as tls_cert/tls_key do).
        for key in keys:
            [i] = [
                n for n, ln in enumerate(lines) if ln.startswith(f"{key} =")
            ]
            assert lines[i - 1].startswith("#") or "=" in lines[i - 1], key


# -- bash completion ---------------------------------------------------------


def complete(line: str, env_path: str | None = None) -> list[str]:
    """What the completion offers for ``line`` (cursor at the end).

    A real bash loads the script, which must register itself with
    ``complete``; the registered function is then called the way bash's
    programmable completion calls it.
    """
    script = f"""
set -u
source {CONTRIB / "hostagent-client.bash"}
spec=$(complete -p hostagent-client)
fn=${{spec#*-F }}; fn=${{fn%% *}}
COMP_LINE=$1
COMP_POINT=${{#COMP_LINE}}
read -r -a COMP_WORDS <<<"$COMP_LINE"
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
[[ $COMP_LINE == *' ' ]] && COMP_CWORD=${{#COMP_WORDS[@]}}
COMPREPLY=()
"$fn" hostagent-client "${{COMP_WORDS[COMP_CWORD]-}}" ""
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    if env_path:
        env["PATH"] = env_path
    out = subprocess.run(
        ["/bin/bash", "-c", script, "bash", line],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]


def test_completion_from_the_agent(agent: Agent) -> None:
    s = f"hostagent-client --socket {agent.socket}"
    assert complete(f"{s} ") == ["Host", "ManagedVolume", "rpc"]
    assert complete(f"{s} Man") == ["ManagedVolume"]
    assert complete(f"{s} ManagedVolume ") == [
        "attach_volume",
        "detach_volume",
        "extend_volume",
        "volumes_info",
    ]
    assert complete(f"{s} ManagedVolume attach_volume ") == [
        "vol_id=",
        "connection_info:=",
        "backend=",
    ]
    # A param already given is not offered again.
    assert complete(f"{s} ManagedVolume attach_volume vol_id=x ") == [
        "connection_info:=",
        "backend=",
    ]
    # bash completes only past the last ":" or "=" of a word.
    assert complete(f"{s} ManagedVolume attach_volume connection_info:") == [
        "="
    ]
    assert complete(f"{s} ManagedVolume volumes_info v") == ["vol_ids:="]
    assert complete(f"{s} Host ping ") == []


def test_list_methods_says_where_it_came_from(agent: Agent) -> None:
    def listing(sock: str) -> list[str]:
        return subprocess.run(
            [CLIENT, "--socket", sock, "--list-methods"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.splitlines()

    live = listing(agent.socket)
    dead = listing(str(agent.tmp / "none.sock"))
    assert live[0] == "# from the agent"
    assert dead[0].startswith("# built in")
    assert live[1:] == dead[1:]
    assert len(live) - 1 == len(schema.METHODS)


def test_completion_without_agent_uses_built_in_schema(
    tmp_path: Path,
) -> None:
    s = f"hostagent-client --socket {tmp_path / 'none.sock'}"
    assert complete(f"{s} ManagedVolume de") == ["detach_volume"]
    assert complete(f"{s} ManagedVolume detach_volume ") == ["vol_id="]


def test_completion_of_options_and_files(tmp_path: Path) -> None:
    assert complete("hostagent-client --so") == ["--socket"]
    (tmp_path / "conn.json").write_text("{}")
    assert complete(f"hostagent-client -f {tmp_path}/co") == [
        f"{tmp_path}/conn.json"
    ]
    assert complete("hostagent-client -f ") != []


def test_completion_without_the_client_offers_nothing(tmp_path: Path) -> None:
    """No hostagent-client on PATH: no error, no candidates."""
    for tool in ("awk", "sort", "grep"):
        found = shutil.which(tool)
        assert found
        (tmp_path / tool).symlink_to(found)
    assert complete("hostagent-client ", env_path=str(tmp_path)) == []


# -- contrib/engine_client.py ------------------------------------------------


def engine(*args: str, stdin: str | None = None) -> Any:
    return subprocess.run(
        [sys.executable, str(CONTRIB / "engine_client.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


def test_engine_example_over_the_unix_socket(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    dev = loops.create()
    vid = new_vol_id()
    conn = tmp_path / "conn.json"
    conn.write_text(json.dumps(local_info(dev)))
    out = engine(
        "--socket",
        agent.socket,
        "--vol-id",
        vid,
        "--connection-info",
        str(conn),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    steps = out.stdout
    for text in (
        "agent ",
        "connector: host=",
        f"attach {vid} (local)",
        f"path {dev}",
        "state attached, exists True",
        f"detach {vid}",
        "detached",
    ):
        assert text in steps, steps
    assert agent.call("ManagedVolume.volumes_info") == []


def test_engine_example_reports_errors(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    dev = loops.create()
    vid = new_vol_id()
    # Not an allowed driver: 2009, exit 1, nothing attached.
    out = engine(
        "--socket",
        agent.socket,
        "--vol-id",
        vid,
        "--connection-info",
        "-",
        stdin=json.dumps({"driver_volume_type": "nope", "data": {}}),
    )
    assert out.returncode == 1
    assert "error 2009" in out.stderr
    # Attached by someone else with other info: 929, and left attached.
    agent.call(
        "ManagedVolume.attach_volume",
        {"vol_id": vid, "connection_info": local_info(dev)},
    )
    out = engine(
        "--socket",
        agent.socket,
        "--vol-id",
        vid,
        "--connection-info",
        "-",
        stdin=json.dumps(local_info(dev, extra="other")),
    )
    assert out.returncode == 1
    assert "error 929" in out.stderr
    assert "leaving it alone" in out.stdout
    [row] = agent.call("ManagedVolume.volumes_info")
    assert row["vol_id"] == vid and row["state"] == "attached"
    # No agent: exit 3.
    out = engine(
        "--socket",
        str(tmp_path / "none.sock"),
        "--vol-id",
        vid,
        "--connection-info",
        "-",
        stdin="{}",
    )
    assert out.returncode == 3
    assert "cannot talk to" in out.stderr
    # Bad usage: exit 2.
    out = engine("--host", "h", "--vol-id", vid, "--connection-info", "-")
    assert out.returncode == 2


def test_engine_example_keep(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    dev = loops.create()
    vid = new_vol_id()
    out = engine(
        "--socket",
        agent.socket,
        "--vol-id",
        vid,
        "--connection-info",
        "-",
        "--keep",
        stdin=json.dumps(local_info(dev)),
    )
    assert out.returncode == 0, out.stderr
    assert "kept attached" in out.stdout
    [row] = agent.call("ManagedVolume.volumes_info")
    assert row["vol_id"] == vid
    agent.call("ManagedVolume.detach_volume", {"vol_id": vid})


def test_engine_example_retries_while_the_volume_is_busy(
    agent_factory: Any, tmp_path: Path
) -> None:
    """927 from a short lock_timeout is retried until the holder is done.

    The first attach waits for a device that appears only when the test
    creates it; the engine's attach of the same volume meanwhile gets 927,
    backs off, and succeeds (same info: the existing attachment) later.
    """
    a: Agent = agent_factory()
    a.configure(storage={"lock_timeout": 0.2})
    a.start()
    device = tmp_path / "late-device"
    vid = new_vol_id()
    info = local_info(str(device))
    first: dict[str, Any] = {}

    def hold() -> None:
        first["result"] = a.call(
            "ManagedVolume.attach_volume",
            {"vol_id": vid, "connection_info": info},
        )

    holder = threading.Thread(target=hold)
    holder.start()
    deadline = time.monotonic() + 10
    while not a.call("ManagedVolume.volumes_info"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(CONTRIB / "engine_client.py"),
            "--socket",
            a.socket,
            "--vol-id",
            vid,
            "--connection-info",
            "-",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(info))
    proc.stdin.close()
    busy = ""
    while "busy" not in busy:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        busy += line
    device.write_bytes(b"\0" * 4096)
    holder.join(30)
    assert first["result"]["path"] == str(device)
    rest = proc.stdout.read()
    assert proc.wait(60) == 0, rest
    assert "state attached, exists True" in rest
    assert "detached" in rest
    assert a.call("ManagedVolume.volumes_info") == []
