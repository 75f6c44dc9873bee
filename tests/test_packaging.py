"""The RPM and the systemd units, checked with the real tools.

The RPM is built once per session with ``contrib/build-rpm.sh`` (what
``make rpm`` runs) and unpacked into a directory tree; the unit files are
then checked *as installed* in that tree:

* ``systemd-analyze verify --root=TREE``: parses every unit file (an
  unknown key, a bad value or a missing ExecStart binary in the tree is
  reported), loads the units' dependencies (the targets they name,
  copied from this host) and checks that they can be started as a
  transaction.  No systemd as PID 1 is needed; a clean run prints nothing,
  so any message fails the test.
* ``systemd-analyze security --offline``: the exposure score of the
  hardened service against the same unit with the hardening removed.
* ``systemd-tmpfiles --root`` and ``systemd-sysusers --root``: the
  directories and the group the package's entries create.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import need, short_dir, write_config
from support import ROOT

from hostagent import __version__, cmdline
from hostagent.client import Client

SITE = f"usr/lib/python{sys.version_info[0]}.{sys.version_info[1]}"
UNITS = "usr/lib/systemd/system"

REQUIRES = {
    "python3-os-brick",
    "python3-pyudev",
    "python3-peewee",
    "python3-systemd",
    "python3-jsonrpcserver",
    "iscsi-initiator-utils",
    "device-mapper-multipath",
}


def run(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd="/",
    )


@pytest.fixture(scope="session")
def rpm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The RPM, built from the work tree."""
    need("rpmbuild", "git", "tar")
    out = tmp_path_factory.mktemp("rpm")
    started = time.monotonic()
    done = run(ROOT / "contrib" / "build-rpm.sh", out)
    assert done.returncode == 0, done.stderr
    print(f"\nrpm built in {time.monotonic() - started:.1f} s")
    [rpm] = out.glob("hostagent-*.noarch.rpm")
    return rpm


