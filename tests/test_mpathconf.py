"""hostagent.mpathconf: multipath.conf files, drop-ins, show config."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import need
from support import ROOT

from hostagent import mpathconf
from hostagent.mpathconf import MultipathSettings

CONTRIB = ROOT / "contrib"
DROPIN = CONTRIB / "multipath-hostagent.conf"

GOOD = """\
# VDSM REVISION 2.2
defaults {
    polling_interval            5
    no_path_retry               16
    user_friendly_names         no
    flush_on_last_del           always
}
overrides {
    no_path_retry   16
}
"""


def settings(tmp: Path, main: str | None, **dropins: str) -> MultipathSettings:
    """read_settings over ``tmp/multipath.conf`` and ``tmp/conf.d``."""
    conf_dir = tmp / "conf.d"
    conf_dir.mkdir(exist_ok=True)
    if main is not None:
        (tmp / "multipath.conf").write_text(main)
    for name, text in dropins.items():
        (conf_dir / name).write_text(text)
    return mpathconf.read_settings(
        tmp / "multipath.conf", conf_dir, command=None
    )


def about(s: MultipathSettings, key: str) -> list[str]:
    """The problems that name ``key``."""
    return [p for p in s.problems if key in p]


def test_vdsm_settings_are_fine(tmp_path: Path) -> None:
    s = settings(tmp_path, GOOD)
    assert s.problems == ()
    assert s.ok
    assert (s.user_friendly_names, s.no_path_retry, s.flush_on_last_del) == (
        "no",
        "16",
        "always",
    )
    assert s.source == str(tmp_path / "multipath.conf")


def test_no_files_is_built_in_defaults(tmp_path: Path) -> None:
    s = settings(tmp_path, None)
    assert s.source.startswith("built-in defaults")
    assert s.user_friendly_names is None
    assert about(s, "user_friendly_names") == []
    assert about(s, "no_path_retry") == [
        "no_path_retry is not set (maps may queue I/O forever)"
    ]
    assert len(about(s, "flush_on_last_del")) == 1
    assert not s.ok


def test_friendly_names(tmp_path: Path) -> None:
    main = GOOD.replace("user_friendly_names         no", "")
    yes = "defaults {\n    user_friendly_names yes\n}\n"
    no = "defaults {\n    user_friendly_names no\n}\n"
    # Later drop-ins (by name) win over earlier ones and the main file.
    s = settings(tmp_path, main, **{"10-a.conf": yes, "20-b.conf": no})
    assert s.user_friendly_names == "no"
    assert s.ok
    (tmp_path / "conf.d/30-c.conf").write_text(yes)
    s = settings(tmp_path, None)
    assert s.user_friendly_names == "yes"
    assert "mpathN" in about(s, "user_friendly_names")[0]
    # Not a .conf file: multipath does not read it.
    (tmp_path / "conf.d/30-c.conf").rename(tmp_path / "conf.d/30-c.bak")
    assert settings(tmp_path, None).ok


def test_no_path_retry_queue(tmp_path: Path) -> None:
    s = settings(tmp_path, GOOD.replace("no_path_retry   16", ""))
    # Bounded in defaults, but files cannot show the built-in table.
    assert "not set in overrides" in about(s, "no_path_retry")[0]
    s = settings(
        tmp_path, GOOD.replace("no_path_retry   16", "no_path_retry queue")
    )
    assert s.no_path_retry == "queue"
    assert about(s, "no_path_retry") == [
        "no_path_retry is queue (I/O queues forever with all paths down)"
        " (overrides)"
    ]
    s = settings(tmp_path, GOOD.replace("16", "fail"))
    assert s.no_path_retry == "fail"
    assert s.ok


def test_no_path_retry_bound(tmp_path: Path) -> None:
    s = settings(tmp_path, GOOD.replace("16", "100"))
    assert "500 s of queueing" in about(s, "no_path_retry")[0]
    s = settings(tmp_path, GOOD.replace("16", "100").replace("5", "1"))
    assert s.ok


def test_device_entries_beat_defaults(tmp_path: Path) -> None:
    devices = """\
