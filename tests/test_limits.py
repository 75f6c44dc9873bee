"""Connection limits and timeouts, the Unix socket's access rules."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import resource
import select
import signal
import socket
import ssl
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Agent, Loops, load_config, local_info, need, new_vol_id
from pki import Pki, start_tls_agent
from support import ATTACH, DETACH, INFO, PING, line, notification, req

from hostagent import config
from hostagent.client import Client


def test_max_connections_is_enforced_and_slots_come_back(
    agent_factory: Any,
) -> None:
    agent: Agent = agent_factory()
    agent.configure(server={"max_connections": 20})
    agent.start()
    clients: list[Client] = []
    try:
        for _ in range(20):
            clients.append(_accepted(agent))
        with agent.client(timeout=10) as extra:
            refusal = extra.recv()
            assert refusal["error"]["code"] == -32600
            assert "max_connections=20" in refusal["error"]["message"]
            with pytest.raises(ConnectionError):
                extra.recv()
        for c in clients:  # the refusal broke nothing
            assert c.call("Host.ping") is True
        clients.pop().close()
        _accepted(agent).close()
    finally:
        for c in clients:
            c.close()
    assert "refusing a connection: 20 open" in agent.log()


def _accepted(agent: Agent) -> Client:
    """A connection that answered a ping.

    A slot freed by a closed connection comes back once the agent has
    seen the EOF, a moment later: retry a refusal for a while.
    """
    deadline = time.monotonic() + 10
    while True:
        c = agent.client(timeout=10)
        try:
            if c.request("Host.ping").get("result") is True:
                return c
        except OSError:
            pass
        c.close()
        assert time.monotonic() < deadline, "no connection slot came back"
        time.sleep(0.05)


def _accept_queue(port: int) -> int:
    """Connections waiting in the listen backlog of 127.0.0.1:PORT.

    For a listening socket, /proc/net/tcp's rx_queue is the number of
    connections the kernel completed that the process has not accepted.
    """
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        for row in f.readlines()[1:]:
            fields = row.split()
            if fields[1] == local and fields[3] == "0A":  # LISTEN
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def _wait_for(what: str, ok: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def test_tcp_peers_in_their_handshake_never_lock_out_local_clients(
    agent_factory: Any, pki: Pki
) -> None:
    """13 TCP connections that never start TLS, against max_connections=4
    and max_handshakes=3: the agent accepts them all (silent peers hold
    no handshake slot), and local clients (and an engine already
    connected) are served as if nothing happened."""
    tls = start_tls_agent(
        agent_factory, pki, max_connections=4, max_handshakes=3
    )
    engine = tls.client()
    raw: list[socket.socket] = []
    local: list[Client] = []
    try:
        assert engine.call("Host.ping") is True
        for _ in range(13):
            raw.append(
                socket.create_connection(("127.0.0.1", tls.port), timeout=10)
            )
        _wait_for(
            "the agent takes connections into their handshake",
            lambda: _accept_queue(tls.port) <= 10,
        )
        for _ in range(3):
            local.append(tls.agent.client(timeout=10))
            assert local[-1].call("Host.ping") is True
        assert engine.call(INFO) == []
        # Engine + 3 local clients: max_connections counts those.
        with tls.agent.client(timeout=10) as extra:
            refusal = extra.recv()
        assert refusal["error"]["code"] == -32600
        assert "max_connections=4" in refusal["error"]["message"]
        # No gate left any of them in the backlog.  (Until the split
        # of handshake_timeout, max_handshakes was a global gate of 3
        # and 10 waited here.)
        assert _accept_queue(tls.port) == 0
    finally:
        for c in (engine, *local):
            c.close()
        for s in raw:
            s.close()
    # The peers gave up: their handshakes end, and a new engine gets in
    # (once the agent saw the EOFs of the clients above: nothing waits
    # in the backlog any more for them to be counted out).
    _engine_gets_in(tls)
    assert _accept_queue(tls.port) == 0
    # Each went: its handshake failed at the EOF, or (accepted before
    # the agent saw the other clients leave) it was refused before one.
    log = tls.agent.log()
    ended = log.count("TLS handshake with 127.0.0.1:")
    assert ended + log.count("before its TLS handshake") >= 13


def test_tcp_connection_beyond_max_connections_gets_no_handshake(
    agent_factory: Any, pki: Pki
) -> None:
    tls = start_tls_agent(agent_factory, pki, max_connections=2)
    local = [_accepted(tls.agent) for _ in range(2)]
    try:
        for c in local:
            assert c.call("Host.ping") is True
        # Closed at once, before a byte of TLS: recv does not wait for
        # its timeout (that would raise).
        with (
            socket.create_connection(("127.0.0.1", tls.port), timeout=20) as s,
            contextlib.suppress(ConnectionResetError),
        ):
            assert s.recv(100) == b""
        line = tls.agent.wait_log("before its TLS handshake")
        assert "refusing a connection from 127.0.0.1:" in line
        assert "2 open, max_connections=2" in line
        with (
            pytest.raises((ssl.SSLError, ConnectionError, OSError)),
            tls.client() as c,
        ):
            c.call("Host.ping")
        log = tls.agent.log()
        assert log.count("before its TLS handshake") == 2
        assert "TLS handshake with" not in log  # none was attempted
        assert "TLS connection from" not in log
    finally:
        local.pop().close()
    # A slot came back (once the agent saw the EOF): engines get in.
    _engine_gets_in(tls)
    for c in local:
        c.close()


def _engine_gets_in(tls: Any) -> None:
    """An engine's ping answers, once a slot freed by a closed
    connection came back (the agent saw its EOF a moment later)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with tls.client() as c:
                assert c.call("Host.ping") is True
            return
        except (ssl.SSLError, OSError):
            assert time.monotonic() < deadline, "the slot never came back"
            time.sleep(0.05)


