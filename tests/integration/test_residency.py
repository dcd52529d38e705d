"""Residency across real nodes: forwarding, transfer decisions, transfer records,
fan-out, and a node that goes down and comes back.

Three in-process nodes (de, us, ru), each serving one region, one OpenBao,
mutual TLS between them (tests/integration/_mesh.py). Expected outcomes are
computed in the test from the regions file's rules (``TransferRules.decide``),
never taken from a reply.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.conftest import Bao
from tests.integration._mesh import NODE_REGIONS, Mesh, start_mesh
from vault.client import VaultClientError
from vault.residency import TransferRules
from vault.tokens import TRANSFER_BASES

pytestmark = pytest.mark.integration

COUNTRY = {"de": "DE", "us": "US", "ru": "RU", "cn": "CN", "sg": "SG"}
BASES: tuple[str | None, ...] = (None, *sorted(TRANSFER_BASES))
PURPOSE = "essential.service"
CATEGORY = "user.name"


@pytest.fixture(scope="module")
def mesh(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = start_mesh(bao, tmp_path_factory.mktemp("mesh"))
    yield m
    m.close()


@pytest.fixture(scope="module")
def rules(mesh: Mesh) -> TransferRules:
    return mesh.regions.transfers


@pytest.fixture(scope="module")
def tokens(mesh: Mesh) -> dict[str | None, str]:
    return {b: mesh.issue(b) for b in BASES}


def _refused(
    e: VaultClientError, rules: TransferRules, home: str, entry: str, basis: str | None
) -> None:
    d = rules.decide(home, entry, basis, PURPOSE, CATEGORY)
    assert not d.allowed
    assert e.code == grpc.StatusCode.PERMISSION_DENIED, e
    assert e.reason == d.reason
    assert d.rule in e.message


def test_transfer_matrix_through_real_nodes(
    mesh: Mesh, rules: TransferRules, tokens: dict[str | None, str]
) -> None:
    """Every home x entry x basis of the five regions: reads and writes
    through the entry node are served exactly when the rules allow them."""
    seen = {True: 0, False: 0}
    for home in NODE_REGIONS:
        owner = mesh.client(home, tokens[None])
        sid = owner.create_subject(COUNTRY[home]).subject_id
        rec = owner.put_record(sid, CATEGORY, {"first": f"Ada-{home}"})
        for entry in NODE_REGIONS:
            for basis in BASES:
                c = mesh.client(entry, tokens[basis])
                allowed = rules.decide(home, entry, basis, PURPOSE, CATEGORY).allowed
                seen[allowed] += 1
                if allowed:
                    assert c.get_record(rec.record_id).fields == {"first": f"Ada-{home}"}
                    written = c.put_record(sid, CATEGORY, {"first": f"W-{entry}-{basis}"})
                    assert written.record_id.startswith(f"{home}_rec_")
                    assert c.get_record(written.record_id).fields == {"first": f"W-{entry}-{basis}"}
                else:
                    with pytest.raises(VaultClientError) as e:
                        c.get_record(rec.record_id)
                    _refused(e.value, rules, home, entry, basis)
                    with pytest.raises(VaultClientError) as e:
                        c.put_record(sid, CATEGORY, {"first": "never"})
                    _refused(e.value, rules, home, entry, basis)
    assert seen[True] and seen[False]
    # Refused writes wrote nothing: every record of every subject is one of ours.
    for home in NODE_REGIONS:
        for r in mesh.rows()[home]["records"]:
            assert r.startswith(f"{home}_rec_")


def test_mixed_workload_through_random_entry_nodes(
    mesh: Mesh, rules: TransferRules, tokens: dict[str | None, str]
) -> None:
    rng = random.Random(20261206)
    subjects: dict[str, str] = {}  # id -> home
    records: dict[str, tuple[str, str, dict[str, str]]] = {}  # id -> (home, subject, fields)
    outcomes = {"served": 0, "refused": 0}
    for i in range(120):
        entry = rng.choice(NODE_REGIONS)
        basis = rng.choice(BASES)
        c = mesh.client(entry, tokens[basis])
        op = rng.choice(["create", "put", "get", "list"]) if subjects else "create"
        if op == "create":
            home = rng.choice(NODE_REGIONS)
            s = c.create_subject(COUNTRY[home])  # no lookups: no personal data crosses
            assert s.region == home and s.subject_id.startswith(f"{home}_sub_")
            subjects[s.subject_id] = home
            continue
        if op == "put":
            sid = rng.choice(sorted(subjects))
            home = subjects[sid]
            fields = {"first": f"n{i}"}
            allowed = rules.decide(home, entry, basis, PURPOSE, CATEGORY).allowed
            try:
                r = c.put_record(sid, CATEGORY, fields)
            except VaultClientError as e:
                assert not allowed, e
                _refused(e, rules, home, entry, basis)
                outcomes["refused"] += 1
                continue
            assert allowed
            records[r.record_id] = (home, sid, fields)
            outcomes["served"] += 1
            continue
        if op == "get" and records:
            rid = rng.choice(sorted(records))
            home, _, fields = records[rid]
            allowed = rules.decide(home, entry, basis, PURPOSE, CATEGORY).allowed
            try:
                got = c.get_record(rid)
            except VaultClientError as e:
                assert not allowed, e
                _refused(e, rules, home, entry, basis)
                outcomes["refused"] += 1
                continue
            assert allowed and got.fields == fields and got.record_id == rid
            outcomes["served"] += 1
        elif op == "list":
            sid = rng.choice(sorted(subjects))
            home = subjects[sid]
            allowed = rules.decide(home, entry, basis, PURPOSE, None).allowed
            try:
                page = c.list_records(sid)
            except VaultClientError as e:
                assert not allowed, e
                assert e.code == grpc.StatusCode.PERMISSION_DENIED
                outcomes["refused"] += 1
                continue
            assert allowed
            expected = {rid: f for rid, (_, s, f) in records.items() if s == sid}
            assert {r.record_id: dict(r.fields) for r in page.records} == expected
            outcomes["served"] += 1
    assert outcomes["served"] and outcomes["refused"]
    rows = mesh.rows()
    for sid, home in subjects.items():
        holders = [r for r in NODE_REGIONS if sid in rows[r]["subjects"]]
        assert holders == [home]
    for rid, (home, _, _) in records.items():
        holders = [r for r in NODE_REGIONS if rid in rows[r]["records"]]
        assert holders == [home]
    # Every subject's key (which wraps the data key of every ciphertext) lives in
    # its home region's Transit mount, which only that region's credential reaches.
    for region in NODE_REGIONS:
        assert rows[region]["key_mounts"] in ([], [f"transit-{region}"]), rows[region]


def test_transfer_records_equal_the_crossings(mesh: Mesh, tokens: dict[str | None, str]) -> None:
    owner = mesh.client("de", tokens[None])
    sid = owner.create_subject("DE").subject_id
    rec = owner.put_record(sid, CATEGORY, {"first": "Grace"})
    owner.get_record(rec.record_id)  # at home: no crossing, no entry
    via_us = mesh.client("us", tokens["scc"])
    via_us.get_record(rec.record_id)
    via_us.list_records(sid)
    written = via_us.put_record(sid, CATEGORY, {"first": "Hopper"})
    via_ru = mesh.client("ru", tokens["consent"])
    with pytest.raises(VaultClientError):
        via_ru.get_record(rec.record_id)
    rights = mesh.issue("scc", "essential.subject_rights")
    doc = mesh.client("us", rights).export_subject(sid)

    jti = {b: mesh.vault("de").authority.verifier.verify(t).jti for b, t in tokens.items()}
    jti["export"] = mesh.vault("de").authority.verifier.verify(rights).jti
    expected = [
        ("de", "us", "read", "GetRecord", "scc", jti["scc"], rec.record_id, [CATEGORY], True,
         "de->us:scc", "TRANSFER_ALLOWED"),
        ("de", "us", "read", "ListRecords", "scc", jti["scc"], None, [], True, "de->us:scc",
         "TRANSFER_ALLOWED"),
        ("us", "de", "write", "PutRecord", "scc", jti["scc"], written.record_id, [CATEGORY], True,
         "de->us:scc", "TRANSFER_ALLOWED"),
        ("de", "ru", "read", "GetRecord", "consent", jti["consent"], rec.record_id, [CATEGORY],
         False, "no-rule:de->ru:consent", "TRANSFER_BASIS_NOT_ACCEPTED"),
        ("de", "us", "read", "ExportSubject", "scc", jti["export"], None, [], True, "de->us:scc",
         "TRANSFER_ALLOWED"),
    ]  # fmt: skip
    history = mesh.vault("de").node.transfer_history(sid)
    got = [
        (h["from_region"], h["to_region"], h["direction"], h["operation"], h["basis"],
         h["token_id"], h["record_id"], h["categories"], h["allowed"], h["rule"], h["reason"])
        for h in history
    ]  # fmt: skip
    assert got == expected
    assert all(h["subject_id"] == sid and h["service"] == "test-service" for h in history)
    assert [h["purpose"] for h in history] == [PURPOSE] * 4 + ["essential.subject_rights"]
    assert all(h["at_us"] > 0 for h in history)
    # The export document carries the same entries (its own crossing included).
    assert [(t["operation"], t["allowed"]) for t in doc["transfers"]] == [
        (e[3], e[8]) for e in expected
    ]
    # No token and no data in the records.
    text = repr(history)
    assert "Grace" not in text and "Hopper" not in text
    # The same decisions are chained into de's audit log: the access report,
    # asked through the us node and forwarded home, names each entry region.
    report = mesh.client("us", rights).access_report(sid)
    crossed = [
        (e.operation, e.entry_region, e.transfer_basis, e.decision)
        for e in report
        if e.entry_region
    ]
    assert crossed == [
        ("GetRecord", "us", "scc", "ok"),
        ("ListRecords", "us", "scc", "ok"),
        ("PutRecord", "us", "scc", "ok"),
        ("GetRecord", "ru", "consent", "TRANSFER_BASIS_NOT_ACCEPTED"),
        ("ExportSubject", "us", "scc", "ok"),
    ]
    assert all(e.region == "de" for e in report)
    assert not any(t in text for t in tokens.values())


def test_find_subjects_fans_out_and_reports_regions_that_are_down(
    mesh: Mesh, tokens: dict[str | None, str]
) -> None:
    email = f"fan-{time.time_ns()}@example.org"
    ids = {}
    for home in NODE_REGIONS:
        c = mesh.client(home, tokens[None])
        ids[home] = c.create_subject(COUNTRY[home], lookups={"email": email}).subject_id
    # Every region: every id, no errors, from any entry node.
    three = mesh.issue(None, regions=list(NODE_REGIONS))
    for entry in NODE_REGIONS:
        resp = mesh.client(entry, three).find_subjects_response("email", email)
        assert sorted(resp.subject_ids) == sorted(ids.values())
        assert list(resp.region_errors) == []
    # cn and sg down: the call still answers, with a per-region error for each.
    mesh.stop("cn")
    mesh.stop("sg")
    try:
        resp = mesh.client("us", tokens[None]).find_subjects_response("email", email)
        up = [v for k, v in ids.items() if k not in ("cn", "sg")]
        assert sorted(resp.subject_ids) == sorted(up)
        assert [(e.region, e.code, e.reason) for e in resp.region_errors] == [
            ("cn", "UNAVAILABLE", "REGION_UNAVAILABLE"),
            ("sg", "UNAVAILABLE", "REGION_UNAVAILABLE"),
        ]
    finally:
        mesh.start("cn")
        mesh.start("sg")
    # One region by name, served by another node: forwarded.
    assert mesh.client("de", three).find_subjects("email", email, region="ru") == [ids["ru"]]


def test_a_node_down_makes_only_its_region_unavailable_and_comes_back(
    mesh: Mesh, tokens: dict[str | None, str]
) -> None:
    token = tokens["scc"]
    owner_ru = mesh.client("ru", token)
    ru_sid = owner_ru.create_subject("RU").subject_id
    ru_rec = owner_ru.put_record(ru_sid, CATEGORY, {"first": "Ivan"}).record_id
    de_rec = (
        mesh.client("de", token)
        .put_record(
            mesh.client("de", token).create_subject("DE").subject_id, CATEGORY, {"first": "Ada"}
        )
        .record_id
    )
    via_us = mesh.client("us", token, timeout=3.0)
    assert via_us.get_subject(ru_sid).subject_id == ru_sid
    mesh.stop("ru")
    try:
        start = time.monotonic()
        with pytest.raises(VaultClientError) as e:
            via_us.get_subject(ru_sid)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        assert e.value.reason == "REGION_UNAVAILABLE"
        assert time.monotonic() - start < 3.5
        assert via_us.get_record(de_rec).fields == {"first": "Ada"}  # others keep serving
        three = mesh.issue(None, regions=list(NODE_REGIONS))
        resp = mesh.client("de", three).find_subjects_response("email", "nobody@example.org")
        assert [(x.region, x.code) for x in resp.region_errors] == [("ru", "UNAVAILABLE")]
    finally:
        mesh.start("ru")  # a new server on the same port; the others are not restarted
    deadline = time.monotonic() + 10
    while True:
        try:
            assert via_us.get_subject(ru_sid).subject_id == ru_sid
            break
        except VaultClientError as e:
            assert e.code == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() < deadline, "the ru node's subjects are not served again"
            time.sleep(0.1)
    # ru data through us: ru has no transfer rule, refused as before the restart.
    with pytest.raises(VaultClientError) as e:
        via_us.get_record(ru_rec)
    assert e.value.reason == "TRANSFER_NOT_ALLOWED"
