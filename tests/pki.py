"""TLS test material: certificates made at test time by make-certs.sh,
and an agent with its TLS listener on 127.0.0.1 (:func:`start_tls_agent`).
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import Agent
from support import ROOT

from hostagent.client import Client

MAKE_CERTS = ROOT / "contrib" / "make-certs.sh"
ENGINE = "hostagent-engine"


@dataclass(frozen=True)
class Creds:
    """A certificate, its key and the CA file to trust."""

    cert: str
    key: str
    ca: str


def make_certs(out: Path, *args: str) -> None:
    """Run ``contrib/make-certs.sh -o out ARGS``."""
    subprocess.run(
        ["sh", str(MAKE_CERTS), "-o", str(out), *args],
        check=True,
        capture_output=True,
        timeout=60,
    )


class Pki:
    """Two CAs; the main one has a server and several client certificates.

    * ``client()``: good, CN ``hostagent-engine``;
    * ``client("intruder")``: good chain, another CN;
    * ``client("expired")``: good chain, expired yesterday;
    * ``client(ca="other")``: CN ``hostagent-engine`` from another CA.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        main = root / "main"
        make_certs(main, "localhost", "127.0.0.1", "::1")
        make_certs(main, "-c", "intruder", "localhost")
        make_certs(main, "-c", "expired", "-d", "-1", "localhost")
        make_certs(root / "other", "localhost", "127.0.0.1")

    def server(self) -> Creds:
        """The agent's certificate for ``localhost``/127.0.0.1/::1."""
        d = self.root / "main" / "server" / "localhost"
        return Creds(
            str(d / "cert.pem"), str(d / "key.pem"), str(d / "ca.pem")
        )

    def client(self, cn: str = ENGINE, ca: str = "main") -> Creds:
        """A client certificate; ``ca`` is always the main CA's file."""
        d = self.root / ca / "client" / cn
        return Creds(
            str(d / "cert.pem"),
            str(d / "key.pem"),
            str(self.root / "main" / "ca.pem"),
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tls_server_config(pki: Pki, port: int, **extra: Any) -> dict[str, Any]:
    """``[server]`` keys for a TLS listener on 127.0.0.1:port."""
    srv = pki.server()
    return {
        "tls_listen": f"127.0.0.1:{port}",
        "tls_cert": srv.cert,
        "tls_key": srv.key,
        "tls_ca": srv.ca,
        **extra,
    }


def tls_client(
    port: int, creds: Creds | None, ca: str, timeout: float = 30
) -> Client:
    """A :class:`Client` over TLS (``creds=None``: no client certificate)."""
    return Client(
        host="127.0.0.1",
        port=port,
        cert=creds.cert if creds else None,
        key=creds.key if creds else None,
        ca=ca,
        timeout=timeout,
    )


class TlsAgent:
    """An :class:`Agent` with a TLS listener on 127.0.0.1:port."""

    def __init__(self, agent: Agent, port: int, pki: Pki) -> None:
        self.agent = agent
        self.port = port
        self.pki = pki

    def client(self, cn: str = ENGINE, ca: str = "main") -> Any:
        """A TLS connection with the client certificate ``cn``."""
        return tls_client(self.port, self.pki.client(cn, ca), self.ca)

    @property
    def ca(self) -> str:
        """The CA that signed the agent's certificate."""
        return self.pki.server().ca

    def assert_subject_cap(self, cap: int) -> None:
        """With ``cap`` connections of ENGINE's subject open: a next one
        is refused (-32600, naming the setting), another subject's is
        served."""
        with self.client() as third:
            refusal = third.recv()
            assert refusal["error"]["code"] == -32600
            assert (
                f"max_connections_per_subject={cap}"
                in refusal["error"]["message"]
            )
        with self.client("intruder") as other:  # another CN
            assert other.call("Host.ping") is True


def start_tls_agent(
    agent_factory: Any, pki: Pki, log_level: str = "debug", **server: Any
) -> TlsAgent:
    """Start an agent with TLS; retry if another test took the port."""
    agent: Agent = agent_factory()
    for _ in range(5):
        port = free_port()
        agent.configure(
            server=tls_server_config(pki, port, **server),
            log={"level": log_level},
        )
        agent.start(wait=False)
        try:
            agent.wait_ready()
        except AssertionError:
            if "Address already in use" not in agent.log():
                raise
            continue
        return TlsAgent(agent, port, pki)
    raise AssertionError("no free port for the TLS listener")