@pytest.mark.parametrize("value", ["0", "-1", "'8'", "true"])
def test_max_handshakes_must_be_a_positive_integer(
    tmp_path: Any, value: str
) -> None:
    with pytest.raises(config.ConfigError, match=r"server\.max_handshakes"):
        load_config(tmp_path, f"[server]\nmax_handshakes = {value}\n")


def test_slow_loris_times_out_and_blocks_nobody(agent_factory: Any) -> None:
    agent: Agent = agent_factory()
    agent.configure(server={"read_timeout": 1.0, "idle_timeout": 60.0})
    agent.start()
    with socket.socket(socket.AF_UNIX) as loris:
        loris.settimeout(30)
        loris.connect(agent.socket)
        loris.sendall(PING[:20])  # half a line, then nothing
        started = time.monotonic()
        with agent.client() as other:
            while time.monotonic() - started < 0.8:
                assert other.call("Host.ping") is True
        data = b""
        while chunk := loris.recv(4096):
            data += chunk
    (answer,) = [json.loads(x) for x in data.splitlines()]
    assert answer["id"] is None
    assert answer["error"]["code"] == -32600
    assert (
        "did not arrive within 1 s (read_timeout)"
        in (answer["error"]["message"])
    )
    assert "20 bytes of a request and no newline" in agent.wait_log(
        "server.read_timeout"
    )


def test_idle_connection_is_closed(agent_factory: Any) -> None:
    agent: Agent = agent_factory()
    agent.configure(server={"idle_timeout": 1.0})
    agent.start()
    with agent.client(timeout=30) as c:
        assert c.call("Host.ping") is True
        # A connection that keeps talking is never idle.
        for _ in range(6):
            time.sleep(0.3)
            assert c.call("Host.ping") is True
        with pytest.raises(ConnectionError):
            c.recv()  # nothing sent for a second: the agent hangs up
    agent.wait_log("closing idle connection")


def test_subscribed_connection_is_not_idle(agent_factory: Any) -> None:
    agent: Agent = agent_factory()
    agent.configure(server={"idle_timeout": 1.0})
    agent.start()
    with agent.client(timeout=30) as listener, agent.client() as other:
        assert listener.call("Host.subscribe") is True
        assert other.call("Host.ping") is True
        time.sleep(2.5)  # well past idle_timeout without a word
        assert listener.call("Host.ping") is True
        assert listener.call("Host.unsubscribe") is True
        with pytest.raises(ConnectionError):
            listener.recv()  # now it is an idle connection like any other
        with pytest.raises(ConnectionError):
            other.recv()


