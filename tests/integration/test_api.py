"""Every RPC of PersonalDataVault through a real gRPC server, OpenBao and SQLite."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tests.conftest import Bao, Stack, start_stack
from vault.client import VaultClient, VaultClientError
from vault.config import NodeSettings
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(db_stack: Stack) -> Stack:
    """Every test of this module runs on SQLite and on PostgreSQL."""
    return db_stack


def _error(fn, *args, **kwargs) -> VaultClientError:  # type: ignore[no-untyped-def]
    with pytest.raises(VaultClientError) as e:
        fn(*args, **kwargs)
    return e.value


def test_create_and_get_subject(client: VaultClient) -> None:
    s = client.create_subject("FR", minor=True)
    assert s.subject_id.startswith("de_sub_")
    assert s.region == "de"
    assert s.state == pb.SUBJECT_STATE_ACTIVE
    assert s.minor is True
    assert s.created_at.seconds > 0
    assert client.get_subject(s.subject_id) == s


@pytest.mark.parametrize(
    ("country", "region"), [("CN", "cn"), ("US", "us"), ("RU", "ru"), ("SG", "sg"), ("BR", "sg")]
)
def test_subjects_land_in_their_residency_region(
    client: VaultClient, country: str, region: str
) -> None:
    s = client.create_subject(country)
    assert s.region == region and s.subject_id.startswith(f"{region}_sub_")


def test_record_round_trip_update_and_delete(client: VaultClient) -> None:
    s = client.create_subject("DE")
    r = client.put_record(s.subject_id, "user.contact.email", {"address": "ada@example.org"})
    assert r.version == 1 and r.record_id.startswith("de_rec_")
    got = client.get_record(r.record_id)
    assert dict(got.fields) == {"address": "ada@example.org"}
    assert (got.subject_id, got.category, got.version) == (s.subject_id, "user.contact.email", 1)

    r2 = client.put_record(
        s.subject_id,
        "user.contact.email",
        {"address": "ada@example.com"},
        record_id=r.record_id,
        expected_version=1,
    )
    assert r2.version == 2
    assert r2.created_at == r.created_at
    got = client.get_record(r.record_id)
    assert dict(got.fields) == {"address": "ada@example.com"} and got.version == 2

    resp = client.delete_record(r.record_id, expected_version=2)
    assert resp.deleted and resp.record_id == r.record_id
    assert _error(client.get_record, r.record_id).code == grpc.StatusCode.NOT_FOUND
    assert _error(client.delete_record, r.record_id).code == grpc.StatusCode.NOT_FOUND


def test_stale_expected_version_is_failed_precondition(client: VaultClient) -> None:
    s = client.create_subject("US")
    r = client.put_record(s.subject_id, "user.name", {"first": "Ada"})
    client.put_record(
        s.subject_id, "user.name", {"first": "Grace"}, record_id=r.record_id, expected_version=1
    )
    e = _error(
        client.put_record,
        s.subject_id,
        "user.name",
        {"first": "Lost"},
        record_id=r.record_id,
        expected_version=1,
    )
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION and e.reason == "VERSION_CONFLICT"
    e = _error(client.delete_record, r.record_id, expected_version=1)
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(client.get_record(r.record_id).fields) == {"first": "Grace"}


def test_pagination_visits_every_record_once(client: VaultClient) -> None:
    s = client.create_subject("SG")
    written = {
        client.put_record(
            s.subject_id, "user.content" if i % 3 else "user.name", {"first": str(i)}
        ).record_id
        for i in range(23)
    }
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = client.list_records(s.subject_id, page_size=5, page_token=token)
        assert len(page.records) <= 5
        seen += [r.record_id for r in page.records]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 5
    assert sorted(seen) == sorted(written) and len(seen) == len(set(seen))
    names = list(client.iter_records(s.subject_id, category="user.name", page_size=2))
    assert len(names) == 8 and all(r.category == "user.name" for r in names)


def test_page_token_cannot_be_reused_for_another_listing(client: VaultClient) -> None:
    a = client.create_subject("DE")
    b = client.create_subject("DE")
    for _ in range(3):
        client.put_record(a.subject_id, "user.name", {"first": "1"})
    token = client.list_records(a.subject_id, page_size=1).next_page_token
    e = _error(client.list_records, b.subject_id, page_token=token)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and e.violations[0][0] == "page_token"
    e = _error(client.list_records, a.subject_id, page_token="not-a-token!")
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT


def test_idempotent_creates(client: VaultClient) -> None:
    s1 = client.create_subject("DE", idempotency_key="signup-42")
    s2 = client.create_subject("DE", idempotency_key="signup-42")
    assert s1.subject_id == s2.subject_id
    r1 = client.put_record(s1.subject_id, "user.name", {"first": "Ada"}, idempotency_key="k1")
    r2 = client.put_record(s1.subject_id, "user.name", {"first": "Ada"}, idempotency_key="k1")
    assert r1.record_id == r2.record_id
    assert len(client.list_records(s1.subject_id).records) == 1
    e = _error(
        client.put_record,
        s1.subject_id,
        "user.contact.email",
        {"address": "b"},
        idempotency_key="k1",
    )
    assert (e.code, e.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.create_subject("XX"), "country"),
        (lambda c: c.create_subject(""), "country"),
        (lambda c: c.create_subject("DE", region="us"), "region"),
        (lambda c: c.get_subject("nope"), "subject_id"),
        (lambda c: c.get_record("de_sub_" + "a" * 26), "record_id"),
        (lambda c: c.put_record("de_sub_" + "a" * 26, "", {"a": "b"}), "category"),
        (lambda c: c.put_record("de_sub_" + "a" * 26, "User Email", {"a": "b"}), "category"),
        (lambda c: c.put_record("de_sub_" + "a" * 26, "user.name", {}), "fields"),
        (lambda c: c.put_record("de_sub_" + "a" * 26, "user.name", {"bad name": "x"}), "fields[0]"),
        (lambda c: c.put_record("", "user.name", {"a": "b"}), "subject_id"),
        (lambda c: c.list_records("de_sub_" + "a" * 26, page_size=10_000), "page_size"),
        (
            lambda c: c.put_record(
                "de_sub_" + "a" * 26, "user.name", {"first": "b"}, expected_version=-1
            ),
            "expected_version",
        ),
    ],
)
def test_bad_input_is_invalid_argument_with_field_violations(
    client: VaultClient, call, field: str
) -> None:  # type: ignore[no-untyped-def]
    e = _error(call, client)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.reason == "INVALID_ARGUMENT"
    assert field in [f for f, _ in e.violations]


def test_oversize_records_are_resource_exhausted_and_nothing_is_written(
    client: VaultClient,
) -> None:
    s = client.create_subject("DE")
    e = _error(client.put_record, s.subject_id, "user.content", {f"f{i}": "x" for i in range(65)})
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    e = _error(client.put_record, s.subject_id, "user.content", {"a": "x" * (70 * 1024)})
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    e = _error(
        client.put_record, s.subject_id, "user.content", {f"f{i}": "x" * 60_000 for i in range(5)}
    )
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.list_records(s.subject_id).records == []


def test_unknown_ids_are_not_found(client: VaultClient) -> None:
    assert _error(client.get_subject, "us_sub_" + "a" * 26).code == grpc.StatusCode.NOT_FOUND
    assert _error(client.get_record, "us_rec_" + "a" * 26).code == grpc.StatusCode.NOT_FOUND
    assert _error(client.list_records, "us_sub_" + "a" * 26).code == grpc.StatusCode.NOT_FOUND
    e = _error(client.put_record, "us_sub_" + "a" * 26, "user.name", {"a": "b"})
    assert e.code == grpc.StatusCode.NOT_FOUND


def test_record_cannot_be_moved_to_another_subject_or_category(client: VaultClient) -> None:
    a = client.create_subject("DE")
    b = client.create_subject("DE")
    r = client.put_record(a.subject_id, "user.name", {"first": "Ada"})
    e = _error(client.put_record, b.subject_id, "user.name", {"first": "x"}, record_id=r.record_id)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    e = _error(
        client.put_record, a.subject_id, "user.contact.email", {"first": "x"}, record_id=r.record_id
    )
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(client.get_record(r.record_id).fields) == {"first": "Ada"}


def test_errors_never_echo_personal_data(client: VaultClient, canary: str) -> None:
    s = client.create_subject("DE")
    errs = [
        _error(client.put_record, s.subject_id, "user.name", {canary + " @": "x"}),
        _error(client.put_record, s.subject_id, canary.lower(), {"a": canary}),
        _error(client.put_record, s.subject_id, "user.name", {"a": canary * 3000}),
        _error(client.create_subject, "DE", idempotency_key=canary + " !"),
    ]
    for e in errs:
        assert canary not in str(e) and canary.lower() not in e.message
        assert all(canary not in d and canary.lower() not in d for v in e.violations for d in v)


def _list_services(target: str) -> set[str]:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
    return {s.name for s in resp.list_services_response.service}


def test_health(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(stack.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "vault.v1.PersonalDataVault"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_is_off_by_default(stack: Stack) -> None:
    assert NodeSettings(data_dir=Path(".pdvault")).reflection is False
    with pytest.raises(grpc.RpcError) as e:
        _list_services(stack.target)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_when_asked_for(bao: Bao, tmp_path: Path) -> None:
    s = start_stack(bao, tmp_path, reflection=True)
    try:
        assert "vault.v1.PersonalDataVault" in _list_services(s.target)
    finally:
        s.stop()
