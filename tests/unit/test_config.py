import copy
from pathlib import Path

import pytest
import yaml

from vault.config import default_regions_file, load_regions, parse_regions
from vault.errors import ConfigError, InvalidArgument


@pytest.fixture
def raw() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(default_regions_file().read_text())  # type: ignore[no-any-return]


def test_shipped_regions_file_is_valid() -> None:
    cfg = load_regions(data_dir="/d", openbao_addr="http://bao")
    assert set(cfg.regions) == {"cn", "us", "de", "ru", "sg"}
    assert cfg.regions["de"].database_url == "sqlite:////d/cells/de.db"
    assert cfg.regions["cn"].openbao_address == "http://bao"


@pytest.mark.parametrize(
    ("country", "region"),
    [
        ("DE", "de"),
        ("FR", "de"),
        ("NO", "de"),
        ("IS", "de"),
        ("CN", "cn"),
        ("RU", "ru"),
        ("US", "us"),
        ("SG", "sg"),
        ("JP", "sg"),
        ("br", "sg"),
    ],
)
def test_country_to_region(country: str, region: str) -> None:
    assert load_regions(data_dir="/d", openbao_addr="x").region_for(country) == region


def test_requested_region_must_agree_with_the_country() -> None:
    cfg = load_regions(data_dir="/d", openbao_addr="x")
    assert cfg.region_for("DE", "de") == "de"
    with pytest.raises(InvalidArgument) as e:
        cfg.region_for("DE", "us")
    assert e.value.violations[0].field == "region"


@pytest.mark.parametrize("country", ["", "XX", "DEU", "1"])
def test_unknown_countries_are_rejected(country: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        load_regions(data_dir="/d", openbao_addr="x").region_for(country)
    assert e.value.violations[0].field == "country"


def test_every_problem_is_reported_at_once(raw: dict) -> None:  # type: ignore[type-arg]
    bad = copy.deepcopy(raw)
    bad["default_region"] = "zz"
    bad["countries"]["de"].append("XX")
    bad["countries"]["us"].append("DE")
    bad["regions"][0]["openbao"]["mounts"] = []
    del bad["regions"][1]["endpoint"]
    with pytest.raises(ConfigError) as e:
        parse_regions(bad)
    wheres = {p.where for p in e.value.problems}
    assert {
        "default_region",
        "countries.de",
        "countries.us",
        "regions[cn].openbao.mounts",
        "regions[us].endpoint",
    } <= wheres


def test_yaml_norway_problem_is_caught(tmp_path: Path, raw: dict) -> None:  # type: ignore[type-arg]
    text = default_regions_file().read_text().replace('"NO"', "NO")
    f = tmp_path / "regions.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_regions(f)
    assert any("False" in p.problem for p in e.value.problems)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_regions(tmp_path / "missing.yaml")


def test_a_broken_region_entry_is_reported_once(raw: dict) -> None:  # type: ignore[type-arg]
    del raw["regions"][2]["database_url"]  # de, also the region of countries.de
    raw["default_region"] = "de"
    raw["regions"].append(copy.deepcopy(raw["regions"][2]))
    with pytest.raises(ConfigError) as e:
        parse_regions(raw)
    assert [(p.where, p.problem) for p in e.value.problems] == [
        ("regions[de].database_url", "is required"),
        ("regions[de]", "is declared twice"),
    ]


@pytest.mark.parametrize(
    "endpoint",
    ["127.0.0.1:50051", "localhost:1", "cell-de.example.org:65535", "[::1]:50051"],
)
def test_good_endpoints(raw: dict, endpoint: str) -> None:  # type: ignore[type-arg]
    raw["regions"][2]["endpoint"] = endpoint
    assert parse_regions(raw).regions["de"].endpoint == endpoint


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("127.0.0.1", "must be host:port"),
        (":50051", "must be host:port"),
        ("127.0.0.1:0", "must end in a port from 1 to 65535"),
        ("127.0.0.1:65536", "must end in a port from 1 to 65535"),
        ("127.0.0.1:http", "must end in a port from 1 to 65535"),
        ("127.0.0.1:-1", "must end in a port from 1 to 65535"),
        ("999.0.0.1:50051", "has an invalid IPv4 address"),
        ("[::g]:50051", "has an invalid IPv6 address"),
        ("::1:50051", "must name a host (DNS name, IPv4 address or [IPv6 address])"),
        ("cell de:50051", "must name a host (DNS name, IPv4 address or [IPv6 address])"),
        ("http://cell:50051", "must name a host (DNS name, IPv4 address or [IPv6 address])"),
        (50051, "must be a string host:port"),
    ],
)
def test_bad_endpoints_are_rejected(raw: dict, endpoint: object, problem: str) -> None:  # type: ignore[type-arg]
    raw["regions"][2]["endpoint"] = endpoint
    raw["regions"][3]["endpoint"] = "127.0.0.1:99999"
    with pytest.raises(ConfigError) as e:
        parse_regions(raw)
    assert [(p.where, p.problem) for p in e.value.problems] == [
        ("regions[de].endpoint", problem),
        ("regions[ru].endpoint", "must end in a port from 1 to 65535"),
    ]


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    text = default_regions_file().read_text()
    text = text.replace("  cn: [CN]\n", "  cn: [CN]\n  de: [CH]\n")  # drops the EEA list
    assert yaml.safe_load(text)["countries"]["de"] == ["CH"]  # what PyYAML alone does
    line = text.splitlines().index("  de: [CH]") + 1
    f = tmp_path / "regions.yaml"
    f.write_text(text.replace("default_region: sg", "default_region: zz"))
    with pytest.raises(ConfigError) as e:
        load_regions(f)
    assert [(p.where, p.problem) for p in e.value.problems] == [
        (f"line {line}", "repeats the key 'de' of its mapping"),
        ("default_region", "must name a declared region"),
    ]
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_regions(f)
    assert [p.where for p in e.value.problems] == [f"line {line}"]