def test_idle_timeout_zero_keeps_connections(agent_factory: Any) -> None:
    agent: Agent = agent_factory()
    agent.configure(server={"idle_timeout": 0.0, "read_timeout": 0.5})
    agent.start()
    with agent.client(timeout=30) as c:
        assert c.call("Host.ping") is True
        time.sleep(1.5)
        assert c.call("Host.ping") is True


CAPS = b'{"jsonrpc":"2.0","id":"%s","method":"Host.getCapabilities"}\n'


def _order(agent: Agent) -> list[Any]:
    """Pipeline two slow calls and a ping; the ids in answer order."""
    with agent.client() as c:
        c.send_raw(
            CAPS % b"caps1"
            + CAPS % b"caps2"
            + PING.replace(b'"id":1', b'"id":"ping"')
        )
        return [c.recv()["id"] for _ in range(3)]


def test_requests_in_flight_are_capped_per_connection(
    agent_factory: Any,
) -> None:
    """With max_in_flight=1 the agent reads nothing while caps1 runs.

    (A ping is answered inline, without a slot; getCapabilities runs
    os-brick's tools, far slower than a ping, in a slot of its own.)
    """
    capped: Agent = agent_factory("capped")
    capped.configure(server={"max_in_flight": 1})
    capped.start()
    free: Agent = agent_factory("free")
    free.configure(server={"max_in_flight": 2})
    free.start()
    # caps2 waits for caps1's slot; the ping behind it is not even read.
    assert _order(capped) == ["caps1", "ping", "caps2"]
    assert _order(free)[0] == "ping"
    # The cap is per connection: another client is not held up.
    with capped.client() as c, capped.client() as other:
        c.send_raw(CAPS % b"caps1")
        assert other.call("Host.getCapabilities")["version"]
        assert c.recv()["id"] == "caps1"


def test_client_that_does_not_read_is_dropped(agent_factory: Any) -> None:
    agent: Agent = agent_factory()
    agent.configure(server={"read_timeout": 1.0, "max_in_flight": 4})
    agent.start()
    discover = b'{"jsonrpc":"2.0","id":1,"method":"rpc.discover"}\n'
    with socket.socket(socket.AF_UNIX) as hog:
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.connect(agent.socket)
        hog.settimeout(30)
        sent = 0
        with contextlib.suppress(OSError):
            # Far more answers than the socket buffers hold; never read.
            while sent < 20000:
                hog.sendall(discover)
                sent += 1
        agent.wait_log("did not take a response", timeout=30)
        assert agent.call("Host.ping") is True
    assert sent < 20000  # the agent stopped reading, then hung up


def test_shutdown_with_clients_connected_is_clean(agent: Agent) -> None:
    idle = agent.client()
    busy = agent.client()
    half = agent.client()
    try:
        assert idle.call("Host.ping") is True
        busy.send_raw(PING * 50)
        half.send_raw(PING[:10])
        assert agent.stop() == 0
    finally:
        for c in (idle, busy, half):
            c.close()
    log = agent.log()
    assert "Traceback" not in log
    assert " ERROR " not in log
    assert "stopped" in log


def _shutting_down(answer: Any, rid: Any) -> bool:
    return bool(
        answer["id"] == rid
        and answer["error"]["code"] == -32000
        and "shutting down" in answer["error"]["message"]
        and "not run" in answer["error"]["message"]
    )


