"""Secrets stay in the DB (0600) and nowhere else: logs, errors, results.

Every daemon here logs at debug level, where os-brick and oslo log the
commands they run and the arguments of each call; the whole log and every
answer are searched for each secret value.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent, Loops, local_info, new_vol_id, next_notification
from support import ATTACH, DETACH, INFO
from test_rbd import FakeCeph, rbd_info

from hostagent.client import RpcError

# Distinct values, so a hit names the key that leaked.
SECRETS = {
    "auth_username": "chapUser-7Kq2",
    "auth_password": "chapPass-Zr81wq",
    "discovery_auth_username": "discUser-3Hm5",
    "discovery_auth_password": "discPass-Lx47ve",
    "secret": "secret-Wn63",
    "keyring": "keyring-AQBd9",
    "token": "token-Pv58sj",
    "AUTH_PASSWORD": "upperPass-Qa19",  # the key's case does not matter
    "Token": "nestedToken-Ry40",  # nested one level down
}


def secret_data(device: str) -> dict[str, Any]:
    """A local connection info carrying every kind of secret, nested."""
    s = SECRETS
    return local_info(
        device,
        auth_method="CHAP",
        auth_username=s["auth_username"],
        auth_password=s["auth_password"],
        discovery_auth_method="CHAP",
        discovery_auth_username=s["discovery_auth_username"],
        discovery_auth_password=s["discovery_auth_password"],
        secret=s["secret"],
        extra={
            "keyring": s["keyring"],
            "AUTH_PASSWORD": s["AUTH_PASSWORD"],
            "list": [{"Token": s["Token"]}],
        },
    ) | {"token": s["token"]}


def masked(device: str) -> dict[str, Any]:
    """What volumes_info must show for :func:`secret_data`."""
    return local_info(
        device,
        auth_method="CHAP",
        auth_username="***",
        auth_password="***",
        discovery_auth_method="CHAP",
        discovery_auth_username="***",
        discovery_auth_password="***",
        secret="***",
        extra={
            "keyring": "***",
            "AUTH_PASSWORD": "***",
            "list": [{"Token": "***"}],
        },
    ) | {"token": "***"}


def leaks(text: str) -> list[str]:
    """The keys whose secret value appears in ``text``."""
    return [k for k, v in SECRETS.items() if v in text]


class Seen:
    """Everything the agent said to us, to search at the end."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def call(self, agent: Agent, method: str, params: Any = None) -> Any:
        with agent.client() as c:
            response = c.request(method, params)
        self.texts.append(json.dumps(response, ensure_ascii=False))
        if "error" in response:
            e = response["error"]
            raise RpcError(e["code"], e["message"], e.get("data"))
        return response["result"]

    def error(self, agent: Agent, method: str, params: Any) -> RpcError:
        with pytest.raises(RpcError) as e:
            self.call(agent, method, params)
        return e.value


def db_connection_info(agent: Agent, vol_id: str) -> dict[str, Any]:
    with sqlite3.connect(agent.db_path) as con:
        (text,) = con.execute(
            "SELECT connection_info FROM volume WHERE vol_id = ?", [vol_id]
        ).fetchone()
    return dict(json.loads(text))


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_secrets_of_a_local_attach(agent: Agent, loops: Loops) -> None:
    seen = Seen()
    dev = loops.create()
    vid = new_vol_id()
    info = secret_data(dev)
    seen.call(agent, ATTACH, {"vol_id": vid, "connection_info": info})
    seen.call(agent, ATTACH, [vid, info])  # idempotent re-attach
    (got,) = seen.call(agent, INFO)
    assert got["connection_info"] == masked(dev)
    assert seen.call(agent, INFO, [[vid]])[0]["connection_info"] == (
        masked(dev)
    )
    # Same volume, other secrets: refused without echoing either set.
    changed = secret_data(dev)
    changed["data"]["auth_password"] = "chapPass-other-Tt22"
    err = seen.error(agent, ATTACH, [vid, changed])
    assert err.code == 929
    # Another volume on the same device: refused, nothing echoed.
    err = seen.error(agent, ATTACH, [new_vol_id(), secret_data(dev)])
    assert err.code == 927

    # The DB keeps the real values (detach needs them), privately.
    assert db_connection_info(agent, vid) == info
    assert private(agent.db_path)
    assert private(agent.state_dir)
    for extra in ("-wal", "-shm"):
        side = agent.db_path.with_name(agent.db_path.name + extra)
        if side.exists():
            assert private(side), side

    # After a restart the agent has not been handed the secrets in this
    # run: they come from the DB and must be kept out all the same.
    agent.restart()
    assert seen.call(agent, INFO)[0]["connection_info"] == masked(dev)
    seen.call(agent, DETACH, [vid])  # os-brick logs the info it gets
    assert seen.call(agent, INFO) == []

    for text in seen.texts:
        assert leaks(text) == [], text
    assert "chapPass-other-Tt22" not in "".join(seen.texts)
    log = agent.log()
    assert "DEBUG" in log
    assert leaks(log) == []
    assert "chapPass-other-Tt22" not in log


