"""Keys managed live: created, rotated (two valid during the grace), revoked and expired
without restarting the API; a broken key file keeps the keys it had; last use recorded."""

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from model.api_keys import create_key, hash_key, load_keys, revoke_key, rotate_key
from tests.conftest import cli, eventually, payment, uid


def test_rotation_keeps_the_old_key_for_the_grace_and_revoke_removes_all(tmp_path: Path):
    path = tmp_path / "keys.json"
    old, _ = create_key(path, "gw", {"score", "labels"}, label_sources={"chargeback"})
    new, secret, until = rotate_key(path, "gw", timedelta(hours=2))
    keys = load_keys(path)
    assert secret is None and len(keys) == 2
    old_key, new_key = keys[hash_key(old)], keys[hash_key(new)]
    assert old_key.expires_at == until and new_key.expires_at is None
    assert new_key.scopes == {"score", "labels"} and new_key.label_sources == {"chargeback"}
    assert until - datetime.now(UTC) > timedelta(hours=1.9)
    # a second rotation ends every earlier key no later than its own grace
    newer, _, until2 = rotate_key(path, "gw", timedelta(0))
    keys = load_keys(path)
    assert keys[hash_key(old)].expires_at == keys[hash_key(new)].expires_at == until2
    assert keys[hash_key(newer)].expires_at is None
    with pytest.raises(ValueError, match="exists already"):
        create_key(path, "gw", {"score"})
    assert revoke_key(path, "gw") == 3 and load_keys(path) == {}
    with pytest.raises(ValueError, match="no key named 'gw'"):
        revoke_key(path, "gw")
    with pytest.raises(ValueError, match="no valid key named 'gw'"):
        rotate_key(path, "gw", timedelta(0))
    assert (path.stat().st_mode & 0o777) == 0o600


def issued(output: str) -> str:
    match = re.search(r"X-API-Key: (fsk_\S+)", output)
    assert match, output
    return match.group(1)


@pytest.mark.integration
def test_keys_are_created_rotated_and_revoked_live(api_client):
    name = uid("gw")

    def status(key: str) -> tuple[int, str]:
        resp = api_client.post("/v1/payments/score", json=payment(),
                               headers={"X-API-Key": key})
        return resp.status_code, resp.json().get("detail", "") if resp.status_code != 200 \
            else ""

    made = cli("keys", "create", name, "--scope", "score")
    assert made.exit_code == 0, made.output
    first = issued(made.output)
    eventually(lambda: status(first)[0] == 200, 20)

    rotated = cli("keys", "rotate", name, "--grace-hours", "1")
    assert rotated.exit_code == 0, rotated.output
    second = issued(rotated.output)
    eventually(lambda: status(second)[0] == 200, 20)
    assert status(first)[0] == 200  # both valid during the grace

    ended = cli("keys", "rotate", name, "--grace-hours", "0")
    third = issued(ended.output)
    eventually(lambda: status(first) == (401, "API key expired"), 20)
    assert status(second) == (401, "API key expired") and status(third)[0] == 200

    # when each key was last used reaches Redis, per key
    from stores.key_usage import KeyUsage

    usage = KeyUsage(api_client.app.state.services.store.redis)
    seen = eventually(lambda: api_client.portal.call(usage.last_used).get(
        hash_key(third)[:12]), 20)
    assert abs(seen - datetime.now(UTC).timestamp()) < 60

    revoked = cli("keys", "revoke", name)
    assert revoked.exit_code == 0 and "revoked 3 key(s)" in revoked.output
    eventually(lambda: status(third) == (401, "unknown API key"), 20)

    # Every change is in the history's audit, by whom, in order; a refused one is not;
    # no key is ever written there.
    assert cli("keys", "revoke", name).exit_code != 0
    assert cli("keys", "limit", name, "--rate", "5").exit_code != 0
    import getpass

    from model.config import get_settings
    from stores.history import HistoryStore

    audit = HistoryStore(get_settings().history_dir).query(
        "SELECT action, actor, entry FROM audit WHERE trail = 'keys' AND entry LIKE ? "
        "ORDER BY logged_at, entry_id", [f'%"key":"{name}"%'])
    assert list(audit["action"]) == ["key_created", "key_rotated", "key_rotated",
                                     "key_revoked"]
    assert set(audit["actor"]) == {getpass.getuser()}
    assert '"scopes":["score"]' in audit["entry"][0] and '"keys":3' in audit["entry"][3]
    assert not any(k in e for e in audit["entry"] for k in (first, second, third, "fsk_"))
    shown = cli("history", "audit", "--trail", "keys")
    assert shown.exit_code == 0 and "key_revoked" in shown.output


@pytest.mark.integration
def test_a_broken_key_file_keeps_the_keys_the_api_had(api_client, servers_settings):
    path = servers_settings.api_keys_file
    good = path.read_bytes()
    ring = api_client.app.state.services.api_keys
    try:
        path.write_text('{"keys": [ {"name": ')  # a hand edit gone wrong
        ring.refresh()
        assert api_client.post("/v1/payments/score", json=payment()).status_code == 200
    finally:
        path.write_bytes(good)
    ring.refresh()
    assert api_client.post("/v1/payments/score", json=payment()).status_code == 200
