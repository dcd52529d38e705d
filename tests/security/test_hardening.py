"""The security review's defects, each attacked through the real gRPC server.

Every test here failed on the code before its fix (run against the commit
before "hardening: …" to see it) and passes after. Tokens come from the
running server's IssueToken; nothing is faked.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import event, text

from tests.conftest import Stack
from vault.client import VaultClient, VaultClientError
from vault.control import ErasureEntry
from vault.erasure import _service as erasure_service
from vault.v1 import vault_pb2 as pb

SERVICE = "essential.service"
RIGHTS = "essential.subject_rights"
MARKETING = "marketing.communications.email"


def _fails(call: Callable[..., Any], *args: Any, **kwargs: Any) -> VaultClientError:
    with pytest.raises(VaultClientError) as e:
        call(*args, **kwargs)
    return e.value


def _now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture
def admin(stack: Stack) -> VaultClient:
    return stack.client(stack.issue(SERVICE))


@pytest.fixture
def rights(stack: Stack) -> VaultClient:
    return stack.client(stack.issue(RIGHTS))


# -- 1. idempotent replays -------------------------------------------------------


def test_a_replayed_write_returns_what_the_write_returned_not_the_current_record(
    stack: Stack, admin: VaultClient
) -> None:
    writer = stack.client(stack.issue(SERVICE, ["user.name"], ["write"]))
    s = admin.create_subject("DE")
    key = f"order-{secrets.token_hex(4)}"
    first = writer.put_record(s.subject_id, "user.name", {"first": "Ada"}, idempotency_key=key)
    canary = f"CANARY-{secrets.token_hex(8)}"
    admin.put_record(
        s.subject_id, "user.name", {"first": canary}, record_id=first.record_id, expected_version=1
    )
    replay = writer.put_record(s.subject_id, "user.name", {"first": "Ada"}, idempotency_key=key)
    assert replay.record_id == first.record_id
    assert dict(replay.fields) == {"first": "Ada"} and replay.version == 1
    assert canary not in str(replay)


def test_a_replay_rechecks_the_subjects_current_state(
    stack: Stack, admin: VaultClient, rights: VaultClient
) -> None:
    s = admin.create_subject("DE")
    key = f"order-{secrets.token_hex(4)}"
    admin.put_record(s.subject_id, "user.name", {"first": "Ada"}, idempotency_key=key)
    rights.restrict_processing(s.subject_id, True)
    e = _fails(admin.put_record, s.subject_id, "user.name", {"first": "Ada"}, idempotency_key=key)
    assert (e.code, e.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PROCESSING_RESTRICTED")
    assert "Ada" not in str(e)


def test_an_idempotency_key_reused_with_other_content_is_refused(admin: VaultClient) -> None:
    s = admin.create_subject("DE")
    key = f"order-{secrets.token_hex(4)}"
    admin.put_record(s.subject_id, "user.name", {"first": "Ada"}, idempotency_key=key)
    e = _fails(admin.put_record, s.subject_id, "user.name", {"first": "Eve"}, idempotency_key=key)
    assert (e.code, e.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")
    assert "Ada" not in str(e) and "Eve" not in str(e)
    key2 = f"signup-{secrets.token_hex(4)}"
    admin.create_subject("DE", idempotency_key=key2)
    e = _fails(admin.create_subject, "DE", minor=True, idempotency_key=key2)
    assert (e.code, e.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")


# -- 4. lookups follow the policy ----------------------------------------------------


def test_find_subjects_needs_read_of_the_looked_up_category(
    stack: Stack, admin: VaultClient
) -> None:
    email = f"{secrets.token_hex(6)}@example.org"
    s = admin.create_subject("DE", lookups={"email": email})
    assert admin.find_subjects("email", email, region="de") == [s.subject_id]
    names_only = stack.client(stack.issue(SERVICE, ["user.name"], ["read"]))
    e = _fails(names_only.find_subjects, "email", email, region="de")
    assert (e.code, e.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CATEGORY_NOT_GRANTED")


def test_find_subjects_leaves_out_subjects_a_read_could_not_see(
    stack: Stack, admin: VaultClient, rights: VaultClient
) -> None:
    email = f"{secrets.token_hex(6)}@example.org"
    s = admin.create_subject("DE", lookups={"email": email})
    marketing = stack.client(stack.issue(MARKETING, ["user.contact.email"], ["read"]))
    consent = stack.client(stack.issue(RIGHTS, ["user.name"], ["consent"]))
    # No consent: the marketing purpose does not find the person.
    assert marketing.find_subjects("email", email, region="de") == []
    consent.set_consent(s.subject_id, MARKETING, True, source="test")
    assert marketing.find_subjects("email", email, region="de") == [s.subject_id]
    # A minor is never found by a marketing purpose, consent or not.
    minor_email = f"{secrets.token_hex(6)}@example.org"
    m = admin.create_subject("DE", minor=True, lookups={"email": minor_email})
    consent.set_consent(m.subject_id, MARKETING, True, source="test")
    assert marketing.find_subjects("email", minor_email, region="de") == []
    # Restricted: only purposes allowed under restriction find the person.
    rights.restrict_processing(s.subject_id, True)
    assert admin.find_subjects("email", email, region="de") == []
    assert rights.find_subjects("email", email, region="de") == [s.subject_id]
    # Pending erasure: nobody finds the person.
    rights.restrict_processing(s.subject_id, False)
    rights.erase_subject(s.subject_id, grace_period_seconds=3600)
    assert admin.find_subjects("email", email, region="de") == []
    assert rights.find_subjects("email", email, region="de") == []


def test_set_lookups_is_a_write_of_the_value_category(stack: Stack, admin: VaultClient) -> None:
    s = admin.create_subject("DE")
    names_only = stack.client(stack.issue(SERVICE, ["user.name"], ["read", "write"]))
    email = f"{secrets.token_hex(6)}@example.org"
    e = _fails(names_only.set_lookups, s.subject_id, {"email": email})
    assert (e.code, e.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CATEGORY_NOT_GRANTED")
    e = _fails(names_only.create_subject, "DE", lookups={"email": email})
    assert (e.code, e.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CATEGORY_NOT_GRANTED")
    assert admin.find_subjects("email", email, all_regions=True) == []


def test_lookup_entries_are_bounded(admin: VaultClient) -> None:
    s = admin.create_subject("DE")
    many = [("account_id", f"acct-{i}") for i in range(17)]
    e = _fails(admin.set_lookups, s.subject_id, many)
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    for batch in range(2):
        chunk = [("account_id", f"acct-{batch}-{i}") for i in range(16)]
        assert admin.set_lookups(s.subject_id, chunk) == 16
    e = _fails(admin.set_lookups, s.subject_id, [("account_id", "one-too-many")])
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert admin.find_subjects("account_id", "one-too-many", region="de") == []


# -- 5. cancelling an erasure ---------------------------------------------------------


def test_cancel_restores_the_previous_state(admin: VaultClient, rights: VaultClient) -> None:
    s = admin.create_subject("DE")
    rights.restrict_processing(s.subject_id, True)
    rights.erase_subject(s.subject_id, grace_period_seconds=3600)
    back = rights.cancel_erasure(s.subject_id)
    assert back.state == pb.SUBJECT_STATE_RESTRICTED
    assert rights.get_subject(s.subject_id).state == pb.SUBJECT_STATE_RESTRICTED


def test_an_erasure_claimed_by_a_worker_cannot_be_cancelled(
    stack: Stack, admin: VaultClient, rights: VaultClient
) -> None:
    s = admin.create_subject("DE")
    rights.erase_subject(s.subject_id, grace_period_seconds=3600)
    # A worker on another node has claimed it and may be destroying the key now.
    assert stack.vault.control.claim_erasure(s.subject_id, _now_us(), 60_000_000)
    e = _fails(rights.cancel_erasure, s.subject_id)
    assert (e.code, e.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ERASURE_IN_PROGRESS")
    entry = stack.vault.control.erasure(s.subject_id)
    assert entry is not None and entry.destroyed_at is None  # still in the ledger
    assert rights.get_subject(s.subject_id).state == pb.SUBJECT_STATE_ERASURE_PENDING


# -- 6. erasure never blocks the server ---------------------------------------------


def test_health_answers_while_an_erasure_waits_for_another_nodes_claim(
    stack: Stack, admin: VaultClient, rights: VaultClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(erasure_service, "CLAIM_WAIT_SECONDS", 2.0)
    s = admin.create_subject("DE")
    now = _now_us()
    key = stack.vault.parts.stores["de"].get_subject(s.subject_id)
    assert key is not None
    # A due erasure another node has claimed: EraseSubject waits for it.
    assert stack.vault.control.add_erasure(
        ErasureEntry(s.subject_id, "de", key.key_mount, key.key_name, "test", now, now + 800_000)
    )
    assert stack.vault.control.claim_erasure(s.subject_id, now, 60_000_000)
    time.sleep(0.9)
    done: list[float] = []

    def erase() -> None:
        t0 = time.monotonic()
        rights.erase_subject(s.subject_id)
        done.append(time.monotonic() - t0)

    worker = threading.Thread(target=erase)
    worker.start()
    latencies = []
    with grpc.insecure_channel(stack.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        time.sleep(0.2)
        while worker.is_alive():
            t0 = time.monotonic()
            resp = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            latencies.append(time.monotonic() - t0)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            time.sleep(0.05)
    worker.join()
    print(
        f"erasure waited {done[0]:.2f} s; {len(latencies)} health checks, "
        f"slowest {max(latencies) * 1000:.0f} ms"
    )
    assert done[0] >= 1.5 and len(latencies) >= 5
    assert max(latencies) < 1.0


# -- 7. no existence, category or minor oracles --------------------------------------


def test_a_region_outside_the_token_answers_alike_for_real_and_random_ids(
    stack: Stack, admin: VaultClient
) -> None:
    s = admin.create_subject("DE")
    real = admin.put_record(s.subject_id, "user.name", {"first": "Ada"}).record_id
    fake = "de_rec_" + real[7:][::-1]
    us_only = stack.client(stack.issue(SERVICE, regions=["us"]))
    for call in (us_only.get_record, us_only.delete_record):
        a, b = _fails(call, real), _fails(call, fake)
        assert (a.code, a.reason, a.message) == (b.code, b.reason, b.message)
    a = _fails(us_only.put_record, "", "user.name", {"first": "x"}, record_id=real)
    b = _fails(us_only.put_record, "", "user.name", {"first": "x"}, record_id=fake)
    assert (a.code, a.reason, a.message) == (b.code, b.reason, b.message)


def test_another_subjects_record_answers_like_a_missing_one(
    stack: Stack, admin: VaultClient
) -> None:
    mine, other = admin.create_subject("DE"), admin.create_subject("DE")
    real = admin.put_record(other.subject_id, "user.name", {"first": "Ada"}).record_id
    fake = "de_rec_" + real[7:][::-1]
    limited = stack.client(stack.issue(SERVICE, subjects=[mine.subject_id]))
    for call in (limited.get_record, limited.delete_record):
        a, b = _fails(call, real), _fails(call, fake)
        assert (a.code, a.reason, a.message) == (b.code, b.reason, b.message)
        assert a.code == grpc.StatusCode.NOT_FOUND


def test_a_guessed_category_gets_one_answer_right_or_wrong(
    stack: Stack, admin: VaultClient
) -> None:
    s = admin.create_subject("DE")
    rec = admin.put_record(s.subject_id, "user.contact.email", {"address": "a@example.org"})
    names = stack.client(stack.issue(SERVICE, ["user.name"], ["read", "write"]))
    right = _fails(
        names.put_record,
        s.subject_id,
        "user.contact.email",
        {"address": "x"},
        record_id=rec.record_id,
    )
    wrong = _fails(
        names.put_record, s.subject_id, "user.name", {"first": "x"}, record_id=rec.record_id
    )
    assert (right.code, right.reason, right.message) == (wrong.code, wrong.reason, wrong.message)


def test_a_consent_purpose_cannot_tell_a_minor_from_an_adult(
    stack: Stack, admin: VaultClient
) -> None:
    adult, minor = admin.create_subject("DE"), admin.create_subject("DE", minor=True)
    recs = [
        admin.put_record(x.subject_id, "user.contact.email", {"address": "a@example.org"})
        for x in (adult, minor)
    ]
    marketing = stack.client(stack.issue(MARKETING, ["user.contact.email"], ["read"]))
    a, m = (_fails(marketing.get_record, r.record_id) for r in recs)
    assert (a.code, a.reason, a.message) == (m.code, m.reason, m.message)


# -- 8. idempotency keys belong to the calling service -------------------------------------


def test_idempotency_keys_are_scoped_by_service(stack: Stack) -> None:
    key = f"customer-{secrets.token_hex(4)}"
    shop = stack.client(stack.issue(SERVICE, service="shop"))
    crm = stack.client(stack.issue(SERVICE, service="crm"))
    a = shop.create_subject("DE", idempotency_key=key)
    b = crm.create_subject("DE", idempotency_key=key)
    assert a.subject_id != b.subject_id
    assert shop.create_subject("DE", idempotency_key=key).subject_id == a.subject_id
    ra = shop.put_record(a.subject_id, "user.name", {"first": "A"}, idempotency_key=key)
    # The same key from another service is a new write, not a replay of shop's.
    rb = crm.put_record(a.subject_id, "user.name", {"first": "A"}, idempotency_key=key)
    assert ra.record_id != rb.record_id


# -- 9. page tokens and the update guard ---------------------------------------------


def test_a_deeply_nested_page_token_is_invalid_argument(admin: VaultClient) -> None:
    s = admin.create_subject("DE")
    nested = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    for token in (nested, nested[:400]):
        e = _fails(admin.list_records, s.subject_id, page_token=token)
        assert (e.code, e.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")


def test_page_tokens_are_decoded_only_after_the_scope_check(stack: Stack) -> None:
    s = stack.client(stack.issue(SERVICE)).create_subject("DE")
    no_read = stack.client(stack.issue(SERVICE, ops=["write"]))
    e = _fails(no_read.list_records, s.subject_id, page_token="garbage!")
    assert (e.code, e.reason) == (grpc.StatusCode.PERMISSION_DENIED, "OPERATION_NOT_GRANTED")


@pytest.fixture
def restrict_before_update(stack: Stack) -> Iterator[list[str]]:
    """Restricts the subject between the request's checks and its UPDATE."""
    engine = stack.vault.parts.stores["de"].engine
    pending: list[str] = []

    def hook(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if pending and statement.lstrip().upper().startswith("UPDATE RECORDS"):
            sid = pending.pop()
            with engine.begin() as side:
                side.execute(
                    text("UPDATE subjects SET state = 'restricted' WHERE id = :sid"), {"sid": sid}
                )

    event.listen(engine, "before_cursor_execute", hook)
    yield pending
    event.remove(engine, "before_cursor_execute", hook)


def test_an_update_racing_a_restriction_writes_nothing(
    admin: VaultClient, rights: VaultClient, restrict_before_update: list[str]
) -> None:
    s = admin.create_subject("DE")
    rec = admin.put_record(s.subject_id, "user.name", {"first": "Ada"})
    restrict_before_update.append(s.subject_id)
    e = _fails(
        admin.put_record,
        s.subject_id,
        "user.name",
        {"first": "Eve"},
        record_id=rec.record_id,
        expected_version=1,
    )
    assert (e.code, e.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PROCESSING_RESTRICTED")
    assert not restrict_before_update  # the race really happened
    got = rights.get_record(rec.record_id)
    assert dict(got.fields) == {"first": "Ada"} and got.version == 1
