"""One region over two OpenBao clusters: subjects sharded over the mounts of
both, every key call routed to the cluster holding the key's mount.

Two real OpenBao servers: the session's (mount transit-de) and a second one
started here (mount transit-de-b), each with its own node and eraser logins.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import hvac
import hvac.exceptions
import pytest
import yaml

from tests.conftest import Bao, Stack, start_stack
from vault.client import VaultClientError
from vault.config import RegionsConfig, default_regions_file, load_regions, parse_regions
from vault.devstack import OpenBaoServer
from vault.errors import ConfigError
from vault.keys import RoutedKeyRotator, TransitKeyProvider, TransitKeyRotator, TransitKeyShredder
from vault.rotation import SubjectKeyRotation
from vault.store import RotationStore

RIGHTS = "essential.subject_rights"
SECOND = "transit-de-b"


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """A second OpenBao server whose only de mount is transit-de-b."""
    d = tmp_path_factory.mktemp("openbao-2")
    server = OpenBaoServer(d, log=False)
    server.start()
    try:
        regions = _with_mounts(load_regions(data_dir=str(d), openbao_addr=server.address))
        creds = server.configure(regions)
        yield Bao(
            server,
            Path(regions.source),
            server.login(creds.node),
            server.login(creds.eraser),
            server.audit_log,
        )
    finally:
        server.stop()


def _with_mounts(regions: RegionsConfig, mount: str = SECOND) -> RegionsConfig:
    """The regions with de's only mount ``mount`` (what the other cluster holds)."""
    de = dataclasses.replace(regions.regions["de"], transit_mounts=(mount,))
    return dataclasses.replace(regions, regions={**regions.regions, "de": de})


