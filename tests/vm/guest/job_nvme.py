"""Guest job: NVMe/TCP through os-brick's nvmeof connector and nvmet.

Cases: nvme_tcp (attach a file-backed namespace, I/O, detach, no
controller left); lightos_agent (the agent's lightos driver: os-brick's
LightOS connector writes the discovery file, the fake discovery-client
of tests/fakelightos.py connects the subsystem through
/dev/nvme-fabrics as Lightbits' service does, and disconnects it when
detach removes the file).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

import labguest as g


def main() -> None:
    """Export a namespace with nvmet-tcp and attach it with os-brick."""
    hostnqn = g.nvme_host_ids()
    # Before the agent starts: its lightos readiness needs
    # /dev/nvme-fabrics (nvme_tcp pulls in nvme_fabrics).
    g.modprobe("nvmet", "nvmet_tcp", "nvme_tcp")
    # The lightos case's agent starts (and imports os-brick) on the
    # guest's other CPU while nvme_tcp runs: its start-up is most of
    # that case's time.
    lightos = LightosAgent()
    with g.Case("nvme_tcp") as case:
        g.brick_init()
        from os_brick.initiator import connector as brick

        with case.step("target"):
            case.data["hostnqn"] = hostnqn
            target = g.NvmetTcpTarget(
                "nqn.2014-08.org.lab:nvme", g.backing_file("nvme.img")
            )
        props: dict[str, Any] = target.connection_data()
        case.data["props"] = props
        conn = brick.InitiatorConnector.factory(
            "NVMEOF", None, use_multipath=False, device_scan_attempts=5
        )
        with case.step("connect"):
            info = conn.connect_volume(props)
        case.data["attachment"] = info
        path = info["path"]
        case.data["path_realpath"] = os.path.realpath(path)
        case.data["controllers"] = g.nvme_controllers()
        block = os.path.basename(case.data["path_realpath"])
        uuid_file = f"/sys/block/{block}/uuid"
        if os.path.exists(uuid_file):
            with open(uuid_file) as f:
                case.data["ns_uuid"] = f.read().strip()
        case.data["ns_uuid_expected"] = target.ns_uuid
        case.data["list_subsys"] = g.sh("nvme", "list-subsys").stdout
        with case.step("io"):
            case.data["io_sha256"] = g.io_check(path)
        with case.step("disconnect"):
            conn.disconnect_volume(props, info)
        case.data["controllers_after"] = g.nvme_controllers()
        case.data["path_exists_after"] = os.path.exists(path)
    case_lightos(lightos)
    g.save_artifacts("/tmp/brick.log")


def subsys_nqns() -> list[str]:
    """The subsystem NQN of every NVMe controller and subsystem present."""
    found = []
    for cls in ("nvme", "nvme-subsystem"):
        for f in Path("/sys/class", cls).glob("*/subsysnqn"):
            found.append(f.read_text().strip())
    return found


NQN = "nqn.2016-01.com.lightbitslabs:uuid:lab-lightos"


class LightosAgent:
    """The fake discovery-client and an agent with the lightos driver,
    started in the background."""

    def __init__(self) -> None:
        # The fake service lives in tests/, beside the host tests.
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from fakelightos import FakeDiscoveryClient

        self.fake = FakeDiscoveryClient(Path("/run/lab/discovery.d"), 0.1)
        self.agent = g.Agent(
            name="hostagentd-lightos",
            extra_brick='drivers = ["lightos"]\n'
            f'lightos_discovery_dir = "{self.fake.directory}"\n'
            'lightos_discovery_address = "127.0.0.1"\n'
            f"lightos_discovery_port = {self.fake.port}\n"
            "lightos_device_wait = 30\n",
        )
        self.fake.start()
        self.started: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._start, daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.started["seconds"] = self.agent.start()
            with self.agent.client() as c:
                caps = c.call("Host.getCapabilities")
            self.started["driver_status"] = caps["driver_status"]["lightos"]
        except Exception as e:
            self.started["error"] = repr(e)

    def wait(self, timeout: float = 300) -> dict[str, Any]:
        """The start's outcome; raises if the agent did not come up."""
        self.thread.join(timeout)
        if "driver_status" not in self.started:
            raise RuntimeError(f"agent start failed: {self.started}")
        return self.started


def case_lightos(bg: LightosAgent) -> None:
    """The agent's lightos driver against nvmet and the fake service."""
    fake, agent, nqn = bg.fake, bg.agent, NQN
    with g.Case("lightos_agent") as case:
        backing = g.backing_file("lightos.img")
        target = g.NvmetTcpTarget(nqn, backing, port=4421, port_id=2)
        case.data["ns_uuid"] = target.ns_uuid
        case.data["subsysnqn"] = nqn
        hostnqn = Path("/etc/nvme/hostnqn").read_text().strip()
        case.data["hostnqn"] = hostnqn
        with case.step("hostagentd"):
            started = bg.wait()
        case.data["start_seconds"] = started["seconds"]
        case.data["driver_status"] = started["driver_status"]
        conn_info = {
            "driver_volume_type": "lightos",
            "data": {
                "uuid": target.ns_uuid,
                "subsysnqn": nqn,
                "hostnqn": hostnqn,
                "lightos_nodes": {
                    "127.0.0.1": {
                        "transport_type": "tcp",
                        "target_portal": "127.0.0.1",
                        "target_port": 4421,
                    }
                },
            },
        }
        name = f"{target.ns_uuid}.conf"
        vol_id = "5b0f8a8e-5c43-4e0e-9d6b-0f0c0a11a0e5"
        with agent.client() as c:
            with case.step("attach"):
                result = c.call(
                    "ManagedVolume.attach_volume", [vol_id, conn_info]
                )
            case.data["result"] = result
            case.data["discovery_file"] = (fake.directory / name).read_text()
            case.data["entries"] = [
                [e.traddr, e.trsvcid, e.hostnqn, e.subsysnqn]
                for e in fake.entries.get(name, [])
            ]
            case.data["fake_controllers"] = fake.controllers.get(name, [])
            block = os.path.basename(os.path.realpath(result["path"]))
            sysblock = Path("/sys/block") / block
            case.data["block"] = block
            case.data["wwid"] = (sysblock / "wwid").read_text().strip()
            case.data["uuid"] = (sysblock / "uuid").read_text().strip()
            case.data["subsysnqns"] = subsys_nqns()
            with case.step("io"):
                case.data["io_sha256"] = g.io_check(result["path"])
            with open(backing, "rb") as f:
                f.seek(1 << 20)
                digest = hashlib.sha256(f.read(1 << 20)).hexdigest()
            case.data["backing_sha256"] = digest
            with case.step("detach"):
                c.call("ManagedVolume.detach_volume", [vol_id])
            with case.step("service_disconnect"):
                # The service disconnects on its own, after the file went.
                case.data["removed"] = fake.wait_for(("remove", name), 10)
                g.wait_for(
                    lambda: nqn not in subsys_nqns(),
                    timeout=10,
                    what=f"no controller or subsystem of {nqn}",
                )
            case.data["subsysnqns_after"] = subsys_nqns()
            case.data["discovery_dir_after"] = sorted(
                p.name for p in fake.directory.iterdir()
            )
            case.data["path_exists_after"] = os.path.exists(result["path"])
            case.data["info_after"] = c.call("ManagedVolume.volumes_info")
        case.data["events"] = fake.events
        case.data["connect_errors"] = fake.connect_errors
        case.data["warnings"] = fake.warnings
        case.data["requests"] = fake.requests
    agent.stop()
    fake.stop()
    g.save_artifacts(str(agent.log_path))


if __name__ == "__main__":
    main()
