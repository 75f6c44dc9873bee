"""Config loading: defaults, every key checked, errors name the key."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import HOSTAGENTD, load_config

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
    path = Path(__file__).resolve().parent.parent / "contrib/hostagent.toml"
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