@pytest.fixture(scope="module")
def node(bao: Bao, second: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(
        bao,
        tmp_path_factory.mktemp("multi-cluster"),
        transit_mounts={"de": ("transit-de", SECOND)},
        mount_addresses={"de": ((SECOND, second.address),)},
        more_clusters={
            second.address: (
                TransitKeyProvider.connect(second.address, second.node_token),
                TransitKeyShredder.connect(second.address, second.eraser_token),
            )
        },
    )
    yield s
    s.stop()


def _key_mount(node: Stack, sid: str) -> str:
    with sqlite3.connect(node.db_path("de")) as db:
        return str(db.execute("SELECT key_mount FROM subjects WHERE id = ?", (sid,)).fetchone()[0])


def _has_key(b: Bao, mount: str, sid: str) -> bool:
    try:
        b.root().secrets.transit.read_key(name=f"subject-{sid}", mount_point=mount)
    except hvac.exceptions.InvalidPath:
        return False
    return True


def _people(node: Stack, n: int, *, every_mount: bool = False) -> dict[str, str]:
    """``n`` people of de with a record each; with ``every_mount``, more until
    every de mount holds one (the hash of a random id picks the mount: twelve
    people all on one of two mounts happen once in 2,048 runs)."""
    c = node.client(node.issue(RIGHTS))
    mounts = set(node.regions.regions["de"].transit_mounts)
    out: dict[str, str] = {}
    seen: set[str] = set()
    i = 0
    while i < n or (every_mount and seen != mounts):
        assert i < n + 200, f"no subject landed on {sorted(mounts - seen)}"
        sid = c.create_subject("DE").subject_id
        out[sid] = c.put_record(
            sid, "user.contact.email", {"address": f"m{i}@example.org"}
        ).record_id
        seen.add(_key_mount(node, sid))
        i += 1
    return out


def _read_all_cold(node: Stack, people: dict[str, str]) -> None:
    node.vault.parts.data_keys["de"].clear()  # every read unwraps at its cluster
    c = node.client(node.issue(RIGHTS))
    for i, rid in enumerate(people.values()):
        assert c.get_record(rid).fields["address"] == f"m{i}@example.org"


def test_subjects_are_sharded_over_both_clusters_and_each_key_lives_in_one(
    node: Stack, bao: Bao, second: Bao
) -> None:
    people = _people(node, 24, every_mount=True)
    mounts = {sid: _key_mount(node, sid) for sid in people}
    assert set(mounts.values()) == {"transit-de", SECOND}  # both clusters take subjects
    for sid, mount in mounts.items():
        home, other = (bao, second) if mount == "transit-de" else (second, bao)
        assert _has_key(home, mount, sid)
        # The other cluster holds no key of this subject under any de mount.
        assert not _has_key(other, "transit-de", sid)
    _read_all_cold(node, people)


def test_erasure_destroys_the_key_in_its_own_cluster(node: Stack, second: Bao) -> None:
    people = _people(node, 12, every_mount=True)
    sid = next(s for s in people if _key_mount(node, s) == SECOND)
    c = node.client(node.issue(RIGHTS))
    receipt = c.erase_subject(sid, reason="subject_request")
    assert receipt.key_name == f"{SECOND}/subject-{sid}"
    assert list(receipt.key_versions_destroyed) == [1]
    assert not _has_key(second, SECOND, sid)
    with pytest.raises(VaultClientError) as e:
        c.get_record(people[sid])
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_a_rotation_job_rotates_keys_in_both_clusters(node: Stack, bao: Bao, second: Bao) -> None:
    people = _people(node, 10, every_mount=True)
    regions = node.regions
    rotators = {
        "transit-de": TransitKeyRotator.connect(bao.address, bao.server.rotator_token(regions)),
        SECOND: TransitKeyRotator.connect(
            second.address, second.server.rotator_token(_with_mounts(regions))
        ),
    }
    job = SubjectKeyRotation(
        RotationStore(node.vault.parts.stores["de"].engine), RoutedKeyRotator(rotators), "de"
    )
    done = job.run(0)
    assert done.failed == 0 and done.rotated >= len(people)
    for sid in people:
        mount = _key_mount(node, sid)
        b = bao if mount == "transit-de" else second
        key = b.root().secrets.transit.read_key(name=f"subject-{sid}", mount_point=mount)
        assert key["data"]["latest_version"] == 2
        assert key["data"]["min_decryption_version"] == 2
    _read_all_cold(node, people)


def test_a_key_on_an_unconfigured_mount_fails_closed(node: Stack) -> None:
    """A subject row pointed at a mount no cluster is configured for (a database
    edited, or a mount dropped from regions.yaml): UNAVAILABLE, no data."""
    people = _people(node, 1)
    sid, rid = next(iter(people.items()))
    with sqlite3.connect(node.db_path("de")) as db:
        db.execute("UPDATE subjects SET key_mount = 'transit-zz' WHERE id = ?", (sid,))
    node.vault.parts.data_keys["de"].clear()
    c = node.client(node.issue(RIGHTS))
    with pytest.raises(VaultClientError) as e:
        c.get_record(rid)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert "m0@example.org" not in str(e.value)


def test_the_node_is_not_ready_while_one_cluster_is_down(bao: Bao, tmp_path: Path) -> None:
    """A third server, stopped under a running node: NOT_SERVING, the first
    cluster's subjects still served from a warm cache and from OpenBao."""
    d = tmp_path / "openbao-3"
    d.mkdir()
    third = OpenBaoServer(d, log=False)
    third.start()
    creds = third.configure(
        _with_mounts(load_regions(data_dir=str(d), openbao_addr=third.address), "transit-de-c")
    )
    s = start_stack(
        bao,
        tmp_path / "node",
        transit_mounts={"de": ("transit-de", "transit-de-c")},
        mount_addresses={"de": (("transit-de-c", third.address),)},
        more_clusters={
            third.address: (
                TransitKeyProvider.connect(third.address, third.login(creds.node)),
                TransitKeyShredder.connect(third.address, third.login(creds.eraser)),
            )
        },
        health_probe_seconds=0.2,
    )
    try:
        assert not s.vault.not_ready()
        people = _people(s, 12, every_mount=True)
        on_first = {sid: rid for sid, rid in people.items() if _key_mount(s, sid) == "transit-de"}
        assert on_first and len(on_first) < len(people)
        third.stop()
        assert any("OpenBao of de" in name for name in s.vault.not_ready())
        s.vault.parts.data_keys["de"].clear()
        c = s.client(s.issue(RIGHTS))
        for sid, rid in people.items():
            if sid in on_first:
                assert c.get_record(rid).fields["address"].endswith("@example.org")
            else:
                with pytest.raises(VaultClientError) as e:
                    c.get_record(rid)
                assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        s.stop()
        third.stop()


# -- configuration ------------------------------------------------------------


def _raw() -> dict:  # type: ignore[type-arg]
    raw = yaml.safe_load(default_regions_file().read_text())
    assert isinstance(raw, dict)
    return raw


def _de(raw: dict) -> dict:  # type: ignore[type-arg]
    return next(r for r in raw["regions"] if r["id"] == "de")


def test_clusters_in_regions_yaml_map_every_mount_to_its_cluster() -> None:
    raw = _raw()
    _de(raw)["openbao"] = {
        "clusters": [
            {"address": "https://bao-de-1:8200", "mounts": ["transit-de", "transit-de-2"]},
            {"address": "https://bao-de-2:8200", "mounts": ["transit-de-3"]},
        ]
    }
    de = parse_regions(raw).regions["de"]
    assert de.openbao_address == "https://bao-de-1:8200"
    assert de.transit_mounts == ("transit-de", "transit-de-2", "transit-de-3")
    assert de.address_of("transit-de-3") == "https://bao-de-2:8200"
    assert de.address_of("transit-de-2") == "https://bao-de-1:8200"
    assert de.clusters() == {
        "https://bao-de-1:8200": ("transit-de", "transit-de-2"),
        "https://bao-de-2:8200": ("transit-de-3",),
    }


@pytest.mark.parametrize(
    ("openbao", "where", "problem"),
    [
        (
            {"clusters": [{"address": "a", "mounts": ["transit-de"]}], "address": "a"},
            "regions[de].openbao",
            "either clusters or address and mounts",
        ),
        ({"clusters": []}, "regions[de].openbao.clusters", "at least one"),
        (
            {
                "clusters": [
                    {"address": "a", "mounts": ["transit-de"]},
                    {"address": "b", "mounts": ["transit-de"]},
                ]
            },
            "regions[de].openbao.clusters[1].mounts",
            "twice in the region",
        ),
        (
            {
                "clusters": [
                    {"address": "a", "mounts": ["transit-de"]},
                    {"address": "a", "mounts": ["transit-de-2"]},
                ]
            },
            "regions[de].openbao.clusters[1].address",
            "two clusters",
        ),
        (
            {"clusters": [{"address": "a", "mounts": ["transit-de"], "token": "x"}]},
            "regions[de].openbao.clusters[0]",
            "address and mounts",
        ),
        (
            {"clusters": [{"address": "a", "mounts": []}]},
            "regions[de].openbao.clusters[0].mounts",
            "at least one",
        ),
    ],
)
def test_a_bad_cluster_list_is_reported_precisely(
    openbao: object, where: str, problem: str
) -> None:
    raw = _raw()
    _de(raw)["openbao"] = openbao
    with pytest.raises(ConfigError) as e:
        parse_regions(raw)
    assert [p.where for p in e.value.problems] == [where]
    assert problem in e.value.problems[0].problem
