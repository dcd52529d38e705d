"""Fixtures of the attack tests on forwarding (test_forwarding.py, test_relay.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Bao
from tests.integration._mesh import Mesh, start_mesh


@pytest.fixture(scope="module")
def mesh(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A node per region, in process, mutual TLS between them (one per test module)."""
    m = start_mesh(bao, tmp_path_factory.mktemp("mesh"))
    yield m
    m.close()


@pytest.fixture(scope="module")
def ru_record(mesh: Mesh) -> tuple[str, str]:
    """A Russian subject's record (ru allows no transfer at all): its subject and record ids."""
    c = mesh.client("ru", mesh.issue("scc"))
    sid = c.create_subject("RU").subject_id
    return sid, c.put_record(sid, "user.name", {"first": "Ivan"}).record_id
