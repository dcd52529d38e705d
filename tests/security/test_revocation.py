"""Security review [hardening]: a revocation made through any node is never missed.

Every test runs two nodes over one control database and acts through the public
gRPC API; the control database is put in the states the review found dangerous:
a revoking node whose clock is far behind, revocations whose transactions commit
out of order (PostgreSQL), a child token minted while its parent was being revoked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from sqlalchemy import Engine, event

from tests.conftest import Bao, postgres_database, start_stack
from tests.integration._access import (
    SERVICE,
    Env,
    Rpc,
    failure_of,
    live_claims,
    sign,
    wait_until_refused,
)
from vault.db import now_us
from vault.tokens import MAX_EXCHANGE_DEPTH, new_jti
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
#: How long a revocation may take to reach another node: generous for a loaded
#: two-core machine (the poll runs every 0.25 s).
WITHIN = 5.0
#: The revoking node's clock in the skew test: thirty days behind.
SKEW_US = 30 * 86_400 * 1_000_000


def _pair(bao: Bao, data_dir: Any, **first: Any) -> Iterator[tuple[Env, Env]]:
    """Two nodes over one data dir and control database; ``first`` configures the first."""
    control = {k: v for k, v in first.items() if k == "control_url"}
    nodes = [start_stack(bao, data_dir, **first), start_stack(bao, data_dir, **control)]
    envs = [Env(n, Rpc(n.target)) for n in nodes]
    try:
        yield envs[0], envs[1]
    finally:
        for e in envs:
            e.rpc.close()
            e.stack.stop()


@pytest.fixture(scope="module")
def skewed(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Env]]:
    """(behind, on_time): the first node's control store stamps times 30 days in the past."""
    yield from _pair(
        bao, tmp_path_factory.mktemp("skewed"), control_clock=lambda: now_us() - SKEW_US
    )


@pytest.fixture(scope="module")
def pair(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Env]]:
    yield from _pair(bao, tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="module")
def pg_control() -> Iterator[str]:
    with postgres_database("pdvault_control") as url:
        yield url


@pytest.fixture(scope="module")
def pg_pair(
    bao: Bao, pg_control: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Env, Env]]:
    """Two nodes whose shared control database is PostgreSQL."""
    yield from _pair(bao, tmp_path_factory.mktemp("pg-control"), control_url=pg_control)


class CommitGate:
    """Holds back the commit of the transaction that ran a matching statement.

    The statement has run (a sequence value is taken, the row written) but
    nobody else sees it until :meth:`open` lets the commit go ahead.
    """

    def __init__(self, engine: Engine, matches: Callable[[str, Any], bool]) -> None:
        self._engine = engine
        self._matches = matches
        self.holding = threading.Event()
        self._open = threading.Event()
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, conn: Any, _cur: Any, statement: str, params: Any, *_: Any) -> None:
        if self._matches(statement, params):
            conn.info["commit-gate"] = True

    def _commit(self, conn: Any) -> None:
        if conn.info.pop("commit-gate", False):
            self.holding.set()
            self._open.wait(30)

    def open(self) -> None:
        self._open.set()

    def remove(self) -> None:
        self._open.set()
        event.remove(self._engine, "before_cursor_execute", self._statement)
        event.remove(self._engine, "commit", self._commit)


def inserts_into(table: str, *values: str) -> Callable[[str, Any], bool]:
    def matches(statement: str, params: Any) -> bool:
        return statement.lstrip().upper().startswith(f"INSERT INTO {table.upper()}") and all(
            v in str(params) for v in values
        )

    return matches


def accepted(env: Env, token: str) -> None:
    env.rpc.call("GetSubject", pb.GetSubjectRequest(subject_id=env.subject("DE").subject_id), token)


# -- defect 2: the revocation poll ------------------------------------------------------


