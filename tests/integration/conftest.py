"""Fixtures of the integration tests that more than one test file uses.

The session's OpenBao (``bao``) and node (``stack``) are in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Bao, Stack, start_stack
from tests.integration._access import Env
from vault.config import load_regions
from vault.devstack import OpenBaoServer


@pytest.fixture(scope="module")
def env(stack: Stack) -> Iterator[Env]:
    """The session node with a raw channel (every RPC, any authorization header)."""
    e = Env.connect(stack)
    yield e
    e.close()


@pytest.fixture
def own_bao(tmp_path: Path) -> Iterator[Bao]:
    """An OpenBao of this test alone, in ``tmp_path`` (where ``pdvault up`` would lay
    it out beside the node's data), so stopping or restoring it disturbs no other test."""
    server = OpenBaoServer(tmp_path, log=False)
    server.start()
    try:
        regions = load_regions(data_dir=str(tmp_path), openbao_addr=server.address)
        creds = server.configure(regions)
        yield Bao(server, Path(regions.source), creds.node, creds.eraser, server.audit_log)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def two_nodes(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    """Two nodes of one vault: the same data dir (control database, token keys, cells).

    A fresh data dir rather than the session stack's: other tests rewrite the
    session's SQLite files from other processes and run CLI processes on them.
    """
    data_dir = tmp_path_factory.mktemp("two-nodes")
    first = start_stack(bao, data_dir)
    try:
        second = start_stack(bao, data_dir)
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()
