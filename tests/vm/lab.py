"""Boot a qemu guest that runs one job script against real transports.

The guest is a Debian kernel (unpacked by ``tests/vm/setup.sh`` into
``.cache/vm``) under TCG.  Its root is the host's ``/`` shared read-only
over virtio-9p with a tmpfs overlay on top, so the host's packages, the
repository and its virtualenv are all usable in the guest at the same
paths, and nothing the guest does touches the host.  A second 9p share,
mounted at ``/lab`` in the guest, carries the job description in and the
results out: the job writes one JSON file per case to ``/lab/results``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("LAB_CACHE", REPO / ".cache" / "vm"))
GUEST_INIT = HERE / "guest" / "init.sh"
# Jobs whose first lines say "# lab-init: systemd" boot a real systemd.
SYSTEMD_INIT = HERE / "guest" / "init-systemd.sh"
_INIT_MARK = re.compile(r"^# lab-init: (\S+)$", re.MULTILINE)
QEMU = "qemu-system-x86_64"

# A marker the guest init prints with its uptime, e.g.
# "LAB: 5.93 guest init started".
_MARK = re.compile(r"^LAB: (\d+\.\d+) (.*)$", re.MULTILINE)


class LabUnavailable(RuntimeError):
    """The lab is not set up on this machine (run tests/vm/setup.sh)."""


@dataclass
class GuestRun:
    """What one guest run left behind."""

    lab_dir: Path
    status: int | None
    """The job's exit status; None when it never reported one."""
    console: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Case name -> the JSON the guest wrote to results/<name>.json."""
    wall_seconds: float = 0.0
    timed_out: bool = False
    marks: dict[str, float] = field(default_factory=dict)
    """Guest uptime at each "LAB:" marker, e.g. "guest init started"."""

    @property
    def boot_seconds(self) -> float | None:
        """Guest uptime when its init started: kernel plus initramfs."""
        return self.marks.get("guest init started")

    @property
    def console_path(self) -> Path:
        """The full console log on the host."""
        return self.lab_dir / "console.log"

    def console_tail(self, lines: int = 200) -> str:
        """The last lines of the console, for failure reports."""
        return "\n".join(self.console.splitlines()[-lines:])

    def case(self, name: str) -> dict[str, Any]:
        """The result of one case; AssertionError if the guest wrote none."""
        if name not in self.results:
            raise AssertionError(
                f"guest wrote no result for case {name!r} "
                f"(status={self.status}, timed_out={self.timed_out}); "
                f"console: {self.console_path}"
            )
        return self.results[name]

    def case_ok(self, name: str) -> dict[str, Any]:
        """The data of a case that must have succeeded in the guest.

        AssertionError carrying the guest's traceback otherwise, so a
        test report says what went wrong inside the guest.
        """
        result = self.case(name)
        if not result.get("ok"):
            raise AssertionError(
                f"guest case {name} failed:\n{result.get('error')}"
            )
        return dict(result["data"])


def kernel_version() -> str:
    """The kernel release setup.sh prepared, e.g. "6.1.0-56-amd64"."""
    try:
        return (CACHE / "kernel.version").read_text().strip()
    except FileNotFoundError:
        raise LabUnavailable(
            f"no kernel in {CACHE}; run tests/vm/setup.sh"
        ) from None


def check_ready() -> None:
    """Raise LabUnavailable unless kernel, initramfs and qemu are there."""
    kver = kernel_version()
    needed = [
        CACHE / "kernel" / "boot" / f"vmlinuz-{kver}",
        CACHE / f"initrd-{kver}.img",
        CACHE / "kernel" / "lib" / "modules" / kver / "modules.dep",
    ]
    for path in needed:
        if not path.exists():
            raise LabUnavailable(f"{path} is missing; run tests/vm/setup.sh")
    if shutil.which(QEMU) is None:
        raise LabUnavailable(f"{QEMU} not found; run tests/vm/setup.sh")


def guest_init(script: Path) -> Path:
    """The guest's PID 1 for ``script``: init.sh, or init-systemd.sh for
    a job whose first lines carry ``# lab-init: systemd``."""
    with open(script, errors="replace") as f:
        head = "".join(f.readline() for _ in range(5))
    mark = _INIT_MARK.search(head)
    if mark is None:
        return GUEST_INIT
    if mark[1] != "systemd":
        raise ValueError(f"{script}: unknown lab-init {mark[1]!r}")
    return SYSTEMD_INIT


