"""A fake LightOS discovery-client, as os-brick's LightOS connector sees it.

The real one (Lightbits' ``discovery-client`` service) is driven by
files, not by requests: os-brick writes one
``<discovery.d>/<volume uuid>.conf`` per volume, each line
``-t tcp -a <traddr> -s <trsvcid> -q <hostnqn> -n <subsysnqn>``, and
deletes it to disconnect.  The service watches that directory, parses
the files (conf_parser.go: ``#`` comments, flags split on spaces and
``=``, transport ``tcp`` only, entries missing a mandatory field
skipped, an unknown flag fails the file), and connects the subsystems
through the kernel's ``/dev/nvme-fabrics``.  Its HTTP endpoint
(``[::]:6060`` by default) serves Prometheus ``/metrics``; os-brick
only sends ``HEAD /metrics`` to tell whether the service runs.

This fake does the same: it records every entry it reads and, where the
kernel has NVMe-oF (the qemu lab's guest), connects each entry's
subsystem through ``/dev/nvme-fabrics`` and deletes those controllers
when the file goes away.  Where the kernel has none (this machine) it
records the connect error the real service would log, and no device
ever appears, as with the real service on such a host.  The real
service first asks the entry's discovery controller for its log page;
the fake connects ``-n`` at ``-a``/``-s`` directly (nvmet serves
discovery and I/O on the same port, so the result is the same).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

NVME_FABRICS = "/dev/nvme-fabrics"
NVME_CLASS = Path("/sys/class/nvme")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")


class ParserError(ValueError):
    """A discovery file the real service would refuse as a whole."""


@dataclass(frozen=True)
class Entry:
    """One discovery entry, with the fields the real parser fills."""

    transport: str
    traddr: str
    trsvcid: int
    hostnqn: str
    subsysnqn: str
    hostid: str = ""
    persistent: bool = False
    ctrl_loss_tmo: int | None = None


def parse(text: str) -> tuple[list[Entry], list[str]]:
    """Entries of a discovery file, and warnings for skipped lines."""
    entries: list[Entry] = []
    warnings: list[str] = []
    for raw in text.splitlines():
        line = raw.strip().split("#", 1)[0]
        if not line.strip():
            continue
        fields = [f for f in re.split(r"[\s=]+", line) if f]
        v: dict[str, str] = {}
        persistent = False
        i = 0
        while i < len(fields):
            flag = fields[i]
            if flag in ("-p", "--persistent"):
                persistent = True
                i += 1
                continue
            names = {
                "-a": "traddr", "--traddr": "traddr",
                "-t": "transport", "--transport": "transport",
                "-s": "trsvcid", "--trsvcid": "trsvcid",
                "-q": "hostnqn", "--hostnqn": "hostnqn",
                "-I": "hostid", "--hostid": "hostid",
                "-n": "subsysnqn", "--subsysnqn": "subsysnqn",
                "-l": "ctrl_loss_tmo", "--ctrl-loss-tmo": "ctrl_loss_tmo",
            }  # fmt: skip
            if flag not in names or i + 1 >= len(fields):
                raise ParserError(f"unknown flag {flag}")
            v[names[flag]] = fields[i + 1]
            i += 2
        _check_fields(v)
        missing = [
            k
            for k in ("subsysnqn", "traddr", "trsvcid", "transport", "hostnqn")
            if not v.get(k)
        ]
        if missing:
            warnings.append(f"entry {line!r} not valid: {missing[0]} missing")
            continue
        tmo = v.get("ctrl_loss_tmo")
        entries.append(
            Entry(
                v["transport"],
                v["traddr"],
                int(v["trsvcid"]),
                v["hostnqn"],
                v["subsysnqn"],
                v.get("hostid", ""),
                persistent,
                int(tmo) if tmo is not None else None,
            )
        )
    return list(dict.fromkeys(entries)), warnings


def _check_fields(v: dict[str, str]) -> None:
    if "traddr" in v:
        try:
            ipaddress.ip_address(v["traddr"])
        except ValueError:
            if not _HOSTNAME.fullmatch(v["traddr"]):
                raise ParserError(f"bad address {v['traddr']}") from None
    if "transport" in v and v["transport"] != "tcp":
        raise ParserError(f"bad transport {v['transport']}")
    for key in ("trsvcid", "ctrl_loss_tmo"):
        if key in v and not re.fullmatch(r"-?\d+", v[key]):
            raise ParserError(f"bad {key} {v[key]}")


class FakeDiscoveryClient:
    """The service: a watched discovery.d and the /metrics endpoint."""

    def __init__(self, directory: Path, interval: float = 0.02) -> None:
        self.directory = directory
        self.interval = interval
        self.entries: dict[str, list[Entry]] = {}
        self.events: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.connect_errors: list[str] = []
        # file name -> the controllers (nvmeN) its entries connected.
        self.controllers: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._seen: dict[str, float] = {}
        self._connected: dict[tuple[str, Entry], str] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                with fake._cond:
                    fake.requests.append((self.command, self.path))
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                text = fake.metrics().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                if body:
                    self.wfile.write(text)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]
        self._threads = [
            threading.Thread(target=self.http.serve_forever, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]

    def start(self) -> FakeDiscoveryClient:
        """Serve and watch until :meth:`stop`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop serving (the port then refuses connections) and watching."""
        self._stop.set()
        self.http.shutdown()
        self.http.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def metrics(self) -> str:
        """Prometheus text, as the real endpoint serves."""
        with self._cond:
            n = sum(len(e) for e in self.entries.values())
        return (
            "# HELP discovery_client_entries Discovery entries in use.\n"
            "# TYPE discovery_client_entries gauge\n"
            f"discovery_client_entries {n}\n"
        )

    def wait_for(self, event: tuple[str, str], timeout: float = 5.0) -> bool:
        """Wait until ``event`` (("add"|"remove", file name)) happened."""
        with self._cond:
            return self._cond.wait_for(
                lambda: event in self.events, timeout=timeout
            )

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.scan()

    def scan(self) -> None:
        """One pass over the directory (the watcher's fsnotify step)."""
        now: dict[str, float] = {}
        for p in self.directory.glob("*.conf"):
            try:
                now[p.name] = p.stat().st_mtime
            except FileNotFoundError:
                continue
        for name in sorted(set(self._seen) - set(now)):
            self._disconnect(name)
            with self._cond:
                self.entries.pop(name, None)
                self.events.append(("remove", name))
                self._cond.notify_all()
        for name, mtime in sorted(now.items()):
            if self._seen.get(name) == mtime:
                continue
            self._load(name)
        self._seen = now

    def _load(self, name: str) -> None:
        try:
            text = (self.directory / name).read_text()
            entries, warnings = parse(text)
        except FileNotFoundError:
            return
        except ParserError as e:
            with self._cond:
                self.warnings.append(f"{name}: {e}")
                self.events.append(("reject", name))
                self._cond.notify_all()
            return
        errors: list[str] = []
        # An entry taken out of a changed file is disconnected.
        self._disconnect(name, keep=set(entries))
        for e in entries:
            if (name, e) in self._connected:
                continue
            try:
                ctrl = connect(e)
            except (OSError, KeyError) as err:
                errors.append(
                    f"{name}: connect {e.subsysnqn} at {e.traddr}:"
                    f"{e.trsvcid}: {_reason(err)}"
                )
                continue
            self._connected[(name, e)] = ctrl
        with self._cond:
            self.entries[name] = entries
            self.controllers[name] = [
                c for (n, _), c in self._connected.items() if n == name
            ]
            self.warnings += [f"{name}: {w}" for w in warnings]
            self.connect_errors += errors
            self.events.append(("add", name))
            self._cond.notify_all()

    def _disconnect(self, name: str, keep: set[Entry] | None = None) -> None:
        for key in [
            k
            for k in self._connected
            if k[0] == name and (keep is None or k[1] not in keep)
        ]:
            ctrl = self._connected.pop(key)
            # Already gone if the target dropped it.
            with contextlib.suppress(FileNotFoundError):
                (NVME_CLASS / ctrl / "delete_controller").write_text("1")
        if keep is None:
            with self._cond:
                self.controllers.pop(name, None)


def connect(e: Entry) -> str:
    """Connect one entry's subsystem as the service does; its nvmeN.

    One write of the options to ``/dev/nvme-fabrics``; the kernel
    answers on the same descriptor with ``instance=N,cntlid=M``.
    """
    opts = (
        f"nqn={e.subsysnqn},transport={e.transport},traddr={e.traddr},"
        f"trsvcid={e.trsvcid},hostnqn={e.hostnqn}"
    )
    if e.hostid:
        opts += f",hostid={e.hostid}"
    if e.ctrl_loss_tmo is not None:
        opts += f",ctrl_loss_tmo={e.ctrl_loss_tmo}"
    fd = os.open(NVME_FABRICS, os.O_RDWR)
    try:
        os.write(fd, opts.encode())
        answer = os.read(fd, 4096).decode()
    finally:
        os.close(fd)
    fields = dict(
        f.split("=", 1) for f in answer.strip().split(",") if "=" in f
    )
    return f"nvme{fields['instance']}"


def _reason(err: Exception) -> str:
    """The error as the real service (Go) logs it."""
    if isinstance(err, FileNotFoundError) and err.filename:
        return f"open {err.filename}: no such file or directory"
    if isinstance(err, OSError):
        return f"write {NVME_FABRICS}: {err.strerror or err}"
    return f"unexpected answer from {NVME_FABRICS}: {err}"
