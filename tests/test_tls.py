"""The TLS listener: client certificates, subjects, bad files, openssl."""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import HOSTAGENTD, Agent, new_vol_id, run_client
from pki import (
    ENGINE,
    Pki,
    TlsAgent,
    free_port,
    start_tls_agent,
    tls_client,
    tls_server_config,
)
from support import DETACH, INFO

from hostagent.client import Client, RpcError


@pytest.fixture
def tls(agent_factory: Any, pki: Pki) -> TlsAgent:
    """A started agent listening on TLS (any subject from the CA)."""
    return start_tls_agent(agent_factory, pki)


def test_good_client_certificate(tls: TlsAgent) -> None:
    with tls.client() as c:
        assert c.call("Host.ping") is True
        assert c.call(INFO) == []
        sock = c.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")


def test_mutating_call_logs_the_tls_peer(tls: TlsAgent) -> None:
    vid = new_vol_id()
    with tls.client() as c:
        assert c.call(DETACH, [vid]) is True
        local_port = c.sock.getsockname()[1]
    line = next(
        x for x in tls.agent.log().splitlines() if "detach_volume by" in x
    )
    assert f"tls 127.0.0.1:{local_port} cn='{ENGINE}'" in line
    assert vid in line


def test_cli_over_tls(tls: TlsAgent) -> None:
    creds = tls.pki.client()
    base = [
        # The server certificate has DNS:localhost.
        *("--host", "localhost", "--port", str(tls.port)),
        *("--cert", creds.cert, "--key", creds.key, "--ca", creds.ca),
    ]
    out = run_client(*base, "Host", "ping")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is True
    out = run_client(
        *base, "ManagedVolume", "volumes_info", 'vol_ids:=["../x"]'
    )
    assert out.returncode == 1
    assert "error -32602: vol_ids[0] must be a UUID" in out.stderr
    vid = new_vol_id()
    out = run_client(
        *base, "ManagedVolume", "volumes_info", f'vol_ids:=["{vid}"]'
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_cli_without_client_certificate_explains(tls: TlsAgent) -> None:
    out = run_client(
        *("--host", "127.0.0.1", "--port", str(tls.port), "--ca", tls.ca),
        *("Host", "ping"),
    )
    assert out.returncode == 2
    assert "--cert" in out.stderr and "--key" in out.stderr


def test_openssl_s_client_typing_a_json_line(tls: TlsAgent) -> None:
    creds = tls.pki.client()
    proc = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-connect",
            f"127.0.0.1:{tls.port}",
            "-cert",
            creds.cert,
            "-key",
            creds.key,
            "-CAfile",
            creds.ca,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b'{"jsonrpc":"2.0","id":7,"method":"Host.ping"}\n')
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no answer from the agent through openssl s_client"
        answer = proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait(10)
    assert json.loads(answer) == {"jsonrpc": "2.0", "result": True, "id": 7}


def _refused(tls: TlsAgent, creds: Any) -> Exception:
    """Connect and call; the TLS layer must refuse.  Returns the error."""
    # With TLS 1.3 the client finishes its half of the handshake before
    # the server checks its certificate, so the refusal may surface at
    # the first read rather than at connect.
    with (
        pytest.raises((ssl.SSLError, ConnectionError, OSError)) as e,
        tls_client(tls.port, creds, tls.ca, timeout=10) as c,
    ):
        c.call("Host.ping")
    return e.value


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("no certificate", "peer did not return a certificate"),
        ("another CA", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
    ],
)
def test_bad_client_certificate_is_refused_in_the_handshake(
    tls: TlsAgent, who: str, reason: str
) -> None:
    creds = {
        "no certificate": None,
        "another CA": tls.pki.client(ENGINE, ca="other"),
        "expired": tls.pki.client("expired"),
    }[who]
    pings = tls.agent.log().count("Host.ping done")
    _refused(tls, creds)
    line = tls.agent.wait_log("TLS handshake with")
    assert "WARNING" in line
    assert reason in line
    assert tls.agent.log().count("Host.ping done") == pings  # never read
    with tls.client() as c:
        assert c.call("Host.ping") is True


def test_tls_1_1_is_refused(tls: TlsAgent) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(tls.ca)
    creds = tls.pki.client()
    ctx.load_cert_chain(creds.cert, creds.key)
    # OpenSSL 3 disables TLS 1.1 at the default security level; level 0
    # lets this client offer it, so the server is what refuses.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        socket.create_connection(("127.0.0.1", tls.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        ctx.wrap_socket(raw, server_hostname="localhost")
    assert "unsupported protocol" in tls.agent.wait_log("TLS handshake with")


def test_subject_not_allowed(agent_factory: Any, pki: Pki) -> None:
    tls = start_tls_agent(
        agent_factory, pki, tls_allowed_subjects=["other-engine", ENGINE]
    )
    with tls.client() as c:
        assert c.call("Host.ping") is True
    # Every ping run leaves "Host.ping done" (debug) before its answer.
    pings = tls.agent.log().count("Host.ping done")
    assert pings >= 1
    with tls.client("intruder") as c, pytest.raises(RpcError) as e:
        c.call("Host.ping")
    assert e.value.code == -32600
    assert "'intruder' is not allowed" in e.value.message
    assert "tls_allowed_subjects" in e.value.message
    log = tls.agent.log()
    assert "subject CN 'intruder' is not in server.tls_allowed_subjects" in log
    assert log.count("Host.ping done") == pings  # the ping was never run


