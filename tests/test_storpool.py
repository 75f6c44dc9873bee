"""StorPool through os-brick's StorPool connector and a local JSON API.

The seed's design: the connector attaches and detaches by calling
StorPool's JSON-over-HTTP API.  ``FakeStorPool`` is an HTTP server on
127.0.0.1 implementing the calls os-brick's connector makes
(``VolumesReassignWait``, ``VolumeGetInfo``, ``Volume``), with
StorPool's auth header, reply envelope (``{"data": ...}`` or
``{"error": {"name", "descr", "transient"}}``) and volume naming
(``os--volume-<id>``, ``~<globalId>``); a call named in ``fail``
answers with the given error.  It also plays this host's
StorPool block client: a volume assigned to our SP_OURID appears in the
daemon's private /dev (fakehost.py) as ``/dev/spN`` (a real loop device's
numbers) with the ``/dev/storpool/<name>`` and
``/dev/storpool-byid/<globalId>`` links, and goes when detached.
"""

from __future__ import annotations

import json
import os
import platform
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Loops, new_vol_id
from support import ATTACH, DETACH, EXTEND, INFO
from test_fc import FakeHostAgent

TOKEN = "9876543210123456789"
OURID = "7"
CINDER_ID = "5e5ff6f2-7e36-4a57-9bb9-a1cfa0b3f7a1"
SP_NAME = f"os--volume-{CINDER_ID}"