def test_requests_arriving_during_shutdown_get_an_answer(
    agent_factory: Any, loops: Loops
) -> None:
    """SIGTERM while an attach runs: it finishes; a request read before
    the signal runs; lines that arrive (or were not read) after it are
    answered -32000 without running; then the agent closes and exits 0."""
    agent: Agent = agent_factory(
        env={"HOSTAGENT_FAILPOINTS": "attach.before_connect=sleep:5"}
    )
    agent.configure(server={"max_in_flight": 1})
    agent.start()
    dev, vid = loops.create(), new_vol_id()
    busy, idle = agent.client(timeout=30), agent.client(timeout=30)
    try:
        assert idle.call("Host.ping") is True
        attach = req(
            ATTACH,
            "attach",
            {"vol_id": vid, "connection_info": local_info(dev)},
        )
        # With max_in_flight=1, "info" is read (and waits for the slot)
        # while the attach runs; "caps" is not read yet.
        busy.send_raw(
            line(
                attach,
                req(INFO, "info"),
                req("Host.getCapabilities", "caps"),
            )
        )
        agent.wait_log("attach_volume by")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)
        agent.wait_log("shutting down; 1 request(s) in flight")
        idle.send_raw(line(req("Host.ping", "p1")))
        assert _shutting_down(idle.recv(), "p1")
        batch = [
            req("Host.ping", "b1"),
            notification("Host.ping"),
            req(DETACH, "b2", [vid]),
        ]
        idle.send_raw(line(batch))
        b1, b2 = idle.recv()
        assert _shutting_down(b1, "b1") and _shutting_down(b2, "b2")
        # A notification gets nothing: the next answer is the ping's.
        idle.send_raw(line(notification("Host.ping")))
        idle.send_raw(line(req("Host.ping", "p2")))
        assert _shutting_down(idle.recv(), "p2")
        idle.send_raw(b"{not json\n")
        assert idle.recv()["error"]["code"] == -32700
        # The attach in flight was never in doubt.
        answer = busy.recv()
        assert answer["id"] == "attach"
        assert answer["result"]["vol_id"] == vid
        rest = {a["id"]: a for a in (busy.recv(), busy.recv())}
        assert [v["vol_id"] for v in rest["info"]["result"]] == [vid]
        assert _shutting_down(rest["caps"], "caps")
        # Then the agent closes every connection.
        with pytest.raises(ConnectionError):
            busy.recv()
        with pytest.raises(ConnectionError):
            idle.recv()
    finally:
        busy.close()
        idle.close()
    # (stop() would signal again if the daemon is still exiting.)
    assert agent.proc.wait(30) == 0
    log = agent.log()
    assert "detach_volume by" not in log  # the batch did not run
    assert "Traceback" not in log
    assert " ERROR " not in log


def test_daemon_raises_its_open_file_limit(agent_factory: Any) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.fail(
            f"the hard open-file limit ({hard}) leaves nothing to raise"
        )
    agent: Agent = agent_factory()
    # The daemon inherits the usual default soft limit from us.
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        agent.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert agent.proc is not None
    with open(f"/proc/{agent.proc.pid}/limits") as f:
        limits = f.read()
    line = next(x for x in limits.splitlines() if "open files" in x)
    soft, hard = line.split()[3:5]
    assert soft == hard


# -- the Unix socket: group access and peer credentials ---------------------

NOBODY = 65534