@pytest.fixture(scope="session")
def tree(
    rpm_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The RPM's payload unpacked, plus the host's targets and slices.

    The targets let ``systemd-analyze verify --root`` resolve the units'
    dependencies (sockets.target, sysinit.target, ...) as on a system.
    """
    need("rpm2cpio", "cpio")
    root = tmp_path_factory.mktemp("tree")
    rpm2cpio = subprocess.Popen(
        ["rpm2cpio", str(rpm_file)], stdout=subprocess.PIPE
    )
    subprocess.run(
        ["cpio", "-idm", "--quiet"],
        stdin=rpm2cpio.stdout,
        cwd=root,
        check=True,
        timeout=60,
    )
    assert rpm2cpio.wait(10) == 0
    for unit in Path("/usr/lib/systemd/system").iterdir():
        if unit.suffix in (".target", ".slice") and not unit.is_dir():
            shutil.copy(unit, root / UNITS / unit.name, follow_symlinks=True)
    # ExecReload= runs /bin/kill, which the real system has.
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy("/bin/kill", root / "bin" / "kill")
    yield root


def rpm_query(rpm: Path, *args: str) -> list[str]:
    done = run("rpm", "-qp", *args, rpm)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


# -- the RPM ----------------------------------------------------------------


def test_spec_version_matches_the_package() -> None:
    spec = (ROOT / "hostagent.spec").read_text()
    assert re.search(rf"^Version:\s+{re.escape(__version__)}$", spec, re.M)


def test_rpm_file_list(rpm_file: Path) -> None:
    files = set(rpm_query(rpm_file, "-l"))
    print("\n".join(["", "rpm -qlp:", *sorted(files)]))
    site = f"/{SITE}/site-packages"
    expected = {
        "/usr/bin/hostagentd",
        "/usr/bin/hostagent-client",
        "/usr/lib/systemd/system/hostagent.service",
        "/usr/lib/systemd/system/hostagent.socket",
        "/usr/lib/tmpfiles.d/hostagent.conf",
        "/usr/lib/sysusers.d/hostagent.conf",
        "/etc/hostagent/hostagent.toml",
        "/usr/share/bash-completion/completions/hostagent-client",
        f"{site}/hostagent-{__version__}.dist-info/entry_points.txt",
        "/run/hostagent",
        "/var/lib/hostagent",
    }
    expected |= {
        f"{site}/{p.relative_to(ROOT).as_posix()}"
        for p in (ROOT / "hostagent").rglob("*.py")
    }
    assert expected <= files, expected - files
    # The man pages, gzipped or not as the build host's brp-compress does.
    for page in ("man8/hostagentd.8", "man1/hostagent-client.1"):
        path = f"/usr/share/man/{page}"
        assert path in files or f"{path}.gz" in files, page
    docs = set(rpm_query(rpm_file, "-d"))
    assert {
        f"/usr/share/doc/hostagent-{__version__}/{name}"
        for name in ("README.md", "engine_client.py", "hostagent.toml")
    } <= docs
    # The pages the README links to ship beside it.
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages, "no docs/*.md in the tree"
    assert {
        f"/usr/share/doc/hostagent-{__version__}/docs/{name}" for name in pages
    } <= docs
    # Nothing from the build or test machinery.
    assert not [f for f in files if "/tests/" in f or ".venv" in f]


def test_rpm_metadata(rpm_file: Path) -> None:
    [arch] = rpm_query(rpm_file, "--qf", "%{ARCH}")
    assert arch == "noarch"
    requires = {r.split()[0] for r in rpm_query(rpm_file, "-R")}
    assert requires >= REQUIRES, REQUIRES - requires
    # Site path and bytecode are the build host's Python's: the package
    # says which Python that is.  The spec declares it (rpm's automatic
    # python dependencies, where the build host has them, say the same).
    need("rpmspec")
    abi = {
        r for r in rpm_query(rpm_file, "--requires") if r.startswith("python(")
    }
    assert len(abi) == 1, abi
    (line,) = abi
    assert re.fullmatch(r"python\(abi\) = 3\.\d+", line), line
    declared = run("rpmspec", "-q", "--requires", ROOT / "hostagent.spec")
    assert line in declared.stdout.splitlines(), declared
    version = line.split()[-1]
    files = rpm_query(rpm_file, "-l")
    site = f"/usr/lib/python{version}/site-packages/hostagent/"
    assert f"{site}__init__.py" in files
    compiled = [f for f in files if f.endswith(".pyc")]
    assert compiled and all(f.startswith(site) for f in compiled)
    tag = "cpython-" + version.replace(".", "")
    assert all(f".{tag}." in f for f in compiled), compiled
    flags, modes = {}, {}
    for line in rpm_query(
        rpm_file,
        "--qf",
        "[%{FILENAMES} %{FILEMODES:perms} %{FILEFLAGS:fflags}\n]",
    ):
        name, mode, flag = (line + " ").split(" ")[:3]
        flags[name], modes[name] = flag, mode
    # c = %config, n = noreplace: an edited config survives upgrades.
    assert flags["/etc/hostagent/hostagent.toml"] == "cn"
    assert modes["/var/lib/hostagent"] == "drwx------"
    assert modes["/usr/bin/hostagentd"] == "-rwxr-xr-x"
    scripts = "\n".join(rpm_query(rpm_file, "--scripts"))
    assert "groupadd -r hostagent" in scripts
    assert "systemd-tmpfiles --create" in scripts
    assert "try-restart hostagent.service" in scripts


def test_packaged_programs_run(tree: Path) -> None:
    """The payload's own entry points, config file and modules work."""
    env = dict(os.environ, PYTHONPATH=str(tree / SITE / "site-packages"))
    # -s and a cwd outside the work tree: only the payload is importable
    # before the venv's editable install.
    py = [sys.executable, "-s"]
    done = run(
        *py, "-c", "import hostagent; print(hostagent.__file__)", env=env
    )
    assert done.stdout.startswith(str(tree)), done.stdout + done.stderr
    done = run(*py, tree / "usr/bin/hostagentd", "--version", env=env)
    assert done.stdout.strip() == f"hostagentd {__version__}", done.stderr
    config = tree / "etc/hostagent/hostagent.toml"
    done = run(
        *py,
        tree / "usr/bin/hostagentd",
        "--config",
        config,
        "--check-config",
        env=env,
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr
    done = run(
        *py,
        tree / "usr/bin/hostagent-client",
        "--socket",
        tree / "none.sock",
        "--list-methods",
        env=env,
    )
    assert "ManagedVolume attach_volume" in done.stdout, done.stderr


def _man_page(tree: Path, page: str) -> Path:
    [path] = (tree / "usr/share/man").glob(f"{page}*")
    if path.suffix == ".gz":
        plain = path.with_suffix("")
        plain.write_bytes(gzip.decompress(path.read_bytes()))
        return plain
    return path


@pytest.mark.parametrize(
    "page, build",
    [
        ("man8/hostagentd.8", cmdline.daemon_parser),
        ("man1/hostagent-client.1", cmdline.client_parser),
    ],
)
def test_man_pages(
    tree: Path, page: str, build: Callable[[], argparse.ArgumentParser]
) -> None:
    """The packaged pages render cleanly and document every option."""
    need("groff")
    path = _man_page(tree, page)
    # -ww: every warning; -z: no output, only the diagnostics.
    done = run("groff", "-man", "-ww", "-z", path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    done = run("groff", "-man", "-Tutf8", "-P", "-cbou", path)
    assert done.returncode == 0, done.stderr
    text = done.stdout.replace("\u2010", "-")
    # argparse lists its options only in this attribute.
    for action in build()._actions:
        for option in action.option_strings:
            assert re.search(rf"(^|[ ,]){re.escape(option)}\b", text, re.M), (
                option
            )
    name = path.name.rsplit(".", 1)[0]
    assert text.startswith(name.upper()), text[:80]
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS"):
        assert re.search(rf"^{section}$", text, re.M), section


def test_packaged_daemon_serves(tree: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree / SITE / "site-packages"))
    sock_dir = short_dir()
    sock = str(sock_dir / "s.sock")
    config = tmp_path / "c.toml"
    write_config(config, tmp_path, sock)
    daemon = str(tree / "usr/bin/hostagentd")
    proc = subprocess.Popen(
        [sys.executable, "-s", daemon, "--config", str(config)],
        env=env,
        cwd="/",
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with Client(sock, timeout=5) as c:
                    assert c.call("Host.ping") is True
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr
                assert time.monotonic() < deadline
                time.sleep(0.05)
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)


# -- the units --------------------------------------------------------------


def verify(tree: Path) -> subprocess.CompletedProcess[str]:
    return run(
        "systemd-analyze",
        "verify",
        f"--root={tree}",
        "--man=no",
        "hostagent.socket",
        "hostagent.service",
    )


def test_units_verify_clean(tree: Path) -> None:
    need("systemd-analyze")
    done = verify(tree)
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


@pytest.mark.parametrize(
    ("unit", "old", "new", "complaint"),
    [
        (
            "hostagent.service",
            "WatchdogSec=30s",
            "WatchdogSecs=30s",
            "Unknown key",
        ),
        ("hostagent.socket", "SocketMode=0660", "SocketMode=rw", "rw"),
        (
            "hostagent.service",
            "ExecStart=/usr/bin/hostagentd",
            "ExecStart=/usr/bin/hostagentd-missing",
            "not executable",
        ),
    ],
)
def test_units_verify_catches_mistakes(
    tree: Path, tmp_path: Path, unit: str, old: str, new: str, complaint: str
) -> None:
    """The check above can fail: the same tree with one mistake."""
    need("systemd-analyze")
    broken = tmp_path / "tree"
    shutil.copytree(tree, broken, symlinks=True)
    path = broken / UNITS / unit
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    done = verify(broken)
    assert complaint in done.stderr


def exposure(tree: Path) -> float:
    done = run(
        "systemd-analyze",
        "security",
        "--offline=yes",
        f"--root={tree}",
        "--no-pager",
        "hostagent.service",
    )
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


def test_hardening_lowers_exposure(tree: Path, tmp_path: Path) -> None:
    need("systemd-analyze")
    bare = tmp_path / "bare"
    shutil.copytree(tree, bare, symlinks=True)
    service = bare / UNITS / "hostagent.service"
    keep = ("Type=", "ExecStart=", "[")
    service.write_text(
        "\n".join(
            line
            for line in service.read_text().splitlines()
            if line.startswith(keep)
        )
        + "\n"
    )
    ours, baseline = exposure(tree), exposure(bare)
    print(f"\nexposure: hardened {ours}, without hardening {baseline}")
    assert ours < baseline - 2


def test_tmpfiles_and_sysusers(tree: Path, tmp_path: Path) -> None:
    need("systemd-tmpfiles", "systemd-sysusers")
    target = tmp_path / "t"
    shutil.copytree(tree, target, symlinks=True)
    (target / "run").mkdir(exist_ok=True)
    shutil.rmtree(target / "run" / "hostagent", ignore_errors=True)
    shutil.rmtree(target / "var" / "lib" / "hostagent", ignore_errors=True)
    done = run(
        "systemd-tmpfiles", "--create", f"--root={target}", "hostagent.conf"
    )
    assert done.returncode == 0, done.stderr
    for path, mode in (
        ("run/hostagent", 0o755),
        ("run/hostagent/volumes", 0o755),
        ("var/lib/hostagent", 0o700),
    ):
        st = (target / path).stat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == mode
    (target / "etc").mkdir(exist_ok=True)
    done = run("systemd-sysusers", f"--root={target}", "hostagent.conf")
    assert done.returncode == 0, done.stderr
    groups = (target / "etc" / "group").read_text().splitlines()
    assert any(g.startswith("hostagent:x:") for g in groups), groups
    # The socket unit uses that very group.
    assert (
        "SocketGroup=hostagent"
        in (target / UNITS / "hostagent.socket").read_text()
    )


def test_socket_unit_matches_the_default_config() -> None:
    from hostagent.config import ServerConfig

    text = (ROOT / "systemd" / "hostagent.socket").read_text()
    assert f"ListenStream={ServerConfig().unix_socket}\n" in text
    assert "SocketMode=0660\n" in text


def test_pyproject_license_is_an_spdx_string() -> None:
    """The table form is deprecated (setuptools warned on every install);
    the string form needs setuptools 77 or later to build."""
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert raw["project"]["license"] == "Apache-2.0"
    [req] = [
        r for r in raw["build-system"]["requires"] if r.startswith("setup")
    ]
    m = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", req)
    assert m and int(m.group(1)) >= 77, req
    spec = (ROOT / "hostagent.spec").read_text()
    assert re.search(r"^License:\s+Apache-2\.0$", spec, re.M)