def test_listen_on_every_address(agent_factory: Any, pki: Pki) -> None:
    """``*:PORT``: the IPv4 and the IPv6 wildcard, side by side."""
    agent: Agent = agent_factory()
    port = free_port()
    agent.configure(
        server=tls_server_config(pki, port, tls_listen=f"*:{port}")
    )
    agent.start()
    creds = pki.client()
    for host in ("127.0.0.1", "::1"):
        with Client(
            host=host, port=port, cert=creds.cert, key=creds.key, ca=creds.ca
        ) as c:
            assert c.call("Host.ping") is True
    assert f"listening on tls:*:{port}" in agent.log()


def test_any_subject_from_the_ca_when_no_list(tls: TlsAgent) -> None:
    with tls.client("intruder") as c:
        assert c.call("Host.ping") is True


def test_message_over_the_limit_over_tls(tls: TlsAgent) -> None:
    with tls.client() as other, tls.client() as c:
        big = b'{"jsonrpc":"2.0","id":1,"method":"Host.ping","params":["'
        c.send_raw(big + b"x" * (1024 * 1024 + 10) + b'"]}\n')
        response = c.recv()
        assert response["error"]["code"] == -32600
        assert "max_message_bytes" in response["error"]["message"]
        with pytest.raises((ConnectionError, ssl.SSLError)):
            c.recv()
        assert other.call("Host.ping") is True


def test_stalled_handshake_times_out(agent_factory: Any, pki: Pki) -> None:
    """A TCP client that never starts TLS is dropped after
    handshake_timeout (before its own key, read_timeout bounded it)."""
    tls = start_tls_agent(agent_factory, pki, handshake_timeout=1.0)
    with socket.create_connection(("127.0.0.1", tls.port), timeout=20) as s:
        with tls.client() as c:
            assert c.call("Host.ping") is True
        assert s.recv(100) == b""  # closed by the agent, not our timeout
    tls.agent.wait_log("no handshake within server.handshake_timeout")


@pytest.mark.parametrize(
    ("breakage", "key"),
    [
        ("missing cert", "server.tls_cert"),
        ("missing key", "server.tls_key"),
        ("missing ca", "server.tls_ca"),
        ("cert is not PEM", "server.tls_cert"),
        ("key is not PEM", "server.tls_key"),
        ("key of another cert", "server.tls_key"),
        ("encrypted key", "server.tls_key"),
        ("ca is not a CA", "server.tls_ca"),
    ],
)
def test_bad_tls_files_stop_start_up_naming_the_key(
    agent_factory: Any, pki: Pki, tmp_path: Path, breakage: str, key: str
) -> None:
    srv = pki.server()
    files = {"tls_cert": srv.cert, "tls_key": srv.key, "tls_ca": srv.ca}
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    if breakage.startswith("missing"):
        name = {"cert": "tls_cert", "key": "tls_key", "ca": "tls_ca"}[
            breakage.split()[1]
        ]
        files[name] = str(tmp_path / "nonexistent.pem")
    elif breakage == "cert is not PEM":
        files["tls_cert"] = str(junk)
    elif breakage == "key is not PEM":
        files["tls_key"] = str(junk)
    elif breakage == "key of another cert":
        files["tls_key"] = pki.client().key
    elif breakage == "encrypted key":
        enc = tmp_path / "enc.pem"
        subprocess.run(
            [
                *("openssl", "pkey", "-in", srv.key, "-aes256"),
                *("-passout", "pass:secret", "-out", str(enc)),
            ],
            check=True,
            capture_output=True,
        )
        files["tls_key"] = str(enc)
    elif breakage == "ca is not a CA":
        files["tls_ca"] = srv.cert
    agent: Agent = agent_factory()
    agent.configure(server={"tls_listen": "127.0.0.1:1", **files})
    check = subprocess.run(
        [HOSTAGENTD, "--config", str(agent.config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 2
    assert key in check.stderr
    if breakage not in ("missing key", "key of another cert"):
        return  # the daemon runs the same check; two starts show it
    agent.start(wait=False)
    assert agent.proc is not None
    assert agent.proc.wait(30) == 1
    assert f"cannot start: {key}" in agent.log()
    assert not os.path.exists(agent.socket)  # no stale socket left behind


def test_tls_port_in_use_is_a_clear_start_up_error(
    agent_factory: Any, pki: Pki
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        agent: Agent = agent_factory()
        agent.configure(server=tls_server_config(pki, port))
        agent.start(wait=False)
        assert agent.proc is not None
        assert agent.proc.wait(30) == 1
    assert f"server.tls_listen: cannot listen on 127.0.0.1:{port}" in (
        agent.log()
    )