def qemu_command(
    lab_dir: Path,
    *,
    memory_mb: int,
    cpus: int,
    cmdline: str = "",
    init: Path = GUEST_INIT,
) -> list[str]:
    """The qemu command line for one run sharing ``lab_dir`` as /lab."""
    kver = kernel_version()
    append = " ".join(
        [
            "console=ttyS0",
            "panic=-1",  # a panic reboots, and -no-reboot turns that into exit
            "loglevel=4",
            f"lab.init={init}",
            cmdline,
        ]
    ).strip()
    return [
        QEMU,
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        str(cpus),
        "-m",
        str(memory_mb),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        # No network device at all: every transport runs over the guest's
        # own loopback or a veth pair inside the guest.
        "-nic",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{lab_dir / 'console.log'}",
        "-kernel",
        str(CACHE / "kernel" / "boot" / f"vmlinuz-{kver}"),
        "-initrd",
        str(CACHE / f"initrd-{kver}.img"),
        "-append",
        append,
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,"
        "readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={lab_dir},mount_tag=lab,security_model=none,"
        "multidevs=remap",
    ]


def run_guest(
    script: Path | str,
    lab_dir: Path,
    *,
    timeout: float = 600.0,
    memory_mb: int = 2048,
    cpus: int = 2,
    env: dict[str, str] | None = None,
    python: str | None = None,
) -> GuestRun:
    """Boot a guest, run ``script`` in it as root, return what it left.

    ``script`` is a path on the host (visible at the same path in the
    guest); ``.py`` runs with ``python`` (default: this interpreter, so
    the guest sees the same virtualenv), anything else with bash.  The
    guest's PID 1 is guest/init.sh, or a real systemd for a script
    marked ``# lab-init: systemd`` (see :func:`guest_init`).
    ``lab_dir`` must be empty or absent; it becomes /lab in the guest.
    ``env`` is exported to the job.  The guest's own timeout is
    ``timeout`` less a margin; qemu is killed at ``timeout`` regardless.
    """
    check_ready()
    script = Path(script).resolve()
    lab_dir = Path(lab_dir).resolve()
    lab_dir.mkdir(parents=True, exist_ok=True)
    (lab_dir / "results").mkdir(exist_ok=True)
    kver = kernel_version()
    job = {
        "LAB_SCRIPT": str(script),
        "LAB_PYTHON": python or sys.executable,
        "LAB_REPO": str(REPO),
        "LAB_KDIR": str(CACHE / "kernel"),
        "LAB_KVER": kver,
        "LAB_TIMEOUT": str(int(max(timeout - 30, 30))),
        # The repository on the path: guest jobs import tests.vm.guest
        # helpers and (later) the agent itself.
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        **(env or {}),
    }
    (lab_dir / "job.env").write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in job.items())
    )
    cmd = qemu_command(
        lab_dir, memory_mb=memory_mb, cpus=cpus, init=guest_init(script)
    )
    (lab_dir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")

    start = time.monotonic()
    timed_out = False
    with open(lab_dir / "qemu.log", "wb") as qlog:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
    wall = time.monotonic() - start

    console = _read_text(lab_dir / "console.log")
    qemu_log = _read_text(lab_dir / "qemu.log")
    if qemu_log.strip():
        console += "\n--- qemu stderr ---\n" + qemu_log
    status_text = _read_text(lab_dir / "exit_status").strip()
    results: dict[str, dict[str, Any]] = {}
    for path in sorted((lab_dir / "results").glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except ValueError as exc:
            results[path.stem] = {"ok": False, "error": f"bad JSON: {exc}"}
    return GuestRun(
        lab_dir=lab_dir,
        status=int(status_text) if status_text.isdigit() else None,
        console=console,
        results=results,
        wall_seconds=wall,
        timed_out=timed_out,
        marks={m[2]: float(m[1]) for m in _MARK.finditer(console)},
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def main(argv: list[str] | None = None) -> int:
    """Run one guest job by hand: ``python tests/vm/lab.py SCRIPT [DIR]``."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("script", type=Path)
    parser.add_argument("lab_dir", type=Path, nargs="?")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    lab_dir = args.lab_dir or Path(tempfile.mkdtemp(prefix="lab-"))
    run = run_guest(args.script, lab_dir, timeout=args.timeout)
    print(run.console)
    for name, result in run.results.items():
        print(f"{name}: {json.dumps(result, indent=2)}")
    print(
        f"status={run.status} timed_out={run.timed_out} "
        f"boot={run.boot_seconds}s wall={run.wall_seconds:.1f}s "
        f"dir={lab_dir}"
    )
    return 0 if run.status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