def test_a_revocation_by_a_node_whose_clock_is_far_behind_reaches_the_other_node(
    skewed: tuple[Env, Env],
) -> None:
    behind, on_time = skewed
    earlier, victim = on_time.issue(SERVICE), on_time.issue(SERVICE)
    for node in (behind, on_time):
        accepted(node, victim.token)
    # A revocation stamped by the on-time node, seen by both pollers.
    assert on_time.revoke(earlier.token_id, on_time.stack.admin).revoked
    wait_until_refused(behind.rpc, earlier.token, "REVOKED", within=WITHIN)
    time.sleep(1.0)  # four polls: the on-time node has read it back too

    assert behind.revoke(victim.token_id, behind.stack.admin).revoked
    elapsed = wait_until_refused(on_time.rpc, victim.token, "REVOKED", within=WITHIN)
    print(f"revocation by a node 30 days behind effective on the other after {elapsed:.3f} s")
    wait_until_refused(behind.rpc, victim.token, "REVOKED", within=0.1)


def test_revocations_committing_out_of_order_on_postgresql_are_both_seen(
    pg_pair: tuple[Env, Env],
) -> None:
    first, second = pg_pair
    slow, fast = first.issue(SERVICE), first.issue(SERVICE)
    for node in (first, second):
        accepted(node, slow.token)
        accepted(node, fast.token)
    # The first node's revocation of `slow` takes its place in the sequence, then
    # waits to commit while the second node's revocation of `fast` commits.
    gate = CommitGate(
        first.stack.vault.control.engine, inserts_into("revoked_tokens", slow.token_id)
    )
    try:
        with ThreadPoolExecutor(1) as pool:
            pending: Future[Any] = pool.submit(first.revoke, slow.token_id, first.stack.admin)
            assert gate.holding.wait(10), "the revocation never reached its commit"
            assert second.revoke(fast.token_id, second.stack.admin).revoked
            # Both pollers have read past `fast` (the first node's, through its refusal).
            wait_until_refused(first.rpc, fast.token, "REVOKED", within=WITHIN)
            time.sleep(1.0)
            accepted(second, slow.token)  # not committed yet: still good
            gate.open()
            assert pending.result(10).revoked
    finally:
        gate.remove()
    elapsed = wait_until_refused(second.rpc, slow.token, "REVOKED", within=WITHIN)
    print(f"revocation committed out of order effective on the other node after {elapsed:.3f} s")
    wait_until_refused(first.rpc, slow.token, "REVOKED", within=0.1)
    wait_until_refused(second.rpc, fast.token, "REVOKED", within=0.1)


# -- a networked control database never stalls the node ------------------------------------


def test_a_token_transaction_waiting_on_postgresql_does_not_stall_the_node(
    pg_pair: tuple[Env, Env],
) -> None:
    node, _ = pg_pair
    victim, bystander = node.issue(SERVICE), node.issue(SERVICE)
    subject = node.subject("DE").subject_id
    gate = CommitGate(
        node.stack.vault.control.engine, inserts_into("revoked_tokens", victim.token_id)
    )
    try:
        with ThreadPoolExecutor(1) as pool:
            pending: Future[Any] = pool.submit(node.revoke, victim.token_id, node.stack.admin)
            assert gate.holding.wait(10), "the revocation never reached its commit"
            start = time.monotonic()
            node.rpc.call("GetSubject", pb.GetSubjectRequest(subject_id=subject), bystander.token)
            assert pending.running()
            served = time.monotonic() - start
            gate.open()
            assert pending.result(10).revoked
    finally:
        gate.remove()
    assert served < 2.0, f"the node served nothing for {served:.1f} s"


# -- defect 3: a token is refused when any of its ancestors is revoked ------------------------


def refused_on_both(nodes: tuple[Env, Env], *tokens: str) -> None:
    for token in tokens:
        for node in nodes:
            wait_until_refused(node.rpc, token, "REVOKED", within=WITHIN)


def exchange_refused(node: Env, token: str) -> None:
    try:
        node.exchange(token, operations=["read"])
    except grpc.RpcError as e:
        f = failure_of(e)
        assert (f.code, f.reason) == (UNAUTHENTICATED, "REVOKED"), str(f)
    else:
        raise AssertionError("a token was exchanged from a revoked one")


