"""Config loading: defaults, every key checked, errors name the key."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HOSTAGENTD, load_config
from support import ROOT

from hostagent import config
from hostagent.config import ConfigError


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    c = load_config(tmp_path, "")
    assert c == config.Config()
    assert c.server.unix_socket == "/run/hostagent/hostagent.sock"
    assert c.server.max_message_bytes == 1048576
    assert c.brick.drivers == list(config.DEFAULT_DRIVERS)
    assert "aoe" in config.KNOWN_DRIVERS
    assert "aoe" not in c.brick.drivers
    assert c.db_path == Path("/var/lib/hostagent/hostagent.db")


def test_design_example_loads(tmp_path: Path) -> None:
    c = load_config(
        tmp_path,
        """
[server]
unix_socket = "/run/hostagent/hostagent.sock"
socket_group = ""
tls_listen = ""
tls_cert = "/etc/pki/hostagent/cert.pem"
tls_key = "/etc/pki/hostagent/key.pem"
tls_ca = "/etc/pki/hostagent/ca.pem"
max_message_bytes = 1048576
max_connections = 1024

[storage]
state_dir = "/var/lib/hostagent"
run_dir = "/run/hostagent"

[brick]
drivers = ["iscsi", "fibre_channel", "nvmeof", "rbd", "nfs", "local"]
multipath = true
enforce_multipath = false
my_ip = ""
device_scan_attempts = 3

[log]
level = "info"
""",
    )
    assert c == config.Config()


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[serve]\n", "[serve]"),
        ("[server]\nport = 1\n", "server.port"),
        ("[server]\nmax_connections = '5'\n", "server.max_connections"),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        ("[server]\nmax_message_bytes = 10\n", "server.max_message_bytes"),
        ("[server]\nunix_socket = 'rel.sock'\n", "server.unix_socket"),
        ("[server]\ntls_listen = 'nohost'\n", "server.tls_listen"),
        ("[brick]\nmultipath = 1\n", "brick.multipath"),
        ("[brick]\ndrivers = 'iscsi'\n", "brick.drivers"),
        ("[brick]\ndrivers = ['iscsi', 'zfs']\n", "brick.drivers[1]"),
        ("[brick]\nmy_ip = 'host'\n", "brick.my_ip"),
        (
            "[brick]\ndevice_scan_attempts = true\n",
            "brick.device_scan_attempts",
        ),
        ("[storage]\nstate_dir = 'x'\n", "storage.state_dir"),
        ("[log]\nlevel = 'loud'\n", "log.level"),
        ("server = 1\n", "[server]"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, text: str, names: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path, text)
    assert names in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")


def test_daemon_refuses_bad_config_naming_the_key(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[brick]\ndevice_scan_attempts = -1\n")
    out = subprocess.run(
        [HOSTAGENTD, "--config", str(p)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "brick.device_scan_attempts" in out.stderr


def test_check_config(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[log]\nlevel = 'debug'\n")
    out = subprocess.run(
        [HOSTAGENTD, "--config", str(p), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_contrib_config_is_the_defaults() -> None:
    """contrib/hostagent.toml documents every key with its default."""
    path = ROOT / "contrib/hostagent.toml"
    assert config.load(path) == config.Config()
    text = path.read_text()
    for section in ("server", "storage", "brick", "log"):
        cls = type(getattr(config.Config(), section))
        for key in cls.__dataclass_fields__:
            assert f"\n{key} = " in text, f"{section}.{key}"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[server]\nidle_timeout = -1\n", "server.idle_timeout"),
        ("[server]\nread_timeout = 0\n", "server.read_timeout"),
        ("[server]\nread_timeout = 'x'\n", "server.read_timeout"),
        ("[server]\nhandshake_timeout = 0\n", "server.handshake_timeout"),
        (
            "[server]\nmax_connections_per_uid = 0\n",
            "server.max_connections_per_uid",
        ),
        (
            "[server]\nmax_connections_per_subject = 0\n",
            "server.max_connections_per_subject",
        ),
        (
            "[server]\nreserved_connections = -1\n",
            "server.reserved_connections",
        ),
        ("[server]\ntls_allowed_subjects = 'a'\n", "tls_allowed_subjects"),
        ("[server]\ntls_allowed_subjects = ['']\n", "tls_allowed_subjects[0]"),
        ("[server]\ntls_allowed_subjects = [1]\n", "tls_allowed_subjects[0]"),
        (
            "[server]\ntls_listen = '*:54322'\ntls_cert = 'cert.pem'\n",
            "server.tls_cert",
        ),
    ],
)
def test_hardening_keys_are_checked(
    tmp_path: Path, text: str, names: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(names)):
        load_config(tmp_path, text)


def test_hardening_keys_load(tmp_path: Path) -> None:
    c = load_config(
        tmp_path,
        "[server]\ntls_listen = '*:54322'\nidle_timeout = 0\n"
        "read_timeout = 2.5\ntls_allowed_subjects = ['engine']\n",
    )
    assert c.server.idle_timeout == 0.0
    assert c.server.read_timeout == 2.5
    assert c.server.tls_allowed_subjects == ["engine"]


# -- storage.state_dir and storage.run_dir must be usable --------------------


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only tmpfs (root ignores file modes)."""
    d = tmp_path / "ro"
    d.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)],
        check=True,
        timeout=30,
    )
    yield d
    subprocess.run(["umount", str(d)], check=True, timeout=30)


def _dirs_config(tmp: Path, state: Path, run: Path) -> Path:
    p = tmp / "dirs.toml"
    p.write_text(
        f'[server]\nunix_socket = "{tmp / "s.sock"}"\n'
        f'[storage]\nstate_dir = "{state}"\nrun_dir = "{run}"\n'
    )
    return p


@pytest.mark.parametrize("key", ["state_dir", "run_dir"])
def test_read_only_dir_is_a_config_error(
    tmp_path: Path, read_only_dir: Path, key: str
) -> None:
    """--check-config and start-up both refuse it, naming the key, exit 2.

    Before, --check-config said OK and the daemon exited 1 with
    ``[Errno 30]`` on a file inside the directory.
    """
    dirs = {"state_dir": tmp_path / "state", "run_dir": tmp_path / "run"}
    dirs[key] = read_only_dir / "sub"
    p = _dirs_config(tmp_path, dirs["state_dir"], dirs["run_dir"])
    with pytest.raises(ConfigError, match=rf"storage\.{key} .*read-only"):
        config.check_dirs(config.load(p))
    for extra in (["--check-config"], []):
        out = subprocess.run(
            [HOSTAGENTD, "--config", str(p), *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2, (extra, out.stderr)
        assert f"storage.{key} {read_only_dir / 'sub'}" in out.stderr
        assert "read-only file system" in out.stderr
        assert "Errno" not in out.stderr
    assert not (tmp_path / "s.sock").exists()


def test_dir_under_a_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    p = _dirs_config(tmp_path, blocker / "state", tmp_path / "run")
    with pytest.raises(
        ConfigError, match=rf"storage\.state_dir .*{blocker} is not a dir"
    ):
        config.check_dirs(config.load(p))
    p = _dirs_config(tmp_path, tmp_path / "state", blocker)
    with pytest.raises(ConfigError, match=r"storage\.run_dir .*not a dir"):
        config.check_dirs(config.load(p))


def test_dirs_that_can_be_created_are_fine(tmp_path: Path) -> None:
    p = _dirs_config(tmp_path, tmp_path / "a" / "b", tmp_path / "c")
    config.check_dirs(config.load(p))
    assert not (tmp_path / "a").exists()  # checking creates nothing
