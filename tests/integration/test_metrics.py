"""The Prometheus endpoint of a running node: scraped over HTTP before and after
real calls, the counters moved by exactly what the calls did, and the scrape
holds no id, token or value."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Bao, Stack, start_stack
from tests.integration._mesh import Mesh, start_mesh
from vault.client import VaultClientError
from vault.ids import new_record_id

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture(scope="module")
def node(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(bao, tmp_path_factory.mktemp("metrics-node"), metrics_port=0)
    yield s
    s.stop()


#: CreateSubject, PutRecord, three GetRecord, the GetRecord of a missing record,
#: ExportSubject, EraseSubject.
AUDITED = 8


def test_a_scrape_counts_what_the_calls_did(node: Stack, canary: str) -> None:
    port = node.server.server.metrics_port
    assert port > 0
    rights = node.client(node.issue("essential.subject_rights"))
    _, before = scrape(port)

    s = rights.create_subject("DE")
    r = rights.put_record(s.subject_id, "user.name", {"first": canary})
    for _ in range(3):
        assert rights.get_record(r.record_id).fields["first"] == canary
    with pytest.raises(VaultClientError) as missing:
        rights.get_record(new_record_id("de"))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(VaultClientError) as anonymous:
        node.client("not-a-token").get_record(r.record_id)
    assert anonymous.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert rights.export_subject(s.subject_id)["records"]
    receipt = rights.erase_subject(s.subject_id)
    assert receipt.signed_receipt

    text, after = scrape(port)
    req = "pdvault_grpc_requests_total"
    assert delta(before, after, req, method="CreateSubject", code="OK") == 1
    assert delta(before, after, req, method="PutRecord", code="OK") == 1
    assert delta(before, after, req, method="GetRecord", code="OK") == 3
    assert delta(before, after, req, method="GetRecord", code="NOT_FOUND") == 1
    assert delta(before, after, req, method="GetRecord", code="UNAUTHENTICATED") == 1
    assert delta(before, after, req, method="ExportSubject", code="OK") == 1
    assert delta(before, after, req, method="EraseSubject", code="OK") == 1
    assert delta(before, after, "pdvault_grpc_request_seconds_count", method="GetRecord") == 5
    assert delta(before, after, "pdvault_grpc_request_seconds_sum", method="GetRecord") > 0

    # A subject key made and its data key wrapped; after the destruction,
    # OpenBao refuses to unwrap (the receipt's evidence).
    bao = "pdvault_openbao_calls_total"
    assert delta(before, after, bao, op="create_key", outcome="ok") == 1
    assert delta(before, after, bao, op="encrypt", outcome="ok") >= 1
    assert delta(before, after, bao, op="decrypt", outcome="refused") >= 1
    assert delta(before, after, "pdvault_openbao_call_seconds_count", op="create_key") == 1

    # The reads after the write found the data key and the token cached.
    hits = "pdvault_cache_lookups_total"
    assert delta(before, after, hits, cache="data_key", result="hit") >= 3
    assert delta(before, after, hits, cache="token", result="hit") >= 6

    # Every call about the subject was audited in the region's log (the
    # unauthenticated one in the control log), in batches.
    entries = delta(before, after, "pdvault_audit_entries_total", log="de")
    batches = delta(before, after, "pdvault_audit_batches_total", log="de", outcome="ok")
    print(f"audit de: {entries} entries in {batches} batches")
    assert entries == AUDITED and 1 <= batches <= entries
    assert delta(before, after, "pdvault_audit_entries_total", log="control") >= 1
    assert delta(before, after, "pdvault_audit_batches_total", log="de", outcome="failed") == 0

    assert delta(before, after, "pdvault_erasures_total", event="requested") == 1
    assert delta(before, after, "pdvault_erasures_total", event="completed") == 1

    for secret in (canary, s.subject_id, r.record_id, node.admin, "not-a-token"):
        assert secret not in text


def test_a_node_without_the_flag_serves_no_metrics(stack: Stack) -> None:
    assert stack.vault is not None
    assert stack.server.server.metrics_port == 0


@pytest.fixture(scope="module")
def mesh(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = start_mesh(
        bao, tmp_path_factory.mktemp("metrics-mesh"), nodes=("de", "us"), metrics=frozenset({"de"})
    )
    yield m
    m.close()


def test_forwarded_calls_are_counted_by_region_pair(mesh: Mesh) -> None:
    port = mesh.servers["de"].server.metrics_port
    via_de = mesh.client("de", mesh.issue(regions=["us"]))
    _, before = scrape(port)
    s = via_de.create_subject("US")
    via_de.get_subject(s.subject_id)
    _, after = scrape(port)
    forwarded = "pdvault_forwarded_requests_total"
    assert delta(before, after, forwarded, from_region="de", to_region="us") == 2
    assert delta(before, after, forwarded, from_region="de", to_region="de") == 0


def test_a_node_whose_metrics_port_is_taken_refuses_to_start(
    bao: Bao, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            start_stack(bao, tmp_path_factory.mktemp("taken"), metrics_port=port)