@pytest.fixture
def test_group() -> Iterator[tuple[str, int]]:
    """A group made for this test (groupadd), removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("socket group tests need root")
    need("groupadd")
    name = "ha-" + uuid.uuid4().hex[:12]
    subprocess.run(["groupadd", name], check=True)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=False)


def _socat_as(
    agent: Agent, gid: int, extra_groups: list[int], data: bytes
) -> subprocess.CompletedProcess[bytes]:
    """Talk to the socket as user nobody with the given groups."""
    return subprocess.run(
        ["socat", "-t", "5", "-", f"UNIX-CONNECT:{agent.socket}"],
        input=data,
        capture_output=True,
        timeout=30,
        user=NOBODY,
        group=gid,
        extra_groups=extra_groups,
    )


def group_agent(agent_factory: Any, group: str) -> Agent:
    """A started agent whose socket belongs to ``group``; socat needed."""
    need("socat")
    agent: Agent = agent_factory()
    agent.configure(server={"socket_group": group})
    os.chmod(agent.sock_dir, 0o755)  # let nobody reach the socket file
    agent.start()
    return agent


def test_socket_group_members_may_connect_others_may_not(
    agent_factory: Any, test_group: tuple[str, int]
) -> None:
    name, gid = test_group
    agent = group_agent(agent_factory, name)
    st = os.stat(agent.socket)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == gid
    assert st.st_uid == 0
    member = _socat_as(agent, NOBODY, [gid], PING)
    assert member.returncode == 0, member.stderr
    assert json.loads(member.stdout)["result"] is True
    outsider = _socat_as(agent, NOBODY, [], PING)
    assert outsider.returncode != 0
    assert b"Permission denied" in outsider.stderr
    assert outsider.stdout == b""


def test_unknown_socket_group_stops_start_up(agent_factory: Any) -> None:
    agent: Agent = agent_factory()
    group = "ha-no-such-" + uuid.uuid4().hex[:8]
    agent.configure(server={"socket_group": group})
    agent.start(wait=False)
    assert agent.proc is not None
    assert agent.proc.wait(30) == 1
    assert f"server.socket_group: no such group '{group}'" in agent.log()


def test_peer_uid_and_pid_are_logged_with_mutating_calls(
    agent_factory: Any, test_group: tuple[str, int]
) -> None:
    name, gid = test_group
    agent = group_agent(agent_factory, name)
    mine, theirs = new_vol_id(), new_vol_id()
    with Client(agent.socket) as c:
        c.call(DETACH, [mine])
        c.call(INFO)  # not mutating: not logged
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": DETACH,
        "params": [theirs],
    }
    out = _socat_as(agent, NOBODY, [gid], json.dumps(request).encode() + b"\n")
    assert json.loads(out.stdout)["result"] is True
    log = agent.log()
    (line,) = [x for x in log.splitlines() if mine in x and " by " in x]
    assert f"detach_volume by unix uid=0 pid={os.getpid()}" in line
    (line,) = [x for x in log.splitlines() if theirs in x and " by " in x]
    assert f"detach_volume by unix uid={NOBODY} pid=" in line
    assert "volumes_info by" not in log


# -- fairness: one client can only exhaust its own share --------------------

# The first bytes of a TLS ClientHello record announcing 512 bytes that
# never come: a peer that began its handshake and stalls.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def _closed_by_agent(s: socket.socket) -> bool:
    """Whether the agent closed ``s`` (before our own timeout)."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_idle_tcp_peers_never_delay_an_engines_handshake(
    agent_factory: Any, pki: Pki
) -> None:
    """80 unauthenticated TCP peers from another address hold
    connections open (half silent, half stalled inside a ClientHello);
    the engine's TLS ping still answers within 2 s, and the peers are
    dropped after handshake_timeout, not read_timeout."""
    tls = start_tls_agent(
        agent_factory, pki, handshake_timeout=2.0, read_timeout=60.0
    )
    peers: list[socket.socket] = []
    try:
        for i in range(80):
            s = socket.socket()
            s.settimeout(30)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", tls.port))
            if i % 2:
                s.sendall(PARTIAL_HELLO)
            peers.append(s)
        _wait_for(
            "the agent accepts every peer",
            lambda: _accept_queue(tls.port) == 0,
        )
        started = time.monotonic()
        with tls.client() as engine:
            assert engine.call("Host.ping") is True
        took = time.monotonic() - started
        assert took < 2.0, f"the engine waited {took:.1f} s"
        # Silent or stalled, each is closed by the agent well before
        # read_timeout (60 s) and our own 30 s.
        started = time.monotonic()
        assert all(_closed_by_agent(s) for s in peers)
        assert time.monotonic() - started < 30
    finally:
        for s in peers:
            s.close()
    log = tls.agent.log()
    assert log.count("no handshake within server.handshake_timeout") == 80
    with tls.client() as engine:
        assert engine.call("Host.ping") is True


# Run as user nobody: open N connections to the socket, then (once told
# on stdin) count those the agent kept (no refusal waiting in them).
HOG = """
import resource, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    socks.append(s)
print("open", flush=True)
sys.stdin.readline()
held = 0
for s in socks:
    s.setblocking(False)
    try:
        s.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        held += 1
print(held, flush=True)
sys.stdin.readline()
"""


def _python_for_nobody() -> str:
    """A Python user nobody can run (ours may live under /root)."""
    for path in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(path, os.X_OK):
            return path
    pytest.fail("no system python3 for user nobody")