# This run's own target name: node records are host-wide.
CHAP_IQN = f"iqn.2026-11.test.hostagent:chap-nothing-{uuid.uuid4().hex[:12]}"
CHAP_PORTAL = {
    "driver_volume_type": "iscsi",
    "data": {
        "target_portal": "127.0.0.1:3260",
        "target_iqn": CHAP_IQN,
        "target_lun": 0,
        "auth_method": "CHAP",
        "auth_username": SECRETS["auth_username"],
        "auth_password": SECRETS["auth_password"],
        "discovery_auth_method": "CHAP",
        "discovery_auth_username": SECRETS["discovery_auth_username"],
        "discovery_auth_password": SECRETS["discovery_auth_password"],
    },
}


@pytest.mark.parametrize("multipath", [True, False], ids=["mpath", "single"])
def test_secrets_of_a_failing_iscsi_chap_attach(
    agent_factory: Any, multipath: bool
) -> None:
    """os-brick puts CHAP values on iscsiadm command lines, and logs them.

    Nothing listens on 127.0.0.1:3260, so the attach fails inside
    os-brick after it has configured the node (or discovery) record with
    the credentials.
    """
    agent: Agent = agent_factory()
    agent.configure(brick={"multipath": multipath})
    agent.start()
    seen = Seen()
    vid = new_vol_id()
    err = seen.error(agent, ATTACH, [vid, CHAP_PORTAL])
    assert err.code == 926
    assert err.data["driver"] == "iscsi"
    assert seen.call(agent, INFO) == []
    for text in seen.texts:
        assert leaks(text) == [], text
    log = agent.log()
    # The test is only worth something if os-brick did use the values.
    assert "iscsiadm" in log
    assert "auth.password -v ***" in log
    assert leaks(log) == []
    assert not (Path("/etc/iscsi/nodes") / CHAP_IQN).exists()


def test_short_chap_passwords_stay_out_of_iscsiadm_lines(
    agent_factory: Any,
) -> None:
    """Too short to be erased from text (redact.MIN_SCRUB_LENGTH), they
    are masked on os-brick's iscsiadm command lines by oslo's
    mask_password, and in every result by their key."""
    agent: Agent = agent_factory()
    agent.configure(brick={"multipath": True})
    agent.start()
    short = {"auth_password": "Xq9Zk", "discovery_auth_password": "Vb3Wq"}
    info = copy.deepcopy(CHAP_PORTAL)
    iqn = f"iqn.2026-11.test.hostagent:chap-short-{uuid.uuid4().hex[:12]}"
    info["data"].update(short, target_iqn=iqn)
    seen = Seen()
    err = seen.error(agent, ATTACH, [new_vol_id(), info])
    assert err.code == 926
    log = agent.log()
    assert "auth.password -v ***" in log
    for value in short.values():
        assert value not in log
        assert value not in "".join(seen.texts)
    assert leaks(log) == []  # the user names are long: erased as well
    assert not (Path("/etc/iscsi/nodes") / iqn).exists()


def test_secrets_change_only_text_and_only_while_a_volume_uses_them(
    agent: Agent, loops: Loops, tmp_path: Path
) -> None:
    """A caller's secrets are not masks over everybody's data.

    Volume ``c``'s device path contains ``word``; other callers use
    ``word`` as their password.  ``c``'s results never change, and text
    shows ``word`` as ``***`` only while some call or volume uses it.
    """
    word = "Pw" + uuid.uuid4().hex[:10]
    link = tmp_path / f"disk-{word}"
    link.symlink_to(loops.create())
    path = str(link)
    c = new_vol_id()
    agent.call(ATTACH, [c, local_info(path)])

    def refused(vol_id: str | None = None, **secrets: Any) -> str:
        """The 927 message of another volume on ``c``'s device."""
        info = local_info(path, **secrets)
        err = agent.error(ATTACH, [vol_id or new_vol_id(), info])
        assert err.code == 927
        assert f"already attached as volume {c}" in err.message
        return err.message

    def c_unchanged() -> None:
        (got,) = agent.call(INFO, [[c]])
        assert got["path"] == path
        assert got["connection_info"] == local_info(path)
        assert got["attachment"]["path"] == path

    # The caller's own password is in its error message: hidden there
    # (no raiser scrubs that message: the answer is scrubbed centrally).
    # A one-character password changes nothing anywhere.
    b = new_vol_id()[:-1] + "0"
    message = refused(b, auth_password=word, discovery_auth_password="0")
    assert word not in message
    assert f"device {tmp_path}/disk-*** is" in message
    c_unchanged()
    # That call ended: its secret is forgotten.
    assert word in refused()

    # Volumes that keep it: masked while one of them is attached.
    a1, a2 = new_vol_id(), new_vol_id()
    for vol_id in (a1, a2):
        agent.call(
            ATTACH, [vol_id, local_info(loops.create(), auth_password=word)]
        )
    assert word not in refused()
    agent.call(DETACH, [a1])
    assert word not in refused()  # a2 still uses it
    agent.restart()
    assert word not in refused()  # known again from the database
    c_unchanged()
    agent.call(DETACH, [a2])
    assert word in refused()
    agent.call(DETACH, [c])

    log = agent.log()
    # b's refusal (c's device) comes before anything is connected
    # (issue 17): its vol_id, ending in the "0" it used as a password,
    # is intact in the line that logs its call.
    assert f"vol_id={b}" in log
    assert f"attached volume {c} at {path}" in log
    assert f"volume {c}: disconnecting {path} (local)" in log
    assert "disk-***" in log  # while the callers' secrets were in use


