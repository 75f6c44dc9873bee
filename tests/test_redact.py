"""Secrets never leave in logs or results."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostagent.redact import (
    MASK,
    MIN_SCRUB_LENGTH,
    Scrubber,
    ScrubFilter,
    is_secret_key,
    redact,
    secret_values,
)


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


@pytest.mark.parametrize(
    "key",
    [
        "AuthPassword",
        "authPassword",
        "privateKey",
        "PrivateKey",
        "auth-password",
        "auth.password",
        "AUTH PASSWORD",
        "Password ",
        " password",
        "\tpassword\n",
        "CHAPSecret",
        "chapSecret",
        "KeyRing",
        "secretUuid",
        "passwd",
        "passPhrase",
        "apiKey",
        "userName",
        "credentials",
        "Credentials",
        "creds",
        "auth",
        "AUTH",
        "secrets",
        "keys",
        "\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44",  # full-width
    ],
)
def test_secret_keys_in_any_spelling(key: str) -> None:
    assert is_secret_key(key), key


@pytest.mark.parametrize(
    "key",
    [
        "secretType",
        "SECRET_TYPE",
        "keyId",
        "auth_method",
        "authMethod",
        "auth_enabled",
        "encryption_key_id",
        "monkey",
        "volume_name",
        "cluster_name",
        "driver_volume_type",
        "hosts",
        "pw",
    ],
)
def test_keys_that_are_not_secrets(key: str) -> None:
    assert not is_secret_key(key), key


def test_credential_subtrees_are_masked_whole() -> None:
    data = {
        "data": {
            "target_iqn": "iqn",
            "credentials": {"pw": "p1", "user": "u1"},
            "auth": {"method": "chap", "value": "v1"},
            "secrets": ["s1", "s2"],
            "nested": [{"Password ": "p2", "privateKey": "k1"}],
        }
    }
    assert redact(data) == {
        "data": {
            "target_iqn": "iqn",
            "credentials": MASK,
            "auth": MASK,
            "secrets": MASK,
            "nested": [{"Password ": MASK, "privateKey": MASK}],
        }
    }
    long = {"credentials": {"pw": "subtreePw-123", "n": 7}}
    assert secret_values(long) == {"subtreePw-123"}


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


def test_scrubber_erases_held_values_from_text() -> None:
    s = Scrubber()
    s.hold(
        "v1", {"data": {"auth_password": "hunter2", "secret": "abc-hunter"}}
    )
    text = "iscsiadm -n node.session.auth.password -v hunter2 abc-hunter"
    assert s.scrub(text) == (
        "iscsiadm -n node.session.auth.password -v *** ***"
    )


def test_short_numeric_and_boolean_secrets_change_no_text() -> None:
    """The audit's case: a password "0" turned every zero into ***."""
    s = Scrubber()
    info = {
        "driver_volume_type": "iscsi",
        "data": {
            "target_portal": "10.0.0.1:3260",
            "auth_password": "0",
            "auth_username": "chap1",  # 5 characters: one too few
            "secret": 123456,
            "token": True,
        },
    }
    s.hold("v1", info)
    assert s.known() == frozenset()
    assert not s.active
    text = "10.0.0.1:3260 /dev/loop0 chap1 123456 True"
    assert s.scrub(text) == text
    # Structured data still hides every one of them, by key.
    assert s.scrub_data(info)["data"] == {
        "target_portal": "10.0.0.1:3260",
        "auth_password": MASK,
        "auth_username": MASK,
        "secret": MASK,
        "token": MASK,
    }
    assert redact(info) == s.scrub_data(info)
    s.hold("v2", {"auth_password": "x" * MIN_SCRUB_LENGTH})
    assert s.known() == {"x" * MIN_SCRUB_LENGTH}


def test_scrub_filter_covers_args_and_tracebacks() -> None:
    s = Scrubber()
    s.hold("v1", {"auth_password": "sekrit99"})
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
    s.hold("v1", {"auth_password": "hunter2"})
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


def plain(secrets: Iterable[str]) -> re.Pattern[str]:
    """The longest-first alternation: what scrubbing must mean."""
    ordered = sorted(set(secrets), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered)))


# Few characters, so that secrets often contain or prefix each other.
SECRET = st.text("ab.*\\", min_size=MIN_SCRUB_LENGTH, max_size=9)


@settings(deadline=None)  # a busy machine is slow, not wrong
@given(st.lists(SECRET, min_size=1), st.lists(st.text("ab.*\\x", max_size=30)))
def test_scrub_matches_the_longest_secret_first(
    secrets: list[str], texts: list[str]
) -> None:
    """The trie pattern means what a longest-first alternation means,
    whether the secrets are in the main pattern or still recent ones."""
    recent = Scrubber(merge_delay=3600)
    recent.hold("v", {"password": secrets})
    merged = Scrubber(merge_delay=3600)
    merged.hold_many({"v": {"password": secrets}}.items())
    for text in texts:
        expected = plain(secrets).sub(MASK, text)
        assert recent.scrub(text) == expected
        assert merged.scrub(text) == expected


