"""Secrets never leave in logs or results."""

from __future__ import annotations

import logging
import re

from hypothesis import given
from hypothesis import strategies as st

from hostagent.redact import MASK, Scrubber, ScrubFilter, is_secret_key, redact


def test_secret_keys() -> None:
    for key in (
        "auth_password",
        "AUTH_PASSWORD",
        "auth_username",
        "discovery_auth_password",
        "discovery_auth_username",
        "secret",
        "keyring",
        "token",
        "access_token",
        "private_key",
    ):
        assert is_secret_key(key), key
    for key in ("target_iqn", "target_lun", "device_path", "secret_type"):
        assert not is_secret_key(key), key


def test_redact_nested() -> None:
    data = {
        "driver_volume_type": "iscsi",
        "data": {
            "auth_password": "p",
            "target_iqn": "iqn",
            "hosts": [{"Token": "t", "name": "h"}],
        },
    }
    assert redact(data) == {
        "driver_volume_type": "iscsi",
        "data": {
            "auth_password": MASK,
            "target_iqn": "iqn",
            "hosts": [{"Token": MASK, "name": "h"}],
        },
    }
    assert data["data"]["auth_password"] == "p"  # a copy was masked


def test_scrubber_erases_remembered_values_from_text() -> None:
    s = Scrubber()
    s.remember({"data": {"auth_password": "hunter2", "secret": "abc-hunter"}})
    text = "iscsiadm -n node.session.auth.password -v hunter2 abc-hunter"
    assert s.scrub(text) == (
        "iscsiadm -n node.session.auth.password -v *** ***"
    )


def test_scrub_filter_covers_args_and_tracebacks() -> None:
    s = Scrubber()
    s.remember({"auth_password": "sekrit99"})
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "cmd %s", ("pw=sekrit99",), None
    )
    try:
        raise ValueError("failed with sekrit99")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    ScrubFilter(s).filter(record)
    text = logging.Formatter().format(record)
    assert "sekrit99" not in text
    assert "pw=***" in text


def test_scrub_data_masks_keys_and_scrubs_strings_in_one_walk() -> None:
    s = Scrubber()
    s.remember({"auth_password": "hunter2"})
    data = {
        "driver_volume_type": "iscsi",
        "data": {
            "auth_password": "hunter2",
            "auth_username": None,
            "target_portals": ["p1", "x-hunter2-y"],
            "hosts": [{"token": 5, "name": "hunter2"}],
            "target_lun": 3,
        },
    }
    assert s.scrub_data(data) == {
        "driver_volume_type": "iscsi",
        "data": {
            "auth_password": MASK,
            "auth_username": None,
            "target_portals": ["p1", "x-***-y"],
            "hosts": [{"token": MASK, "name": MASK}],
            "target_lun": 3,
        },
    }
    assert data["data"]["auth_password"] == "hunter2"  # a copy was made
    assert Scrubber().scrub_data(data)["data"]["hosts"][0]["name"] == (
        "hunter2"
    )


@given(
    st.lists(st.text("ab.*\\", min_size=1, max_size=6), min_size=1),
    st.lists(st.text("ab.*\\x", max_size=20), max_size=10),
)
def test_scrub_matches_the_longest_secret_first(
    secrets: list[str], texts: list[str]
) -> None:
    """The trie pattern means what a longest-first alternation means."""
    s = Scrubber()
    s.remember({"password": secrets})
    plain = re.compile(
        "|".join(map(re.escape, sorted(set(secrets), key=len, reverse=True)))
    )
    for text in texts:
        assert s.scrub(text) == plain.sub(MASK, text)


def test_scrub_data_forgets_nothing_learned_later() -> None:
    s = Scrubber()
    s.remember({"auth_password": "first-secret"})
    data = {"note": "first-secret and second-secret"}
    assert s.scrub_data(data) == {"note": "*** and second-secret"}
    s.remember({"auth_password": "second-secret"})
    assert s.scrub_data(data) == {"note": "*** and ***"}


def test_many_secrets() -> None:
    s = Scrubber()
    secrets = [f"pw-{i:05d}-{i * 7919 % 10007:05d}" for i in range(3000)]
    s.remember({"auth_password": secrets})
    text = " ".join(secrets[::100]) + " pw-00000-00000x"
    assert s.scrub(text) == " ".join([MASK] * 30) + f" {MASK}x"