class FakeStorPool(ThreadingHTTPServer):
    """The part of StorPool's API (and block client) os-brick uses."""

    def __init__(self, dev_root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.dev_root = dev_root
        self.volumes: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, Any]] = []
        # Calls told to fail: call name -> (HTTP status, error name,
        # description), answered in StorPool's error envelope.
        self.fail: dict[str, tuple[int, str, str]] = {}
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def create(self, name: str, device: str, gid: str) -> None:
        size = int(
            subprocess.run(
                ["blockdev", "--getsize64", device],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        self.volumes[name] = {
            "name": name,
            "globalId": gid,
            "size": size,
            "device": device,
            "attached": {},
        }

    def find(self, name: str) -> dict[str, Any] | None:
        if name.startswith("~"):
            return next(
                (
                    v
                    for v in self.volumes.values()
                    if v["globalId"] == name[1:]
                ),
                None,
            )
        return self.volumes.get(name)

    def block_client(self, vol: dict[str, Any], attached: bool) -> None:
        """storpool_block on the agent's host: the device comes or goes."""
        dev = self.dev_root
        node = dev / f"sp-{vol['globalId']}"
        links = [
            dev / "storpool" / vol["name"],
            dev / "storpool-byid" / vol["globalId"],
        ]
        if attached:
            os.mknod(
                node, stat.S_IFBLK | 0o660, os.stat(vol["device"]).st_rdev
            )
            for link in links:
                link.parent.mkdir(exist_ok=True)
                os.symlink(f"../{node.name}", link)
        else:
            for p in [*links, node]:
                p.unlink(missing_ok=True)


class _Handler(BaseHTTPRequestHandler):
    server: FakeStorPool

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status: int, name: str, descr: str) -> None:
        self.reply(
            status,
            {"error": {"name": name, "descr": descr, "transient": False}},
        )

    def do_GET(self) -> None:
        self.handle_call("GET", None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.handle_call("POST", json.loads(raw) if raw else None)

    def handle_call(self, method: str, body: Any) -> None:
        s = self.server
        with s.lock:
            s.calls.append((method, self.path, body))
            if self.headers.get("Authorization") != f"Storpool v1:{TOKEN}":
                return self.error(401, "authError", "Authentication failed")
            prefix = "/ctrl/1.0/MultiCluster/"
            if not self.path.startswith(prefix):
                return self.error(404, "invalidParam", "no such call")
            call, _, arg = self.path[len(prefix) :].partition("/")
            if call in s.fail:
                return self.error(*s.fail[call])
            if method == "POST" and call == "VolumesReassignWait":
                return self.reassign(body)
            if method == "GET" and call in ("VolumeGetInfo", "Volume"):
                vol = s.find(arg)
                if vol is None:
                    return self.error(
                        404, "objectDoesNotExist", f"volume {arg} not found"
                    )
                info = {k: vol[k] for k in ("name", "globalId", "size")}
                return self.reply(
                    200, {"data": info if call == "VolumeGetInfo" else [info]}
                )
            return self.error(404, "invalidParam", f"no call {call}")

    def reassign(self, body: dict[str, Any]) -> None:
        s = self.server
        for item in body["reassign"]:
            vol = s.find(item["volume"])
            if vol is None:
                return self.error(
                    404,
                    "objectDoesNotExist",
                    f"volume {item['volume']} not found",
                )
            for mode in ("rw", "ro"):
                for client in item.get(mode, []):
                    if str(client) == OURID and not vol["attached"]:
                        s.block_client(vol, True)
                    vol["attached"][str(client)] = mode
            for client in item.get("detach", []):
                if (
                    vol["attached"].pop(str(client), None)
                    and str(client) == OURID
                ):
                    s.block_client(vol, False)
        return self.reply(200, {"data": {"ok": True}})


@pytest.fixture
def storpool(
    agent_factory: Any, tmp_path: Path, loops: Loops
) -> Iterator[tuple[FakeHostAgent, FakeStorPool, str]]:
    a: FakeHostAgent = agent_factory(cls=FakeHostAgent, spec={})
    server = FakeStorPool(a.root / "dev")
    dev = loops.create()
    server.create(SP_NAME, dev, "b7kz.b.c3f")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conf = tmp_path / "storpool.conf"
    # The unnamed section is every host's; [hostname] wins for this one.
    conf.write_text(
        f"SP_API_HTTP_HOST=127.0.0.1\n"
        f"SP_API_HTTP_PORT={server.port}\n"
        f"SP_AUTH_TOKEN={TOKEN}\n"
        "SP_OURID=99\n"
        f"[{platform.node()}]\n"
        f"SP_OURID={OURID}\n"
    )
    a.configure(
        brick={"drivers": ["local", "storpool"]},
        backend={"sp": {"driver": "storpool", "storpool_conf": str(conf)}},
    )
    a.start()
    yield a, server, dev
    server.shutdown()
    server.server_close()


def sp_info(volume: str = CINDER_ID, mode: str = "rw") -> dict[str, Any]:
    return {
        "driver_volume_type": "storpool",
        "data": {"client_id": 1, "volume": volume, "access_mode": mode},
    }


def test_attach_detach_through_the_api(
    storpool: tuple[FakeHostAgent, FakeStorPool, str],
) -> None:
    a, sp, _dev = storpool
    vid = new_vol_id()
    res = a.call(
        ATTACH, {"vol_id": vid, "connection_info": sp_info(), "backend": "sp"}
    )
    assert res["path"] == "/dev/storpool-byid/b7kz.b.c3f"
    assert res["attachment"] == {
        "type": "block",
        "path": "/dev/storpool-byid/b7kz.b.c3f",
    }
    assert sp.calls == [
        (
            "POST",
            "/ctrl/1.0/MultiCluster/VolumesReassignWait",
            {"reassign": [{"volume": SP_NAME, "rw": [OURID]}]},
        ),
        ("GET", f"/ctrl/1.0/MultiCluster/VolumeGetInfo/{SP_NAME}", None),
    ]
    assert sp.volumes[SP_NAME]["attached"] == {OURID: "rw"}
    (info,) = a.call(INFO)
    assert info["exists"] is True
    assert a.call(DETACH, [vid]) is True
    assert sp.calls[2:] == [
        (
            "POST",
            "/ctrl/1.0/MultiCluster/VolumesReassignWait",
            {
                "reassign": [
                    {
                        "volume": "~b7kz.b.c3f",
                        "detach": [OURID],
                        "force": False,
                    }
                ]
            },
        )
    ]
    assert sp.volumes[SP_NAME]["attached"] == {}
    assert a.call(INFO) == []
    assert TOKEN not in a.log()


def test_extend_asks_the_api_for_the_size(
    storpool: tuple[FakeHostAgent, FakeStorPool, str], loops: Loops
) -> None:
    a, sp, dev = storpool
    vid = new_vol_id()
    a.call(
        ATTACH, {"vol_id": vid, "connection_info": sp_info(), "backend": "sp"}
    )
    os.truncate(loops.backing(dev), 64 * 1024 * 1024)
    subprocess.run(["losetup", "-c", dev], check=True)
    sp.volumes[SP_NAME]["size"] = 64 * 1024 * 1024
    assert a.call(EXTEND, [vid]) == 64 * 1024 * 1024
    assert sp.calls[-1] == (
        "GET",
        f"/ctrl/1.0/MultiCluster/Volume/{SP_NAME}",
        None,
    )


def test_unknown_volume_is_926_with_the_api_error(
    storpool: tuple[FakeHostAgent, FakeStorPool, str],
) -> None:
    """The reassign fails; the clean-up detach by name finds no volume.

    os-brick's StorPool disconnect needs a device path, which a failed
    connect never returned: the agent gives it the path by name
    (``/dev/storpool/<name>``, as the connector's get_volume_paths
    says).  StorPool answers objectDoesNotExist, so nothing of it can be
    attached here and no row is kept.
    """
    a, sp, _ = storpool
    vid = new_vol_id()
    unknown = new_vol_id()
    err = a.error(
        ATTACH,
        {"vol_id": vid, "connection_info": sp_info(unknown), "backend": "sp"},
    )
    assert err.code == 926
    assert "objectDoesNotExist" in err.message
    name = f"os--volume-{unknown}"
    assert sp.calls == [
        (
            "POST",
            "/ctrl/1.0/MultiCluster/VolumesReassignWait",
            {"reassign": [{"volume": name, "rw": [OURID]}]},
        ),
        (
            "POST",
            "/ctrl/1.0/MultiCluster/VolumesReassignWait",
            {
                "reassign": [
                    {"volume": name, "detach": [OURID], "force": False}
                ]
            },
        ),
    ]
    assert a.call(INFO) == []
    assert "StorPool has no such volume: nothing to disconnect" in a.log()
    assert sp.volumes[SP_NAME]["attached"] == {}


def test_failed_volume_info_detaches_the_reassigned_volume(
    storpool: tuple[FakeHostAgent, FakeStorPool, str],
) -> None:
    """The reassign is done, then VolumeGetInfo fails: detached again.

    The volume was attached to this host (its device appeared) when
    connect_volume raised; the clean-up detaches it by name in the API
    and the attach leaves no row.  Once the API answers, it attaches.
    """
    a, sp, _dev = storpool
    sp.fail["VolumeGetInfo"] = (500, "busy", "the cluster is busy")
    vid = new_vol_id()
    err = a.error(
        ATTACH, {"vol_id": vid, "connection_info": sp_info(), "backend": "sp"}
    )
    assert err.code == 926
    assert err.data["operation"] == "connect_volume"
    assert "busy: the cluster is busy" in err.message
    assert sp.calls == [
        (
            "POST",
            "/ctrl/1.0/MultiCluster/VolumesReassignWait",
            {"reassign": [{"volume": SP_NAME, "rw": [OURID]}]},
        ),
        ("GET", f"/ctrl/1.0/MultiCluster/VolumeGetInfo/{SP_NAME}", None),
        (
            "POST",
            "/ctrl/1.0/MultiCluster/VolumesReassignWait",
            {
                "reassign": [
                    {"volume": SP_NAME, "detach": [OURID], "force": False}
                ]
            },
        ),
    ]
    assert sp.volumes[SP_NAME]["attached"] == {}
    assert not (a.root / "dev" / "storpool" / SP_NAME).exists()
    assert a.call(INFO) == []
    del sp.fail["VolumeGetInfo"]
    res = a.call(
        ATTACH, {"vol_id": vid, "connection_info": sp_info(), "backend": "sp"}
    )
    assert res["path"] == "/dev/storpool-byid/b7kz.b.c3f"
    assert sp.volumes[SP_NAME]["attached"] == {OURID: "rw"}


def test_bad_access_mode_is_926_before_any_call(
    storpool: tuple[FakeHostAgent, FakeStorPool, str],
) -> None:
    """Refused like os-brick refuses it, as bad data: no clean-up detach.

    A detach by name could take the volume from another record that has
    it attached here; and no row is left behind.
    """
    a, sp, _ = storpool
    err = a.error(
        ATTACH,
        {
            "vol_id": new_vol_id(),
            "connection_info": sp_info(mode="rwx"),
            "backend": "sp",
        },
    )
    assert err.code == 926
    assert "Invalid access_mode" in err.message
    assert err.data["error_class"] == "ValueError"
    assert sp.calls == []
    assert a.call(INFO) == []


@pytest.mark.parametrize(
    "volume", ["../VolumeDelete/x", "a?b=c", "", "x" * 201, 7]
)
def test_volume_name_outside_storpool_names_is_refused(
    storpool: tuple[FakeHostAgent, FakeStorPool, str], volume: Any
) -> None:
    """os-brick puts the name into a URL path: refused before any call."""
    a, sp, _ = storpool
    err = a.error(
        ATTACH,
        {
            "vol_id": new_vol_id(),
            "connection_info": sp_info(volume=volume),
            "backend": "sp",
        },
    )
    assert err.code == 926
    assert err.data["error_class"] == "ValueError"
    assert "may only hold letters, digits" in err.message
    assert sp.calls == []
    assert a.call(INFO) == []


def test_wrong_token_is_926(
    storpool: tuple[FakeHostAgent, FakeStorPool, str], tmp_path: Path
) -> None:
    a, _sp, _ = storpool
    conf = tmp_path / "storpool.conf"
    conf.write_text(conf.read_text().replace(TOKEN, "123"))
    a.restart()
    err = a.error(
        ATTACH,
        {
            "vol_id": new_vol_id(),
            "connection_info": sp_info(),
            "backend": "sp",
        },
    )
    assert err.code == 926
    assert "authError" in err.message


def test_default_storpool_conf_missing_is_926(agent_factory: Any) -> None:
    """Without a backend os-brick reads /etc/storpool.conf (none here).

    A StorPool config this machine has is hidden in the namespace.
    """
    a: FakeHostAgent = agent_factory(
        cls=FakeHostAgent,
        spec={"hide": ["/etc/storpool.conf", "/etc/storpool.conf.d"]},
    )
    a.configure(brick={"drivers": ["storpool"]})
    a.start()
    caps = a.call("Host.getCapabilities")
    assert caps["driver_status"]["storpool"]["problems"] == [
        "StorPool config /etc/storpool.conf not found"
    ]
    err = a.error(ATTACH, [new_vol_id(), sp_info()])
    assert err.code == 926
    assert "Could not initialize the StorPool API" in err.message


def test_broken_config_names_the_file_not_its_lines(
    storpool: tuple[FakeHostAgent, FakeStorPool, str], tmp_path: Path
) -> None:
    a, _sp, _ = storpool
    conf = tmp_path / "storpool.conf"
    # A stray "=" (a key lost in an edit) is a parsing error whose text
    # quotes the line: the token must not travel with it.
    conf.write_text(f"SP_OURID=7\n={TOKEN}\n")
    a.restart()
    err = a.error(
        ATTACH,
        {
            "vol_id": new_vol_id(),
            "connection_info": sp_info(),
            "backend": "sp",
        },
    )
    assert err.code == 926
    assert f"{conf} is not a valid StorPool config" in err.message
    assert TOKEN not in str(err.data)
    assert TOKEN not in a.log()