TOKEN = st.text("abc", min_size=MIN_SCRUB_LENGTH, max_size=9)


@settings(deadline=None)
@given(
    st.lists(TOKEN, min_size=1, max_size=8),
    st.lists(TOKEN, min_size=1, max_size=8),
    st.lists(TOKEN, max_size=4),
    st.randoms(use_true_random=False),
)
def test_every_secret_is_masked_whole_across_both_patterns(
    old: list[str], new: list[str], forgotten: list[str], rnd: Any
) -> None:
    """Secrets compiled (old) and learned since (new), that contain each
    other: a text of secrets and other words shows each secret as ***,
    whole, and a forgotten secret as itself."""
    # Some new ones inside old ones, and the other way round.
    new += [
        o[1 : 1 + MIN_SCRUB_LENGTH] for o in old if len(o) > MIN_SCRUB_LENGTH
    ][:2]
    old += [f"a{n}b" for n in new[:2]]
    s = Scrubber(merge_delay=3600)
    s.hold_many(
        {"old": {"password": old}, "gone": {"password": forgotten}}.items()
    )
    s.hold("new", {"password": new})
    s.release("gone")
    held = set(old) | set(new)
    words = [*held, *forgotten, "abcabcabcx", "ab"]
    rnd.shuffle(words)
    shown = s.scrub(" ".join(words)).split(" ")
    for word, out in zip(words, shown, strict=True):
        if word in held:
            assert out == MASK, (word, out)
        elif plain(held).search(word) is None:
            assert out == word  # forgotten, and no held one inside
        else:
            assert not any(h in out for h in held), (word, out)


def test_a_compiled_keyring_holding_a_new_user_name_is_masked_whole() -> None:
    s = Scrubber(merge_delay=3600)
    keyring = "[client.cinder]\n\tkey = AQBxyz123+abc=="
    s.hold_many({"v1": {"keyring": keyring}}.items())
    s.hold("v2", {"auth_username": "cinder"})
    assert s.scrub(f"x {keyring} y cinder z") == "x *** y *** z"


def test_secrets_are_held_by_owners_and_forgotten_with_the_last() -> None:
    s = Scrubber(merge_delay=3600)
    s.hold_many(
        {
            "v1": {"auth_password": "shared-pass", "auth_username": "u-one1"},
            "v2": {"auth_password": "shared-pass", "auth_username": "u-two2"},
        }.items()
    )
    text = "shared-pass u-one1 u-two2 u-new33"
    s.hold("v3", {"auth_username": "u-new33"})  # a recent one
    assert s.scrub(text) == "*** *** *** ***"
    s.release("v1")
    assert s.scrub(text) == "*** u-one1 *** ***"
    # Still in the compiled pattern, but forgotten all the same.
    s.release("v2")
    assert s.scrub(text) == "shared-pass u-one1 u-two2 ***"
    s.hold("v3", {"auth_username": "u-other"})  # v3's info changed
    assert s.scrub(text) == text
    s.release("v3")
    assert not s.active or s.scrub(text) == text
    assert s.known() == frozenset()
    s.flush()
    assert not s.active


def test_holding_lasts_for_the_block() -> None:
    s = Scrubber(merge_delay=3600)
    with pytest.raises(RuntimeError), s.holding({"auth_password": "in-call"}):
        assert s.scrub("a in-call b") == "a *** b"
        raise RuntimeError
    assert s.scrub("a in-call b") == "a in-call b"
    with s.holding(None):
        assert not s.active


def test_the_merge_thread_compiles_what_is_held() -> None:
    s = Scrubber(merge_delay=0.01)
    s.hold("v1", {"auth_password": "first-secret"})
    s.hold("v2", {"auth_password": "second-secret"})
    s.release("v1")
    # The merge thread recompiles a moment later; it must not change the
    # meaning.  Generous bound: this only waits for the thread to run.
    deadline = time.monotonic() + 30
    while not s.settled() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.settled()
    assert s.scrub("first-secret second-secret") == "first-secret ***"


def test_many_secrets() -> None:
    s = Scrubber()
    secrets = [f"pw-{i:05d}-{i * 7919 % 10007:05d}" for i in range(3000)]
    s.hold_many({"v": {"auth_password": secrets}}.items())
    text = " ".join(secrets[::100]) + " pw-00000-00000x"
    assert s.scrub(text) == " ".join([MASK] * 30) + f" {MASK}x"
