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

import pytest
from sqlalchemy import Engine, event

from tests.conftest import Bao, postgres_database, start_stack
from tests.integration._access import SERVICE, Env, Rpc
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration


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
