"""Rotating the vault signing key on a running node: tokens and erasure receipts.

A fresh node on its own data dir (the rotation rewrites the key files), against
the session's OpenBao.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import Bao, Stack, start_stack
from vault.client import VaultClientError
from vault.datadir import DataDir
from vault.erasure import verify_receipt
from vault.errors import Unauthenticated
from vault.tokens import HistoryError, keyfiles, signed_kid
from vault.tokens.keyfiles import (
    RETIRE_AFTER,
    KeyFollower,
    load_or_create_signing_key,
    read_published,
    rotate_signing_key,
)

RIGHTS = "essential.subject_rights"


@pytest.fixture(scope="module")
def node(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(bao, tmp_path_factory.mktemp("rotation"))
    yield s
    s.stop()


def _tokens_dir(stack: Stack) -> Path:
    return DataDir(stack.data_dir).tokens


def _rotate(stack: Stack, now: float) -> str:
    done = rotate_signing_key(
        _tokens_dir(stack), stack.provider, stack.regions.control.transit_mount, now=now
    )
    return done.new_kid


def _wait_signing_with(stack: Stack, kid: str) -> None:
    deadline = time.monotonic() + 10
    while stack.vault.authority.signing_kid != kid:
        assert time.monotonic() < deadline, "the node did not pick up the new signing key"
        time.sleep(0.05)


def _accepted(stack: Stack, token: str) -> bool:
    try:
        stack.client(token).get_subject("de_sub_" + "a" * 26)
    except VaultClientError as e:
        if e.code == grpc.StatusCode.UNAUTHENTICATED:
            return False
        assert e.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), e
    return True


def _wait_refused(stack: Stack, token: str) -> None:
    deadline = time.monotonic() + 10
    while _accepted(stack, token):
        assert time.monotonic() < deadline, "a token of a removed key is still accepted"
        time.sleep(0.05)


def test_rotation_on_a_running_node_keeps_old_tokens_until_their_key_is_removed(
    node: Stack,
) -> None:
    first_kid = node.vault.authority.signing_kid
    old = node.issue(ttl=3600)
    assert signed_kid(old) == first_kid and _accepted(node, old)

    t0 = time.time()
    second_kid = _rotate(node, t0)
    assert second_kid != first_kid
    _wait_signing_with(node, second_kid)  # no restart
    new = node.issue(ttl=3600)
    assert signed_kid(new) == second_kid
    assert _accepted(node, new) and _accepted(node, old)  # old token still valid
    published = {p.key.kid: p for p in read_published(_tokens_dir(node))}
    assert published[first_kid].retired_at == int(t0)
    assert published[second_kid].retired_at is None

    # Long after: every token the first key signed has expired, so the
    # next rotation removes it; a token it signed is refused from then on.
    third_kid = _rotate(node, t0 + RETIRE_AFTER + 1)
    assert first_kid not in {p.key.kid for p in read_published(_tokens_dir(node))}
    _wait_signing_with(node, third_kid)
    _wait_refused(node, old)
    with pytest.raises(VaultClientError) as e:
        node.client(old).get_subject("de_sub_" + "a" * 26)
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and e.value.reason == "UNKNOWN_KEY"
    assert _accepted(node, new)  # the second key is only retired
    assert signed_kid(node.issue()) == third_kid


def test_a_retired_key_is_refused_when_its_time_is_up_even_if_nobody_rotates_again(
    bao: Bao, node: Stack, tmp_path: Path
) -> None:
    mount = node.regions.control.transit_mount
    first = load_or_create_signing_key(tmp_path, node.provider, mount, now=1_000_000)
    t0 = 2_000_000.0
    rotated = rotate_signing_key(tmp_path, node.provider, mount, now=t0)
    now = [t0 + 10]
    seen = []
    follower = KeyFollower(tmp_path, node.provider, mount, first, seen.append, clock=lambda: now[0])
    follower.refresh()
    state = follower.state
    assert state.signing.kid == rotated.new_kid
    assert state.tokens.kids == {first.signing.kid, rotated.new_kid}
    now[0] = t0 + RETIRE_AFTER  # the file still lists it; the time is up
    follower.refresh()
    assert follower.state.tokens.kids == {rotated.new_kid}
    assert first.signing.kid in follower.state.receipts  # receipts: for good
    assert len(seen) == 2


def test_an_interrupted_rotation_is_finished_by_running_it_again(
    node: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = node.regions.control.transit_mount
    first = load_or_create_signing_key(tmp_path, node.provider, mount, now=1_000_000)
    real_replace = keyfiles.replace_file

    def crash_at_history(path: Path, text: str, mode: int) -> None:
        if path.name == keyfiles.HISTORY_FILE:
            raise OSError("disk full")
        real_replace(path, text, mode)

    monkeypatch.setattr(keyfiles, "replace_file", crash_at_history)
    with pytest.raises(OSError):
        rotate_signing_key(tmp_path, node.provider, mount, now=1_000_100)
    monkeypatch.undo()
    pending = {p.key.kid for p in read_published(tmp_path)} - {first.signing.kid}
    assert len(pending) == 1  # published, not yet signing
    assert load_or_create_signing_key(tmp_path, node.provider, mount).signing == first.signing

    done = rotate_signing_key(tmp_path, node.provider, mount, now=1_000_200)
    assert {done.new_kid} == pending  # the same key, not a third one
    state = load_or_create_signing_key(tmp_path, node.provider, mount)
    assert state.signing.kid == done.new_kid
    assert state.receipts.kids == {first.signing.kid, done.new_kid}
    assert not (tmp_path / keyfiles.NEXT_KEY_FILE).exists()


def test_an_old_receipt_verifies_after_two_rotations_and_a_forged_history_is_detected(
    node: Stack,
) -> None:
    c = node.client(node.issue(RIGHTS))
    sid = c.create_subject("DE").subject_id
    c.put_record(sid, "user.contact.email", {"address": "someone@example.org"})
    receipt = c.erase_subject(sid, reason="subject_request").signed_receipt
    signer = node.vault.authority.signing_kid
    assert (
        verify_receipt(receipt, DataDir(node.data_dir).read_receipt_keys())["signing_key"] == signer
    )

    t = time.time()
    _rotate(node, t)
    last = _rotate(node, t + RETIRE_AFTER + 5)  # the receipt's key is gone for tokens
    _wait_signing_with(node, last)
    assert signer not in {p.key.kid for p in read_published(_tokens_dir(node))}
    layout = DataDir(node.data_dir)
    doc = verify_receipt(receipt, layout.read_receipt_keys())
    assert doc["subject_id"] == sid and doc["signing_key"] == signer
    # The node's own idempotent reply checks the ledger's receipt the same way.
    # (its token signed by the removed key is refused; a fresh one is not)
    assert node.client(node.issue(RIGHTS)).erase_subject(sid).signed_receipt == receipt

    history = json.loads(layout.signing_key_history.read_text())
    assert [e["kid"] for e in history["history"]][-1] == last

    # A key slipped in: the endorsement of a key it does not hold.
    forged = json.loads(json.dumps(history))
    forged["history"][1]["paserk"] = forged["history"][0]["paserk"]
    forged["history"][1]["kid"] = forged["history"][0]["kid"]
    removed = json.loads(json.dumps(history))
    del removed["history"][1]
    tampered = json.loads(json.dumps(history))
    tampered["history"][0]["added_at"] += 1
    for bad, seq in ((forged, 2), (removed, 2), (tampered, 1)):
        layout.signing_key_history.write_text(json.dumps(bad))
        with pytest.raises(HistoryError) as e:
            layout.read_receipt_keys()
        assert e.value.seq == seq
    layout.signing_key_history.write_text(json.dumps(history))
    # What the history is for: the published token keys no longer hold the
    # receipt's key.
    with pytest.raises(Unauthenticated) as u:
        verify_receipt(receipt, layout.read_keyset())
    assert u.value.reason == "UNKNOWN_KEY"


def test_token_inspect_refuses_a_token_of_a_key_whose_time_is_up(
    node: Stack, tmp_path: Path
) -> None:
    """`pdvault token inspect` judges by the keys a node accepts now, not by
    every key still listed in the file."""
    import subprocess
    import sys

    from tests.integration._access import live_claims, sign

    tokens = DataDir(tmp_path).tokens
    mount = node.regions.control.transit_mount
    first = load_or_create_signing_key(tokens, node.provider, mount, now=1_000_000)
    token = sign(live_claims(), first.signing)
    rotate_signing_key(tokens, node.provider, mount, now=2_000_000)  # retired long ago
    assert first.signing.kid in {p.key.kid for p in read_published(tokens)}

    def inspect(t: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vault.cli", "token", "inspect", "--data-dir", str(tmp_path), t],
            capture_output=True,
            text=True,
            timeout=60,
        )

    old = inspect(token)
    assert old.returncode == 1 and "INVALID: UNKNOWN_KEY" in old.stdout
    current = load_or_create_signing_key(tokens, node.provider, mount)
    fresh = inspect(sign(live_claims(), current.signing))
    assert fresh.returncode == 0 and "valid signature" in fresh.stdout


def test_a_node_rotates_the_signing_key_on_schedule_and_old_tokens_stay_valid(
    bao: Bao, tmp_path: Path
) -> None:
    """A two-second period checked every 0.2 s: the node replaces the key by
    itself, once per period; tokens of the old key are still accepted, new ones
    carry the new key, and `keys status` says when the next rotation is due."""
    from vault.cli._keys import status_report

    s = start_stack(bao, tmp_path, signing_key_rotation=2, rotation_check_seconds=0.2)
    try:
        first = s.vault.authority.signing_kid
        old_token = s.issue(RIGHTS)
        assert signed_kid(old_token) == first
        deadline = time.monotonic() + 15
        while s.vault.authority.signing_kid == first:
            assert time.monotonic() < deadline, "the scheduled rotation did not run"
            time.sleep(0.1)
        second = s.vault.authority.signing_kid
        assert signed_kid(s.issue(RIGHTS)) == second
        assert _accepted(s, old_token)  # retired, not removed: valid until it expires
        published = read_published(_tokens_dir(s))
        assert [p.key.kid for p in published][:2] == [first, second]
        assert published[0].retired_at is not None
        lines = "\n".join(status_report(s.data_dir))
        assert "scheduled rotation: every" in lines and "next due" in lines
    finally:
        s.stop()


def test_a_node_with_read_only_key_files_only_says_the_key_is_due(
    bao: Bao, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Key files mounted read-only (a Kubernetes Secret): nothing is rotated or
    written, and the node logs that the key is due (no key material)."""
    s = start_stack(bao, tmp_path)  # the node's own schedule (90 days) stays idle
    tokens = _tokens_dir(s)
    schedule = keyfiles.SigningKeySchedule(
        tokens, s.provider, s.regions.control.transit_mount, period_seconds=1
    )
    kid = s.vault.authority.signing_kid
    protect = ["chattr", "+i", str(tokens)] if os.geteuid() == 0 else None
    try:
        time.sleep(1.2)
        before = {p.name: p.read_bytes() for p in tokens.iterdir() if p.is_file()}
        if protect is None:
            tokens.chmod(0o500)
        elif subprocess.run(protect, capture_output=True, check=False).returncode != 0:
            pytest.skip("as root, a read-only directory needs chattr +i, not available here")
        with caplog.at_level("WARNING", logger="vault.tokens"):
            assert schedule.run() is None
        after = {p.name: p.read_bytes() for p in tokens.iterdir() if p.is_file()}
        assert after == before and s.vault.authority.signing_kid == kid
        assert any("read-only" in r.getMessage() for r in caplog.records)
        signing = json.loads((tokens / keyfiles.KEY_FILE).read_text())
        for r in caplog.records:
            for v in signing.values():
                assert str(v) not in r.getMessage()
    finally:
        subprocess.run(["chattr", "-i", str(tokens)], capture_output=True, check=False)
        tokens.chmod(0o700)
        s.stop()
