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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    BIN,
    Agent,
    Loops,
    local_info,
    local_info_file,
    new_vol_id,
    run_client,
)
from pki import ENGINE, Creds, Pki, start_tls_agent
from support import ATTACH, DETACH, INFO, ROOT

from hostagent import cmdline, config, schema

CONTRIB = ROOT / "contrib"


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


def complete(
    line: str,
    env_path: str | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
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
    env = dict(env or os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
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
        "sd_id=",
        "backend=",
    ]
    # A param already given is not offered again.
    assert complete(f"{s} ManagedVolume attach_volume vol_id=x ") == [
        "connection_info:=",
        "sd_id=",
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
        out = run_client("--socket", sock, "--list-methods")
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

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
    assert complete(f"{s} ManagedVolume detach_volume ") == [
        "vol_id=",
        "sd_id=",
        "force:=",
    ]


def test_completion_of_options_and_files(tmp_path: Path) -> None:
    assert complete("hostagent-client --so") == ["--socket"]
    (tmp_path / "conn.json").write_text("{}")
    assert complete(f"hostagent-client -f {tmp_path}/co") == [
        f"{tmp_path}/conn.json"
    ]
    assert complete("hostagent-client -f ") != []


def test_completion_offers_every_option() -> None:
    """The script's option list is the client's: none missing, none extra."""
    parser = cmdline.client_parser()
    # argparse lists its options only in this attribute.
    options = {o for a in parser._actions for o in a.option_strings}
    assert "--list-methods" in options and "-a" in options
    assert set(complete("hostagent-client -")) == options
    assert complete("hostagent-client --j") == ["--json"]
    assert complete("hostagent-client --li") == ["--list-methods"]


def test_completion_after_short_options(agent: Agent) -> None:
    """-a/-p take a value (not a namespace); NS.METHOD gets its params."""
    s = f"hostagent-client --socket {agent.socket}"
    assert complete(f"{s} -p 54322 ") == ["Host", "ManagedVolume", "rpc"]
    assert complete(f"{s} ManagedVolume.detach_volume ") == [
        "vol_id=",
        "sd_id=",
        "force:=",
    ]
    env = dict(os.environ, HOSTAGENT_SOCKET=agent.socket)
    assert complete("hostagent-client ManagedVolume ", env=env) == [
        "attach_volume",
        "detach_volume",
        "extend_volume",
        "volumes_info",
    ]


def test_completion_without_the_client_offers_nothing(tmp_path: Path) -> None:
    """No hostagent-client on PATH: no error, no candidates."""
    for tool in ("awk", "sort", "grep"):
        found = shutil.which(tool)
        assert found
        (tmp_path / tool).symlink_to(found)
    assert complete("hostagent-client ", env_path=str(tmp_path)) == []


# -- contrib/install-deps.sh ----------------------------------------------


def deps(level: str) -> set[str]:
    """The Debian packages of ``install-deps.sh``'s set ``level``."""
    done = subprocess.run(
        [CONTRIB / "install-deps.sh", "--list", level],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return set(done.stdout.split())


def test_run_set_excludes_build_and_test_tools() -> None:
    """What make run installs on a hypervisor: no packaging, no tests."""
    run, test = deps("run"), deps("test")
    assert {"open-iscsi", "multipath-tools", "python3-venv"} <= run
    tools = {"rpm", "cpio", "aoetools", "socat", "openssl", "groff-base"}
    assert not run & tools, run & tools
    assert tools <= test
    assert run < test


# -- contrib/engine_client.py ------------------------------------------------

ENGINE_CLIENT = CONTRIB / "engine_client.py"


def engine_argv(
    where: Sequence[str], vid: str, *extra: str, conn: str = "-"
) -> list[str]:
    """The example's command line for ``vid``.

    ``where`` is ``--socket PATH`` or the TLS options; the connection
    info is read from the file ``conn`` (by default, stdin).
    """
    return [
        sys.executable,
        str(ENGINE_CLIENT),
        *where,
        *("--vol-id", vid, "--connection-info", conn),
        *extra,
    ]


def engine(
    where: Sequence[str], vid: str, info: Any, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Run the example to its end; ``info`` (JSON) is its stdin."""
    return subprocess.run(
        engine_argv(where, vid, *extra),
        capture_output=True,
        text=True,
        timeout=120,
        input=None if info is None else json.dumps(info),
    )


def full_run(vid: str, dev: str) -> tuple[str, ...]:
    """What the example prints for a whole attach, inspect, detach."""
    return (
        "agent ",
        "connector: host=",
        f"attach {vid} (local)",
        f"path {dev}",
        "state attached, exists True",
        f"detach {vid}",
        "detached",
    )


def test_engine_example_over_the_unix_socket(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    dev = loops.create()
    vid = new_vol_id()
    conn = local_info_file(tmp_path, dev)
    # The connection info from a file, as the usage text shows it.
    argv = engine_argv(["--socket", agent.socket], vid, conn=str(conn))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for text in full_run(vid, dev):
        assert text in out.stdout, out.stdout
    assert agent.call(INFO) == []


def tls_options(port: int, creds: Creds) -> list[str]:
    """The example's options for the agent's TLS listener on ``port``."""
    return [
        # The server certificate names localhost (and 127.0.0.1).
        *("--host", "localhost", "--port", str(port)),
        *("--cert", creds.cert, "--key", creds.key, "--ca", creds.ca),
    ]


def test_engine_example_over_tls(
    agent_factory: Any, pki: Pki, loops: Loops
) -> None:
    """What the example is for: a remote engine on the TLS listener."""
    tls = start_tls_agent(agent_factory, pki)
    dev = loops.create()
    vid = new_vol_id()
    out = engine(tls_options(tls.port, pki.client()), vid, local_info(dev))
    assert out.returncode == 0, out.stdout + out.stderr
    for text in full_run(vid, dev):
        assert text in out.stdout, out.stdout
    assert tls.agent.call(INFO) == []
    # Every change came over TLS, from the engine's certificate.
    mutating = [
        x for x in tls.agent.log().splitlines() if "volume by tls " in x
    ]
    assert len(mutating) == 2, mutating
    for line, method in zip(
        mutating, ("attach_volume", "detach_volume"), strict=True
    ):
        assert f"ManagedVolume.{method} by tls 127.0.0.1:" in line, line
        assert f"cn='{ENGINE}'" in line and vid in line, line


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("another CA", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
    ],
)
def test_engine_example_with_a_refused_certificate(
    agent_factory: Any, pki: Pki, loops: Loops, who: str, reason: str
) -> None:
    """The agent refuses the engine's certificate: exit 3, nothing done."""
    tls = start_tls_agent(agent_factory, pki)
    creds = {
        "another CA": pki.client(ENGINE, ca="other"),
        "expired": pki.client("expired"),
    }[who]
    dev = loops.create()
    vid = new_vol_id()
    out = engine(tls_options(tls.port, creds), vid, local_info(dev))
    assert out.returncode == 3, out.stdout + out.stderr
    (message,) = out.stderr.splitlines()
    assert message.startswith("engine_client: "), message
    assert f"localhost:{tls.port}" in message
    # Whether the refusal shows as a TLS alert or as the agent hanging
    # up depends on the TLS version; either way the operator is told.
    assert "TLS with" in message or "refused the client certificate" in (
        message
    )
    assert "attach" not in out.stdout
    assert reason in tls.agent.wait_log("TLS handshake with")
    assert "by tls" not in tls.agent.log()  # no request was ever run
    assert tls.agent.call(INFO) == []
    # The same engine with a good certificate gets through.
    good = engine(tls_options(tls.port, pki.client()), vid, local_info(dev))
    assert good.returncode == 0, good.stdout + good.stderr


def test_engine_example_reports_errors(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    dev = loops.create()
    vid = new_vol_id()
    local = ["--socket", agent.socket]
    # Not an allowed driver: 2009, exit 1, nothing attached.
    out = engine(local, vid, {"driver_volume_type": "nope", "data": {}})
    assert out.returncode == 1
    assert "error 2009" in out.stderr
    # Attached by someone else with other info: 929, and left attached.
    agent.call(
        ATTACH,
        {"vol_id": vid, "connection_info": local_info(dev)},
    )
    out = engine(local, vid, local_info(dev, extra="other"))
    assert out.returncode == 1
    assert "error 929" in out.stderr
    assert "leaving it alone" in out.stdout
    [row] = agent.call(INFO)
    assert row["vol_id"] == vid and row["state"] == "attached"
    # No agent: exit 3.
    out = engine(["--socket", str(tmp_path / "none.sock")], vid, {})
    assert out.returncode == 3
    assert "cannot talk to" in out.stderr
    # Bad usage: exit 2.
    out = engine(["--host", "h"], vid, None)
    assert out.returncode == 2
    assert "--host needs --cert, --key and --ca" in out.stderr


def test_engine_example_keep(agent: Agent, loops: Loops) -> None:
    dev = loops.create()
    vid = new_vol_id()
    out = engine(["--socket", agent.socket], vid, local_info(dev), "--keep")
    assert out.returncode == 0, out.stderr
    assert "kept attached" in out.stdout
    [row] = agent.call(INFO)
    assert row["vol_id"] == vid
    agent.call(DETACH, {"vol_id": vid})


def test_engine_example_retries_while_the_volume_is_busy(
    agent_factory: Any, tmp_path: Path, loops: Loops
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
            ATTACH,
            {"vol_id": vid, "connection_info": info},
        )

    holder = threading.Thread(target=hold)
    holder.start()
    deadline = time.monotonic() + 10
    while not a.call(INFO):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc = subprocess.Popen(
        engine_argv(["--socket", a.socket], vid),
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
    # A path that names a free block device once it appears (the local
    # guard refuses a regular file).
    device.symlink_to(loops.create())
    holder.join(30)
    assert first["result"]["path"] == str(device)
    rest = proc.stdout.read()
    assert proc.wait(60) == 0, rest
    assert "state attached, exists True" in rest
    assert "detached" in rest
    assert a.call(INFO) == []