def test_an_os_brick_error_carrying_a_secret_is_scrubbed(
    agent_factory: Any, tmp_path: Path
) -> None:
    """os-brick's rbd connector puts the user name on the rbd command
    line, and the error of a failed map quotes that command line."""
    fake = FakeCeph(tmp_path / "ceph")
    a = fake.agent(agent_factory)
    a.start()
    user = "rbdUser-" + uuid.uuid4().hex[:8]
    seen = Seen()
    err = seen.error(
        a, ATTACH, [new_vol_id(), rbd_info("volumes/nope", auth_username=user)]
    )
    assert err.code == 926
    assert err.data["error_class"] == "ProcessExecutionError"
    assert "--id ***" in err.data["error"]
    assert err.message == (
        "rbd connect_volume failed: ProcessExecutionError: Unexpected error "
        "while running command."
    )
    assert user not in "".join(seen.texts)
    assert "--id ***" in a.log()
    assert user not in a.log()


# Spellings of secret keys a client may use, and subtrees of credentials
# whose own keys say nothing (issue 17).  Distinct values again.
SPELLED = {
    "AuthPassword": "camelPass-Hq83kd",
    "privateKey": "privKey-Tm27vx",
    "auth-password": "dashPass-Wd64pz",
    "Password ": "spacedPass-Nb52rq",
    "CHAPSecret": "chapSecret-Yc93mf",
}
NESTED = {
    "credentials": {"pw": "credPw-Kv81ts", "user": "credUser-Ja46wn"},
    "auth": {"method": "chap", "value": "authValue-Ge15xo"},
    "secrets": ["listSecret-Fp72lu"],
}
SPELLED_VALUES = [
    *SPELLED.values(),
    "credPw-Kv81ts",
    "credUser-Ja46wn",
    "authValue-Ge15xo",
    "listSecret-Fp72lu",
]


def spelled_leaks(text: str) -> list[str]:
    """The secret values of :data:`SPELLED` and :data:`NESTED` in ``text``."""
    return [v for v in SPELLED_VALUES if v in text]


def test_secrets_under_any_spelling_or_subtree(
    agent: Agent, loops: Loops
) -> None:
    """camelCase, dashed and spaced secret keys and credential subtrees
    are masked in results, kept out of errors, logs and events."""
    seen = Seen()
    dev = loops.create()
    vid = new_vol_id()
    info = local_info(dev, auth_method="CHAP", **SPELLED, extra=NESTED)
    seen.call(agent, ATTACH, {"vol_id": vid, "connection_info": info})
    (got,) = seen.call(agent, INFO)
    data = got["connection_info"]["data"]
    assert data["auth_method"] == "CHAP"  # not a secret
    assert {k: data[k] for k in SPELLED} == dict.fromkeys(SPELLED, "***")
    assert data["extra"] == dict.fromkeys(NESTED, "***")
    # Other secrets for the same volume: refused, neither set echoed.
    changed = copy.deepcopy(info)
    changed["data"]["extra"]["credentials"]["pw"] = "credPw-other-Xs90"
    err = seen.error(agent, ATTACH, [vid, changed])
    assert err.code == 929
    # An error raised while the values are in use carries none of them.
    err = seen.error(
        agent,
        ATTACH,
        [new_vol_id(), local_info(dev, **SPELLED, extra=NESTED)],
    )
    assert err.code == 927

    with agent.client() as sub:
        assert sub.call("Host.subscribe") is True
        loops.detach(dev)
        event = next_notification(sub)
        loops.reattach(dev)
        back = next_notification(sub)
    assert event["params"]["vol_id"] == back["params"]["vol_id"] == vid
    seen.texts += [json.dumps(event), json.dumps(back)]

    agent.restart()  # known again from the database only
    assert seen.call(agent, INFO)[0]["connection_info"]["data"]["extra"] == (
        dict.fromkeys(NESTED, "***")
    )
    seen.call(agent, DETACH, [vid])
    for text in seen.texts:
        assert spelled_leaks(text) == [], text
        assert "credPw-other-Xs90" not in text
    log = agent.log()
    assert "DEBUG" in log
    assert spelled_leaks(log) == []
    assert "credPw-other-Xs90" not in log