def _hog(agent: Agent, gid: int, n: int) -> subprocess.Popen[str]:
    """User nobody (in group ``gid``) with ``n`` connections open."""
    hog = subprocess.Popen(
        [_python_for_nobody(), "-I", "-c", HOG, agent.socket, str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[gid],
    )
    assert hog.stdout is not None
    assert hog.stdout.readline() == "open\n"
    return hog


def _held(hog: subprocess.Popen[str]) -> int:
    """How many of its connections the agent kept for ``hog``."""
    assert hog.stdin is not None and hog.stdout is not None
    hog.stdin.write("count\n")
    hog.stdin.flush()
    return int(hog.stdout.readline())


def test_another_uid_cannot_take_roots_connections(
    agent_factory: Any, test_group: tuple[str, int]
) -> None:
    """User nobody opens 1,100 connections to the socket: it keeps
    max_connections_per_uid of them, root's ping answers, and the
    refusals are logged a few at a time plus one summary with a count."""
    name, gid = test_group
    agent = group_agent(agent_factory, name)
    per_uid = config.ServerConfig().max_connections_per_uid
    hog = _hog(agent, gid, 1100)
    try:
        with agent.client(timeout=10) as root:
            assert root.call("Host.ping") is True
        assert _held(hog) == per_uid
        # Still served while nobody holds its share.
        assert agent.call("Host.ping") is True
    finally:
        hog.kill()
        hog.wait(30)
    summary = agent.wait_log("more refused in the last", timeout=30)
    log = agent.log()
    single = [
        x
        for x in log.splitlines()
        if "refusing a connection: " in x and f"uid={NOBODY}" in x
    ]
    assert 1 <= len(single) <= 3
    assert f"max_connections_per_uid={per_uid}" in single[0]
    counted = sum(
        int(x.split("refusing connections: ")[1].split()[0])
        for x in log.splitlines()
        if "more refused in the last" in x
    )
    assert "refusing connections: " in summary
    assert len(single) + counted == 1100 - per_uid


def test_a_uid_other_than_root_leaves_the_reserved_slots(
    agent_factory: Any, test_group: tuple[str, int]
) -> None:
    """max_connections=8, reserved_connections=3: nobody gets 5 even
    with a per-uid cap of 100; root still gets the other 3."""
    name, gid = test_group
    need("socat")
    agent: Agent = agent_factory()
    agent.configure(
        server={
            "socket_group": name,
            "max_connections": 8,
            "reserved_connections": 3,
            "max_connections_per_uid": 100,
        }
    )
    os.chmod(agent.sock_dir, 0o755)
    agent.start()
    hog = _hog(agent, gid, 8)
    roots: list[Client] = []
    try:
        for _ in range(3):
            roots.append(agent.client(timeout=10))
            assert roots[-1].call("Host.ping") is True
        assert _held(hog) == 5
        with agent.client(timeout=10) as extra:
            refusal = extra.recv()
        assert "max_connections=8" in refusal["error"]["message"]
    finally:
        for c in roots:
            c.close()
        hog.kill()
        hog.wait(30)
    assert "are kept for root (reserved_connections)" in agent.log()


def test_one_certificate_subject_cannot_take_anothers_connections(
    agent_factory: Any, pki: Pki
) -> None:
    tls = start_tls_agent(agent_factory, pki, max_connections_per_subject=2)
    mine = [tls.client(), tls.client()]
    try:
        for c in mine:
            assert c.call("Host.ping") is True
        tls.assert_subject_cap(2)
    finally:
        for c in mine:
            c.close()


def test_a_trickled_line_is_cut_at_read_timeout(agent_factory: Any) -> None:
    """One byte every 0.1 s never lets the gap reach read_timeout, but
    the whole line must arrive within it."""
    agent: Agent = agent_factory()
    agent.configure(server={"read_timeout": 1.5, "idle_timeout": 60.0})
    agent.start()
    data = b""
    sent = 0
    with socket.socket(socket.AF_UNIX) as loris:
        loris.settimeout(30)
        loris.connect(agent.socket)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for byte in PING:
                loris.sendall(bytes([byte]))
                sent += 1
                readable, _, _ = select.select([loris], [], [], 0.1)
                if readable:
                    break
        while chunk := loris.recv(4096):
            data += chunk
    assert sent < len(PING)  # cut before the line was done
    (answer,) = [json.loads(x) for x in data.splitlines()]
    assert answer["error"]["code"] == -32600
    assert (
        "did not arrive within 1.5 s (read_timeout)"
        in (answer["error"]["message"])
    )
