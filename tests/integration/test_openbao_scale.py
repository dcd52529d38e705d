"""Subject keys spread over several Transit mounts of a region, and the local
OpenBao kept in bounds (its audit log rotated, keys counted per mount)."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Bao, live_sql, start_stack
from vault.cell import mount_for
from vault.config import load_regions

pytestmark = pytest.mark.integration

FOUR = ("transit-de", "transit-de-2", "transit-de-3", "transit-de-4")


def test_subjects_spread_over_the_mounts_and_keep_theirs_when_the_list_changes(
    own_bao: Bao, tmp_path: Path
) -> None:
    regions = load_regions(data_dir=str(tmp_path), openbao_addr=own_bao.address)
    regions.regions["de"] = dataclasses.replace(regions.regions["de"], transit_mounts=FOUR)
    creds = own_bao.server.configure(regions)  # mounts them; the node's policy covers them
    bao = dataclasses.replace(own_bao, node_token=creds.node, eraser_token=creds.eraser)
    data = tmp_path / "node"
    stack = start_stack(bao, data, transit_mounts={"de": FOUR})
    try:
        stack.vault.parts.pools["de"].mint(20)
        c = stack.client()
        people = []
        for i in range(60):  # the first 20 from the pool, then inline
            sid = c.create_subject("DE").subject_id
            people.append((sid, c.put_record(sid, "user.name", {"first": f"p{i}"}).record_id))
        rows = live_sql(stack.db_path("de"), "SELECT id, key_mount FROM subjects")
        mounts = dict((str(a), str(b)) for a, b in rows)
        assert Counter(mounts.values()).keys() == set(FOUR)  # every mount used
        for sid, _ in people:  # by a stable hash of the id, pooled or not
            assert mounts[sid] == mount_for(stack.regions.regions["de"], sid)
        counts = own_bao.server.key_counts(stack.regions)
        assert sum(counts[m] for m in FOUR) >= 60
    finally:
        stack.stop()

    # One mount only from now on: every subject keeps the mount stored with it.
    stack = start_stack(bao, data, transit_mounts={"de": ("transit-de",)})
    try:
        c = stack.client()
        for i, (_, rid) in enumerate(people):
            assert c.get_record(rid).fields == {"first": f"p{i}"}
        new = c.create_subject("DE").subject_id
        ((mount,),) = live_sql(
            stack.db_path("de"), "SELECT key_mount FROM subjects WHERE id = ?", new
        )
        assert mount == "transit-de"
    finally:
        stack.stop()


def test_the_openbao_audit_log_is_rotated_and_reopened(own_bao: Bao) -> None:
    server = own_bao.server
    root = own_bao.root()
    root.secrets.transit.list_keys(mount_point="transit-control")
    assert server.audit_log.stat().st_size > 0
    assert not server.rotate_audit_log(10**9)  # small enough: kept
    before = server.audit_log.read_bytes()
    assert server.rotate_audit_log(0)
    assert server.audit_log.with_name("audit.log.1").read_bytes() == before
    deadline = time.monotonic() + 30
    while not (server.audit_log.exists() and server.audit_log.stat().st_size > 0):
        assert time.monotonic() < deadline, "OpenBao did not reopen its audit log"
        root.secrets.transit.list_keys(mount_point="transit-control")
        time.sleep(0.1)
