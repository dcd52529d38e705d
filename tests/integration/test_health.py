"""gRPC health follows the node's dependencies: NOT_SERVING while its OpenBao or
a database is gone, SERVING again once it is back, without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Bao, Stack, start_stack
from tests.integration.conftest import TcpProxy, through
from vault.keys import TransitKeyProvider
from vault.server import SERVICE_NAMES

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PROBE_SECONDS = 0.2


def statuses(stack: Stack) -> set[int]:
    """The status of the whole server and of the vault service."""
    with grpc.insecure_channel(stack.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return {
            stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            for name in ("", *SERVICE_NAMES)
        }


def wait_for(stack: Stack, status: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while (seen := statuses(stack)) != {status}:
        assert time.monotonic() < deadline, f"health stayed {seen}, expected {status}"
        time.sleep(0.1)


def test_health_follows_openbao(own_bao: Bao, tmp_path: Path) -> None:
    stack = start_stack(own_bao, tmp_path / "node", health_probe_seconds=PROBE_SECONDS)
    try:
        time.sleep(3 * PROBE_SECONDS)  # probed at least once with everything up
        assert statuses(stack) == {SERVING}
        own_bao.server.stop()
        wait_for(stack, NOT_SERVING)
        own_bao.server.start()  # unsealed again; the node is not restarted
        wait_for(stack, SERVING)
        c = stack.client()
        assert c.get_subject(c.create_subject("DE").subject_id).region == "de"
    finally:
        stack.stop()


def test_health_follows_the_cell_database(
    bao: Bao, pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    stack = start_stack(
        bao,
        tmp_path / "node",
        database_urls={"de": through(pg_proxy, pg_url)},
        health_probe_seconds=PROBE_SECONDS,
    )
    try:
        time.sleep(3 * PROBE_SECONDS)
        assert statuses(stack) == {SERVING}
        pg_proxy.stop()
        wait_for(stack, NOT_SERVING)
        pg_proxy.start()  # the same port
        wait_for(stack, SERVING)
    finally:
        stack.stop()


def test_openbao_readiness_tries_the_other_addresses_of_a_cluster(bao: Bao) -> None:
    """A cluster address that is down moves the probe on, as it moves a call."""
    dead = "http://127.0.0.1:1"
    provider = TransitKeyProvider.connect(f"{dead},{bao.address}", bao.node_token, timeout=2)
    assert provider.ready()
    assert not TransitKeyProvider.connect(f"{dead},{dead}", bao.node_token, timeout=2).ready()