def test_node_identities_default_per_region_and_map_back() -> None:
    cfg = load_regions(data_dir="/d", openbao_addr="x")
    assert {r.node_identity for r in cfg.regions.values()} == {
        f"pdvault-node.{r}" for r in cfg.regions
    }
    assert cfg.node_region("pdvault-node.ru") == "ru"
    # Exact match only: no prefix, no list of names, no case folding.
    for other in (None, "", "pdvault-node", "pdvault-node.ru,x", "PDVAULT-NODE.RU", "crm"):
        assert cfg.node_region(other) is None


@pytest.mark.parametrize(
    ("identity", "problem"),
    [
        ("pdvault-node.us", "already the node identity of us"),
        ("node a", "certificate identity"),
        ("node-a,node-b", "certificate identity"),
        ("", "certificate identity"),
        (7, "certificate identity"),
    ],
)
def test_node_identity_is_validated(raw: dict, identity: object, problem: str) -> None:  # type: ignore[type-arg]
    bad = copy.deepcopy(raw)
    bad["regions"][2]["node_identity"] = identity  # de
    with pytest.raises(ConfigError) as e:
        parse_regions(bad)
    assert any("node_identity" in p.where and problem in p.problem for p in e.value.problems)


def test_the_shipped_rotation_schedule_and_a_region_without_one(raw: dict) -> None:  # type: ignore[type-arg]
    de = parse_regions(raw).regions["de"].key_rotation
    assert de is not None and (de.period_seconds, de.rate_per_second) == (90 * 86400, 10.0)
    del raw["regions"][2]["key_rotation"]
    assert parse_regions(raw).regions["de"].key_rotation is None


def test_the_shipped_signing_key_schedule_and_none(raw: dict) -> None:  # type: ignore[type-arg]
    assert parse_regions(raw).control.signing_key_rotation_seconds == 90 * 86400
    del raw["control"]["signing_key_rotation"]
    assert parse_regions(raw).control.signing_key_rotation_seconds is None


@pytest.mark.parametrize(
    ("rotation", "problem"),
    [
        ({"period": "90"}, "must be a positive duration"),
        ({"period": "0d"}, "must be a positive duration"),
        ({"period": "30d", "rate_per_second": 1}, "must be a mapping with only period"),
        ({}, "must be a mapping with only period"),
        ("90d", "must be a mapping with only period"),
    ],
)
def test_a_bad_signing_key_schedule_is_reported(
    raw: dict,  # type: ignore[type-arg]
    rotation: object,
    problem: str,
) -> None:
    raw["control"]["signing_key_rotation"] = rotation
    with pytest.raises(ConfigError) as e:
        parse_regions(raw)
    assert len(e.value.problems) == 1
    assert e.value.problems[0].where.startswith("control.signing_key_rotation")
    assert problem in e.value.problems[0].problem


@pytest.mark.parametrize(
    ("rotation", "where", "problem"),
    [
        ({"period": "90"}, "regions[de].key_rotation.period", "must be a positive duration"),
        ({"period": "0d"}, "regions[de].key_rotation.period", "must be a positive duration"),
        (
            {"period": "1d", "rate_per_second": 0},
            "regions[de].key_rotation.rate_per_second",
            "positive",
        ),
        (
            {"period": "1d", "rate_per_second": True},
            "regions[de].key_rotation.rate_per_second",
            "positive",
        ),
        ({"period": "1d", "every": 3}, "regions[de].key_rotation", "must be a mapping"),
        ("90d", "regions[de].key_rotation", "must be a mapping"),
    ],
)
def test_a_bad_rotation_schedule_is_reported(
    raw: dict,  # type: ignore[type-arg]
    rotation: object,
    where: str,
    problem: str,
) -> None:
    raw["regions"][2]["key_rotation"] = rotation
    with pytest.raises(ConfigError) as e:
        parse_regions(raw)
    assert [p.where for p in e.value.problems] == [where]
    assert problem in e.value.problems[0].problem


def test_the_shipped_index_rotation_schedule_and_a_bad_one(raw: dict) -> None:  # type: ignore[type-arg]
    de = parse_regions(raw).regions["de"].index_rotation
    assert de is not None and (de.period_seconds, de.rate_per_second) == (90 * 86400, 10.0)
    del raw["regions"][2]["index_rotation"]
    assert parse_regions(raw).regions["de"].index_rotation is None
    for bad, where in (
        ({"period": "soon"}, "regions[de].index_rotation.period"),
        ({"period": "1d", "rate_per_second": -1}, "regions[de].index_rotation.rate_per_second"),
        ({"period": "1d", "drop_unsealed": True}, "regions[de].index_rotation"),
    ):
        raw["regions"][2]["index_rotation"] = bad
        with pytest.raises(ConfigError) as e:
            parse_regions(raw)
        assert [p.where for p in e.value.problems] == [where]