devices {
    device {
        vendor "NETAPP"
        product "LUN.*"
        no_path_retry queue
        user_friendly_names yes
    }
}
"""
    s = settings(tmp_path, GOOD + devices)
    # overrides sets no_path_retry: the entry's queue does not count.
    assert about(s, "no_path_retry") == []
    [problem] = about(s, "user_friendly_names")
    assert "device NETAPP/LUN.*" in problem
    assert "set it in overrides" in problem
    s = settings(tmp_path, GOOD.replace("no_path_retry   16", "") + devices)
    assert any("NETAPP" in p for p in about(s, "no_path_retry"))


def test_flush_on_last_del(tmp_path: Path) -> None:
    for value, ok in [("yes", True), ("always", True), ("no", False)]:
        s = settings(tmp_path, GOOD.replace("always", value))
        assert s.flush_on_last_del == value
        assert s.ok is ok, s.problems
    s = settings(tmp_path, GOOD.replace("flush_on_last_del", "#"))
    assert "not set" in about(s, "flush_on_last_del")[0]


def test_alias_renames_a_map(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        GOOD + 'multipaths {\n multipath {\n  wwid "3600a"\n'
        "  alias data1\n }\n}\n",
    )
    [problem] = s.problems
    assert "3600a" in problem
    assert "data1" in problem


def test_parser_syntax() -> None:
    text = """\
! old-style comment
defaults
{
    polling_interval 10  # trailing comment
    path_selector "service-time 0"
    prio_args "a ""quoted"" word"
}
blacklist { devnode "^rbd[0-9]*" }
"""
    [defaults, blacklist] = mpathconf.parse(text)
    assert defaults.name == "defaults"
    assert defaults.attrs == {
        "polling_interval": "10",
        "path_selector": "service-time 0",
        "prio_args": 'a "quoted" word',
    }
    assert blacklist.attrs == {"devnode": "^rbd[0-9]*"}


def test_contrib_dropin_is_enough(tmp_path: Path) -> None:
    """The sample drop-in fixes a host that has no multipath.conf."""
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    shutil.copy(DROPIN, conf_dir / "hostagent.conf")
    s = mpathconf.read_settings(
        tmp_path / "multipath.conf", conf_dir, command=None
    )
    assert s.ok, s.problems


def multipath_t(etc: Path) -> str:
    """``multipath -t`` as multipath-tools reads ``etc`` for /etc.

    A private mount namespace puts ``etc`` over /etc for this one
    command, so the host's own /etc is neither read nor touched.
    """
    need("multipath", "unshare")
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            'mount --bind "$0" /etc && exec multipath -t',
            str(etc),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "invalid" not in done.stderr.lower(), done.stderr
    return done.stdout


def test_real_multipath_reads_the_dropin(tmp_path: Path) -> None:
    """multipath-tools itself, with its built-in device table."""
    etc = tmp_path / "etc"
    (etc / "multipath/conf.d").mkdir(parents=True)
    bare = mpathconf.check(
        config_of(multipath_t(etc)), "multipath -t", full=True
    )
    # The built-in table of every multipath-tools release has arrays
    # that queue forever; without overrides they are named.
    assert any("queue" in p for p in about(bare, "no_path_retry"))
    assert not bare.ok
    shutil.copy(DROPIN, etc / "multipath/conf.d/hostagent.conf")
    fixed = mpathconf.check(
        config_of(multipath_t(etc)), "multipath -t", full=True
    )
    assert fixed.problems == ()
    assert (fixed.user_friendly_names, fixed.no_path_retry) == ("no", "16")


def config_of(text: str) -> mpathconf.Config:
    """A Config from ``show config`` style text."""
    cfg = mpathconf.Config()
    cfg.add(mpathconf.parse(text))
    assert cfg.defaults, "no defaults section parsed"
    assert cfg.devices, "no built-in device table parsed"
    return cfg


def test_command_first_then_files(tmp_path: Path) -> None:
    (tmp_path / "multipath.conf").write_text(GOOD)
    conf_dir = tmp_path / "conf.d"
    # multipathd not running (here: a command that fails or is absent).
    for command in (["false"], [str(tmp_path / "no-such-multipathd")]):
        s = mpathconf.read_settings(
            tmp_path / "multipath.conf", conf_dir, command=command
        )
        assert s.source == str(tmp_path / "multipath.conf")
        assert s.ok
    # A daemon that answers is believed over the files.
    script = tmp_path / "show-config"
    script.write_text(
        "#!/bin/sh\n"
        "printf 'defaults {\\n\\tuser_friendly_names \"yes\"\\n}\\n'\n"
    )
    script.chmod(0o755)
    s = mpathconf.read_settings(
        tmp_path / "multipath.conf", conf_dir, command=[str(script)]
    )
    assert s.source == str(script)
    assert s.user_friendly_names == "yes"


@pytest.mark.parametrize("value", ["queue", "0x10", "-1"])
def test_no_path_retry_not_a_bound(tmp_path: Path, value: str) -> None:
    s = settings(tmp_path, GOOD.replace("16", value))
    assert about(s, "no_path_retry")
