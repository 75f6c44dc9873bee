"""Guest-side helpers for lab jobs: cases, services, targets, os-brick.

Runs inside the qemu guest only (as root, under tests/vm/guest/init.sh).
Each job is a script that runs several cases; each case writes one JSON
file to /lab/results that the pytest on the host asserts on.  The
helpers here start the real daemons (iscsid, multipathd, rpcbind, nfsd,
vblade) and configure the real kernel targets (LIO over configfs,
nvmet), so nothing on the kernel side is mocked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

LAB = Path("/lab")
RESULTS = LAB / "results"
WORK = Path("/var/lib/lab")
CONFIGFS = Path("/sys/kernel/config")

T = TypeVar("T")


def uptime() -> float:
    """Seconds since the guest booted."""
    return float(Path("/proc/uptime").read_text().split()[0])


def log(msg: str) -> None:
    """Print a timestamped line to the console (the run's log)."""
    print(f"[{uptime():8.2f}] {msg}", flush=True)


def sh(
    *cmd: str,
    check: bool = True,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, log it, return the completed process.

    Output is captured and logged, so the console shows what each tool
    said when a case goes wrong.
    """
    log("$ " + " ".join(cmd))
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )
    out = (proc.stdout + proc.stderr).strip()
    if out:
        for line in out.splitlines()[:40]:
            log(f"  | {line}")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {out[-2000:]}")
    return proc


def write(path: Path | str, value: str) -> None:
    """Write one configfs/sysfs attribute (or any small file)."""
    Path(path).write_text(value)


def modprobe(*modules: str) -> None:
    """Load kernel modules from the lab kernel's tree."""
    sh("modprobe", "-a", *modules)


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting: {what}")
        time.sleep(interval)


# --- cases -------------------------------------------------------------------


class Case:
    """One test case run in the guest; writes results/<name>.json.

    Used as a context manager: an exception inside is recorded (with its
    traceback) and swallowed, so the job goes on with the next case and
    the host reports each case on its own.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[str, Any] = {}
        self.steps: dict[str, float] = {}
        self._start = 0.0

    def __enter__(self) -> Case:
        log(f"=== case {self.name} ===")
        self._start = time.monotonic()
        return self

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a named step of the case (seconds go to ``steps``)."""
        start = time.monotonic()
        log(f"--- {self.name}: {name}")
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - start, 3)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        seconds = round(time.monotonic() - self._start, 3)
        result = {
            "name": self.name,
            "ok": exc is None,
            "seconds": seconds,
            "steps": self.steps,
            "data": self.data,
            "error": None,
        }
        if exc is not None:
            result["error"] = "".join(
                traceback.format_exception(exc_type, exc, tb)
            )
            log(f"case {self.name} FAILED: {exc!r}")
            print(result["error"], flush=True)
        log(f"=== case {self.name} done in {seconds}s ok={exc is None} ===")
        RESULTS.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS / f".{self.name}.json"
        tmp.write_text(json.dumps(result, indent=2, default=str))
        tmp.rename(RESULTS / f"{self.name}.json")
        return True


# --- device checks -----------------------------------------------------------


def dm_devices() -> dict[str, str]:
    """Map of dm-N -> dm uuid for every device-mapper device present."""
    found = {}
    for uuid_file in Path("/sys/block").glob("dm-*/dm/uuid"):
        found[uuid_file.parent.parent.name] = uuid_file.read_text().strip()
    return found


def dm_by_uuid(dm_uuid: str) -> str | None:
    """The dm-N name of the device with this dm uuid, if any."""
    for name, value in dm_devices().items():
        if value == dm_uuid:
            return name
    return None


def slaves(dm_name: str) -> list[str]:
    """The block devices under a dm device (its paths, for multipath)."""
    return sorted(
        p.name for p in Path(f"/sys/block/{dm_name}/slaves").iterdir()
    )


def wait_slaves(
    dm_name: str | None, count: int, timeout: float = 30
) -> list[str]:
    """The dm device's paths once there are ``count`` (or at timeout).

    os-brick returns as soon as the multipath device exists, which may
    be before its last path joined: wait for them rather than race.
    """
    if dm_name is None:
        return []
    with contextlib.suppress(TimeoutError):
        wait_for(
            lambda: len(slaves(dm_name)) >= count,
            timeout=timeout,
            what=f"{count} paths under {dm_name}",
        )
    return slaves(dm_name)


def iscsi_sessions() -> list[str]:
    """Lines of ``iscsiadm -m session``; empty when there is none."""
    proc = sh("iscsiadm", "-m", "session", check=False)
    # Exit status 21 means "no active sessions".
    if proc.returncode == 21:
        return []
    return [line for line in proc.stdout.splitlines() if line.strip()]


def iscsi_leftovers() -> dict[str, Any]:
    """What an iSCSI attach could leave behind: sessions, dm devices and
    SCSI disks present now."""
    return {
        "sessions": iscsi_sessions(),
        "dm_devices": dm_devices(),
        "sd_devices": sorted(p.name for p in Path("/sys/block").glob("sd*")),
    }


def nvme_controllers() -> list[str]:
    """Names of the NVMe controllers present (nvme0, ...)."""
    root = Path("/sys/class/nvme")
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def io_check(path: str, size: int = 1 << 20, offset: int = 1 << 20) -> str:
    """Write random data to ``path`` with O_DIRECT, read it back, compare.

    O_DIRECT so the data really crosses the transport rather than being
    served from the guest's page cache.  Returns the data's sha256.
    """
    import hashlib

    data = os.urandom(size)
    # O_DIRECT needs a page-aligned buffer: an anonymous mmap is one.
    buf = mmap.mmap(-1, size)
    buf.write(data)
    flags = os.O_RDWR | getattr(os, "O_DIRECT", 0)
    fd = os.open(path, flags)
    try:
        os.pwritev(fd, [buf], offset)
        os.fsync(fd)
        back = mmap.mmap(-1, size)
        got = os.preadv(fd, [back], offset)
    finally:
        os.close(fd)
    if got != size or back[:] != data:
        raise AssertionError(
            f"read back differs from what was written to {path}"
        )
    return hashlib.sha256(data).hexdigest()


# --- services ----------------------------------------------------------------


def start_iscsid() -> str:
    """Give the guest an initiator name and start iscsid; return the name."""
    modprobe("iscsi_tcp")
    iname = sh("iscsi-iname", "-p", "iqn.2004-10.org.debian:lab").stdout
    iname = iname.strip()
    write("/etc/iscsi/initiatorname.iscsi", f"InitiatorName={iname}\n")
    # No node records from the host's own /etc/iscsi.
    shutil.rmtree("/etc/iscsi/nodes", ignore_errors=True)
    shutil.rmtree("/etc/iscsi/send_targets", ignore_errors=True)
    Path("/run/lock/iscsi").mkdir(parents=True, exist_ok=True)
    sh("iscsid")
    wait_for(
        lambda: sh("iscsiadm", "-m", "iface", check=False).returncode == 0,
        what="iscsid answering",
    )
    return iname


def set_iscsi_timeouts(replacement: int = 5, noop: int = 2) -> None:
    """Fail a lost iSCSI path in seconds, as multipath setups do.

    iscsid.conf's defaults (120 s replacement timeout) would hold I/O on
    a lost portal for two minutes instead of failing over.  Only node
    records made afterwards (os-brick makes them at login) get these.
    """
    conf = Path("/etc/iscsi/iscsid.conf")
    wanted = {
        "node.session.timeo.replacement_timeout": replacement,
        "node.conn[0].timeo.noop_out_interval": noop,
        "node.conn[0].timeo.noop_out_timeout": noop,
    }
    lines = [
        line
        for line in conf.read_text().splitlines()
        if line.split("=", 1)[0].strip() not in wanted
    ]
    lines += [f"{key} = {value}" for key, value in wanted.items()]
    conf.write_text("\n".join(lines) + "\n")


MULTIPATH_CONF = """\
defaults {
    user_friendly_names no
    find_multipaths no
    polling_interval 2
    no_path_retry 0
}
blacklist {
    devnode "^(ram|loop|fd|md|dm-|sr|scd|st|nbd|vd|nvme|etherd)"
}
"""


def start_multipathd() -> None:
    """Write a multipath.conf fit for os-brick and start multipathd."""
    modprobe("dm_multipath", "dm_round_robin", "dm_service_time")
    write("/etc/multipath.conf", MULTIPATH_CONF)
    Path("/etc/multipath").mkdir(exist_ok=True)
    for name in ("wwids", "bindings"):
        write(f"/etc/multipath/{name}", "")
    sh("multipathd")
    # "show daemon" answers "pid N idle" (or "running") once the daemon
    # has finished its start-up and listens on its socket.
    wait_for(
        lambda: sh(
            "multipathd", "show", "daemon", check=False
        ).stdout.startswith("pid"),
        what="multipathd answering",
    )


def start_initiator() -> str:
    """iscsid (a lost path failing in seconds) and multipathd: the
    initiator side the agent expects; returns the initiator name."""
    iname = start_iscsid()
    set_iscsi_timeouts()
    start_multipathd()
    return iname


def mount_configfs() -> None:
    """Make sure configfs is mounted (targets are configured through it)."""
    modprobe("configfs")
    if not os.path.ismount(CONFIGFS):
        sh("mount", "-t", "configfs", "configfs", str(CONFIGFS))


def backing_file(name: str, size_mb: int = 64) -> Path:
    """A sparse file for a target to export, on a tmpfs of its own.

    Not on the overlay root: nvmet's file backend gets ENOSPC writing
    through overlayfs, and a plain tmpfs is what a target would use.
    """
    store = WORK / "store"
    store.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(store):
        sh("mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(store))
    path = store / name
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)
    return path


# --- LIO iSCSI target --------------------------------------------------------


class LioIscsiTarget:
    """A LIO iSCSI target with one file-backed LUN, set up via configfs.

    Each portal is a target portal group of its own (as on arrays with
    one group per controller port), so one portal can be taken away on
    its own.  ``acl`` names the one initiator allowed in (with CHAP if
    ``chap`` is given); without it any initiator may log in.
    """

    def __init__(
        self,
        iqn: str,
        backing: Path,
        portals: list[str],
        acl: str | None = None,
        chap: tuple[str, str] | None = None,
        name: str = "lab0",
    ) -> None:
        mount_configfs()
        modprobe("target_core_mod", "target_core_file", "iscsi_target_mod")
        self.iqn = iqn
        self.portals = list(portals)
        core = CONFIGFS / "target" / "core" / "fileio_0" / name
        core.mkdir(parents=True)
        size = backing.stat().st_size
        write(core / "control", f"fd_dev_name={backing},fd_dev_size={size}")
        # A unit serial of our own: the LUN's NAA WWN (and so the
        # multipath wwid) derives from it.
        self.serial = str(uuid.uuid4())
        write(core / "wwn" / "vpd_unit_serial", self.serial)
        write(core / "enable", "1")
        self.tpgs: dict[str, Path] = {}
        for n, portal in enumerate(self.portals, start=1):
            tpg = CONFIGFS / "target" / "iscsi" / iqn / f"tpgt_{n}"
            self._make_tpg(tpg, core, portal, acl, chap)
            self.tpgs[portal] = tpg
        log(f"LIO target {iqn} on {', '.join(self.portals)}")

    @staticmethod
    def _make_tpg(
        tpg: Path,
        core: Path,
        portal: str,
        acl: str | None,
        chap: tuple[str, str] | None,
    ) -> None:
        lun = tpg / "lun" / "lun_0"
        lun.mkdir(parents=True)
        os.symlink(core, lun / "storage")
        (tpg / "np" / portal).mkdir()
        attrib = tpg / "attrib"
        if acl is None:
            write(attrib / "generate_node_acls", "1")
            write(attrib / "cache_dynamic_acls", "1")
            write(attrib / "demo_mode_write_protect", "0")
            write(attrib / "authentication", "0")
        else:
            node = tpg / "acls" / acl
            (node / "lun_0").mkdir(parents=True)
            os.symlink(lun, node / "lun_0" / "lun_0")
            if chap:
                write(node / "auth" / "userid", chap[0])
                write(node / "auth" / "password", chap[1])
            write(attrib / "authentication", "1" if chap else "0")
        write(tpg / "enable", "1")

    def remove_portal(self, portal: str) -> None:
        """Stop serving one portal: its sessions drop, logins fail."""
        write(self.tpgs[portal] / "enable", "0")
        self.portals.remove(portal)

    def connection_data(
        self,
        lun: int = 0,
        multipath: bool = True,
        chap: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """The Cinder/os-brick connection ``data`` for this LUN.

        ``chap`` (user, password): the credentials to log in with.
        """
        data: dict[str, Any] = {
            "target_iqn": self.iqn,
            "target_portal": self.portals[0],
            "target_lun": lun,
            "target_discovered": False,
        }
        if multipath:
            n = len(self.portals)
            data["target_iqns"] = [self.iqn] * n
            data["target_portals"] = list(self.portals)
            data["target_luns"] = [lun] * n
        if chap:
            data.update(
                auth_method="CHAP",
                auth_username=chap[0],
                auth_password=chap[1],
            )
        return data

    def connection_info(self, **kwargs: Any) -> dict[str, Any]:
        """The whole ``connection_info`` an engine hands the agent."""
        return {
            "driver_volume_type": "iscsi",
            "data": self.connection_data(**kwargs),
        }


# The two loopback addresses the guest's init adds, as iSCSI portals.
PORTALS = ["127.0.0.2:3260", "127.0.0.3:3260"]


def lab_lun(name: str) -> LioIscsiTarget:
    """A LIO LUN on the lab's two portals, named by ``name``: the IQN
    iqn.2003-01.org.lab:<name>, backed by <name>.img."""
    return LioIscsiTarget(
        f"iqn.2003-01.org.lab:{name}",
        backing_file(f"{name}.img"),
        PORTALS,
        name=name,
    )


# --- NVMe/TCP target ---------------------------------------------------------


class NvmetTcpTarget:
    """A kernel NVMe-oF target over TCP with one file-backed namespace."""

    def __init__(
        self,
        nqn: str,
        backing: Path,
        addr: str = "127.0.0.1",
        port: int = 4420,
        port_id: int = 1,
    ) -> None:
        mount_configfs()
        modprobe("nvmet", "nvmet_tcp", "nvme_tcp")
        self.nqn = nqn
        self.addr = addr
        self.port = port
        self.ns_uuid = str(uuid.uuid4())
        root = CONFIGFS / "nvmet"
        sub = root / "subsystems" / nqn
        sub.mkdir()
        write(sub / "attr_allow_any_host", "1")
        ns = sub / "namespaces" / "1"
        ns.mkdir()
        write(ns / "device_path", str(backing))
        # nvmet opens files with O_DIRECT unless told otherwise, and the
        # guest's overlay/tmpfs cannot do O_DIRECT.
        write(ns / "buffered_io", "1")
        write(ns / "device_uuid", self.ns_uuid)
        write(ns / "enable", "1")
        # One nvmet port per target: a job may export several.
        port_dir = root / "ports" / str(port_id)
        port_dir.mkdir()
        write(port_dir / "addr_trtype", "tcp")
        write(port_dir / "addr_adrfam", "ipv4")
        write(port_dir / "addr_traddr", addr)
        write(port_dir / "addr_trsvcid", str(port))
        os.symlink(sub, port_dir / "subsystems" / nqn)
        log(f"nvmet target {nqn} on {addr}:{port}")

    def connection_data(self) -> dict[str, Any]:
        """os-brick's new-style nvmeof ``data`` for the namespace."""
        return {
            "target_nqn": self.nqn,
            "vol_uuid": self.ns_uuid,
            "portals": [[self.addr, str(self.port), "tcp"]],
        }

    def connection_info(self) -> dict[str, Any]:
        """The whole ``connection_info`` an engine hands the agent."""
        return {"driver_volume_type": "nvmeof", "data": self.connection_data()}


def nvme_host_ids() -> str:
    """Write a fresh /etc/nvme/hostnqn and hostid; return the host NQN."""
    Path("/etc/nvme").mkdir(exist_ok=True)
    # Not "nvme gen-hostnqn": it derives the NQN from the DMI product
    # UUID, which is all zeros under qemu.
    host_id = str(uuid.uuid4())
    hostnqn = f"nqn.2014-08.org.nvmexpress:uuid:{host_id}"
    write("/etc/nvme/hostnqn", hostnqn + "\n")
    write("/etc/nvme/hostid", host_id + "\n")
    return hostnqn


# --- NFS server --------------------------------------------------------------


def start_nfs_server(export: Path = Path("/srv/lab-nfs")) -> str:
    """Export a tmpfs directory over NFS on 127.0.0.1; return the share.

    The export is a tmpfs of its own because the overlay root cannot be
    exported over NFS.
    """
    modprobe("nfsd", "nfs", "nfsv4")
    export.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(export))
    if not os.path.ismount("/proc/fs/nfsd"):
        sh("mount", "-t", "nfsd", "nfsd", "/proc/fs/nfsd")
    Path("/run/rpcbind").mkdir(exist_ok=True)
    Path("/var/lib/nfs/rpc_pipefs").mkdir(parents=True, exist_ok=True)
    sh("rpcbind", "-w")
    write(
        "/etc/exports",
        f"{export} 127.0.0.0/8(rw,sync,no_root_squash,no_subtree_check,"
        "fsid=1)\n",
    )
    sh("exportfs", "-ra")
    sh("rpc.mountd")
    sh("rpc.nfsd", "4")
    return f"127.0.0.1:{export}"


# --- AoE target --------------------------------------------------------------


def start_vblade(
    backing: Path, shelf: int = 1, slot: int = 1
) -> subprocess.Popen[bytes]:
    """Export ``backing`` over AoE on a veth pair inside the guest.

    AoE is raw Ethernet, which loopback does not carry, so vblade sits on
    one end of a veth pair and the aoe driver sees it from the other.
    """
    modprobe("veth", "aoe")
    sh(
        "ip",
        "link",
        "add",
        "aoe-tgt",
        "type",
        "veth",
        "peer",
        "name",
        "aoe-ini",
    )
    sh("ip", "link", "set", "aoe-tgt", "up")
    sh("ip", "link", "set", "aoe-ini", "up")
    # Only the initiator end: otherwise the driver also finds the target
    # through vblade's own interface.
    write("/sys/module/aoe/parameters/aoe_iflist", "aoe-ini")
    log(f"$ vblade {shelf} {slot} aoe-tgt {backing}")
    return subprocess.Popen(
        ["vblade", str(shelf), str(slot), "aoe-tgt", str(backing)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# --- os-brick ----------------------------------------------------------------


def brick_init(debug_log: Path = Path("/tmp/brick.log")) -> None:
    """Set os-brick up as a root process would: no privsep daemon, locks.

    privsep's client mode is turned off so privileged calls run in this
    (root) process; os-brick's DEBUG log goes to ``debug_log``, INFO and
    above to the console.
    """
    import os_brick
    from os_brick import privileged
    from oslo_concurrency import lockutils
    from oslo_config import cfg

    lock_dir = Path("/run/lab/locks")
    lock_dir.mkdir(parents=True, exist_ok=True)
    lockutils.set_defaults(str(lock_dir))
    cfg.CONF([], project="lab", default_config_files=[])
    os_brick.setup(cfg.CONF)
    privileged.default.set_client_mode(False)
    privileged.brick_privsep_hide_output.set_client_mode(False)

    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler()
    console.setLevel(logging.INFO)
    console.setFormatter(
        logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(console)
    file_handler = logging.FileHandler(debug_log)
    file_handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(file_handler)


def save_artifacts(*paths: str) -> None:
    """Copy guest files (logs) to /lab/artifacts for the host to keep."""
    dest = LAB / "artifacts"
    dest.mkdir(exist_ok=True)
    for p in paths:
        src = Path(p)
        if src.is_file():
            shutil.copy(src, dest / src.name)


# --- hostagentd ----------------------------------------------------------


def entry_point(name: str, module: str) -> list[str]:
    """The venv's console script ``name``, else ``python -m module``."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", module]


class Agent:
    """A real ``hostagentd`` in the guest, started with a config file.

    Its log (stderr) goes to ``/tmp/<name>.log``; ``client()`` opens a
    :class:`hostagent.client.Client` on its Unix socket.
    """

    def __init__(
        self,
        name: str = "hostagentd",
        state_dir: str = "/var/lib/hostagent",
        run_dir: str = "/run/hostagent",
        extra_brick: str = "",
        extra_storage: str = "",
    ) -> None:
        self.name = name
        self.socket = f"{run_dir}/hostagent.sock"
        self.log_path = Path(f"/tmp/{name}.log")
        self.config_path = Path(f"/etc/hostagent/{name}.toml")
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "[server]\n"
            f'unix_socket = "{self.socket}"\n'
            "[storage]\n"
            f'state_dir = "{state_dir}"\n'
            f'run_dir = "{run_dir}"\n'
            f"{extra_storage}"
            "[brick]\n"
            'my_ip = "127.0.0.1"\n'
            "device_scan_attempts = 5\n"
            f"{extra_brick}"
            "[log]\n"
            'level = "debug"\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(
        self, env: dict[str, str] | None = None, timeout: float = 60
    ) -> float:
        """Start the daemon and wait until it answers Host.ping.

        Returns the seconds it took.
        """
        from hostagent.client import Client

        start = time.monotonic()
        cmd = [
            *entry_point("hostagentd", "hostagent.daemon"),
            "--config",
            str(self.config_path),
        ]
        log("$ " + " ".join(cmd) + (f"  (env {env})" if env else ""))
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, **(env or {})},
            )

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"hostagentd exited {self.proc.returncode} at start-up"
                )
            try:
                with Client(self.socket, timeout=5) as c:
                    return bool(c.call("Host.ping"))
            except OSError:
                return False

        wait_for(answers, timeout=timeout, what="hostagentd answering")
        return round(time.monotonic() - start, 3)

    def client(self, timeout: float = 300) -> Any:
        """A client connected to the agent's Unix socket."""
        from hostagent.client import Client

        return Client(self.socket, timeout=timeout)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``hostagent-client --socket ... ARGS`` (no check)."""
        return sh(
            *entry_point("hostagent-client", "hostagent.cli"),
            "--socket",
            self.socket,
            *args,
            check=False,
        )

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM the daemon and wait; its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for the daemon to exit by itself; its exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)


def new_vol_id() -> str:
    """A fresh volume id (canonical lower-case UUID)."""
    return str(uuid.uuid4())


def volumes_info(client: Any, vol_id: str) -> list[dict[str, Any]]:
    """``volumes_info`` for one volume."""
    return list(client.call("ManagedVolume.volumes_info", [[vol_id]]))


def managed_links(agent: Agent) -> list[str]:
    """Managed symlinks present under the agent's run_dir."""
    root = Path(agent.socket).parent / "volumes"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def note_multipath_attach(
    case: Case, client: Any, vol_id: str, result: dict[str, Any], paths: int
) -> None:
    """Record where the agent's attach over multipath put ``vol_id``.

    The volume, the answer, the map's wwid and dm name, its paths once
    ``paths`` of them joined, where the path and the managed link lead,
    and what volumes_info says.
    """
    case.data["vol_id"] = vol_id
    case.data["result"] = result
    wwid = result["attachment"].get("multipath_id")
    case.data["wwid"] = wwid
    dm = dm_by_uuid(f"mpath-{wwid}")
    case.data["dm_name"] = dm
    case.data["dm_slaves"] = wait_slaves(dm, paths)
    case.data["managed_realpath"] = os.path.realpath(result["managed_path"])
    case.data["path_realpath"] = os.path.realpath(result["path"])
    case.data["info"] = volumes_info(client, vol_id)