@pytest.mark.parametrize("via", ["same-node", "other-node"])
def test_an_exchange_from_a_revoked_parent_is_refused(pair: tuple[Env, Env], via: str) -> None:
    first, second = pair
    node = first if via == "same-node" else second
    for _ in range(5):  # on the other node, right after the revocation: before it polls
        parent = first.issue(SERVICE)
        assert first.revoke(parent.token_id, first.stack.admin).revoked
        exchange_refused(node, parent.token)


def test_an_exchange_from_a_child_of_a_revoked_token_is_refused(pair: tuple[Env, Env]) -> None:
    first, second = pair
    for _ in range(5):
        parent = first.issue(SERVICE)
        child = first.exchange(parent.token, operations=["read"])
        assert first.revoke(parent.token_id, first.stack.admin).revoked
        exchange_refused(second, child.token)


def test_descendants_are_refused_on_every_node_when_a_revocation_skips_the_cascade(
    pair: tuple[Env, Env],
) -> None:
    """The parent's row is written straight into the control database, as a
    revocation whose cascade found no children (they were not recorded yet)."""
    first, second = pair
    parent = first.issue(SERVICE)
    child = first.exchange(parent.token, operations=["read", "write"])
    grandchild = second.exchange(child.token, operations=["read"])
    for node in pair:
        for t in (parent, child, grandchild):
            accepted(node, t.token)
    assert second.stack.vault.control.revoke(parent.token_id, parent.expires_at.seconds * 1_000_000)
    refused_on_both(pair, parent.token, child.token, grandchild.token)


def test_an_old_format_child_is_refused_when_its_parent_is_revoked(pair: tuple[Env, Env]) -> None:
    """A token without the ancestry claim (signed before it existed): its
    parent_jti is its ancestry. The cascade cannot find it (never recorded)."""
    first, second = pair
    parent = first.issue(SERVICE)
    old = sign(
        live_claims(purpose=SERVICE, sub="test-service", parent_jti=parent.token_id, jti=new_jti()),
        first.signing_key,
    )
    accepted(second, old)
    assert first.revoke(parent.token_id, first.stack.admin).revoked
    refused_on_both(pair, old)


def test_exchange_depth_is_capped(pair: tuple[Env, Env]) -> None:
    first, second = pair
    token = first.issue(SERVICE).token
    for depth in range(1, MAX_EXCHANGE_DEPTH + 1):
        token = (first if depth % 2 else second).exchange(token).token
    accepted(second, token)
    f = first.rpc.fail("ExchangeToken", pb.ExchangeTokenRequest(), token)
    assert (f.code, f.reason) == (grpc.StatusCode.PERMISSION_DENIED, "EXCHANGE_TOO_DEEP"), str(f)


def test_a_child_exchanged_while_its_parent_is_being_revoked_is_refused(
    pg_pair: tuple[Env, Env],
) -> None:
    """The race, through the API: the child's exchange is recorded (committed)
    only after the revocation of its parent has run its cascade, so the
    cascade never sees it."""
    first, second = pg_pair
    parent = first.issue(SERVICE)
    gate = CommitGate(
        second.stack.vault.control.engine,
        inserts_into("token_events", "exchange", parent.token_id),
    )
    try:
        with ThreadPoolExecutor(1) as pool:
            pending: Future[Any] = pool.submit(second.exchange, parent.token, operations=["read"])
            assert gate.holding.wait(10), "the exchange never reached its commit"
            assert first.revoke(parent.token_id, first.stack.admin).revoked
            gate.open()
            child = pending.result(10)
    finally:
        gate.remove()
    # The cascade missed it: the child itself was never revoked.
    assert not second.stack.vault.control.revoked_among([child.token_id])
    refused_on_both(pg_pair, parent.token, child.token)
    for node in pg_pair:
        exchange_refused(node, child.token)
