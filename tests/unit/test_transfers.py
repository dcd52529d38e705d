"""Cross-border transfer rules: the decision, the shipped rules, broken files, the CLI."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from vault.config import default_regions_file, load_regions, parse_regions
from vault.errors import ConfigError
from vault.residency import (
    NO_TRANSFER,
    TRANSFER_ALLOWED,
    TRANSFER_BASIS_MISSING,
    TRANSFER_BASIS_NOT_ACCEPTED,
    TRANSFER_CATEGORY_NOT_ALLOWED,
    TRANSFER_NOT_ALLOWED,
    TRANSFER_PURPOSE_NOT_ALLOWED,
    TRANSFER_UNKNOWN_REGION,
    TransferDecision,
    TransferRule,
    TransferRules,
)
from vault.tokens import TRANSFER_BASES

# --- the decision, on rules built here ----------------------------------------

_REGIONS = ("cn", "us", "de", "ru", "sg")


def _rule(home: str, to: set[str], bases: set[str], **limits: set[str]) -> TransferRule:
    return TransferRule(
        home=home,
        destinations=frozenset(to),
        bases=frozenset(bases),
        **{k: frozenset(v) for k, v in limits.items()},  # type: ignore[arg-type]
    )


@pytest.fixture
def limited() -> TransferRules:
    """de -> us: scc for anything; de -> us, sg: consent for support about email or
    phone; de -> sg: consent for promotions, about anything."""
    return TransferRules(
        regions=_REGIONS,
        rules=(
            _rule("de", {"us"}, {"scc"}),
            _rule(
                "de",
                {"us", "sg"},
                {"consent"},
                purposes={"essential.service.support"},
                categories={"user.contact.email", "user.contact.phone_number"},
            ),
            _rule("de", {"sg"}, {"consent"}, purposes={"marketing.promotions"}),
        ),
    )


# home dest basis purpose category -> allowed rule reason ("-": None). Purposes
# and categories are abbreviated: svc essential.service, sup
# essential.service.support, promo marketing.promotions, stats analytics.reporting;
# email user.contact.email, phone user.contact.phone_number, name user.name.
_DECISIONS = """
de de -        svc   -     | yes local:de                 NO_TRANSFER
zz zz -        svc   -     | yes local                    NO_TRANSFER
de us scc      svc   name  | yes de->us:scc               TRANSFER_ALLOWED
de us scc      svc   -     | yes de->us:scc               TRANSFER_ALLOWED
de cn scc      svc   -     | no  no-rule:de->cn           TRANSFER_NOT_ALLOWED
us de scc      svc   -     | no  no-rule:us->de           TRANSFER_NOT_ALLOWED
de us -        svc   -     | no  no-rule:de->us:none      TRANSFER_BASIS_MISSING
de us adequacy svc   -     | no  no-rule:de->us:adequacy  TRANSFER_BASIS_NOT_ACCEPTED
de us made_up  svc   -     | no  no-rule:de->us:unknown   TRANSFER_BASIS_NOT_ACCEPTED
de us consent  sup   email | yes de->us:consent           TRANSFER_ALLOWED
de us consent  svc   email | no  de->us:consent           TRANSFER_PURPOSE_NOT_ALLOWED
de us consent  sup   name  | no  de->us:consent           TRANSFER_CATEGORY_NOT_ALLOWED
de us consent  sup   -     | no  de->us:consent           TRANSFER_CATEGORY_NOT_ALLOWED
de sg consent  promo name  | yes de->sg:consent           TRANSFER_ALLOWED
de sg consent  promo -     | yes de->sg:consent           TRANSFER_ALLOWED
de sg consent  sup   phone | yes de->sg:consent           TRANSFER_ALLOWED
de sg consent  sup   name  | no  de->sg:consent           TRANSFER_CATEGORY_NOT_ALLOWED
de sg consent  stats email | no  de->sg:consent           TRANSFER_PURPOSE_NOT_ALLOWED
de sg scc      promo -     | no  no-rule:de->sg:scc       TRANSFER_BASIS_NOT_ACCEPTED
de zz scc      svc   -     | no  unknown-region           TRANSFER_UNKNOWN_REGION
zz de scc      svc   -     | no  unknown-region           TRANSFER_UNKNOWN_REGION
"""
_NAMES = {
    "svc": "essential.service",
    "sup": "essential.service.support",
    "promo": "marketing.promotions",
    "stats": "analytics.reporting",
    "email": "user.contact.email",
    "phone": "user.contact.phone_number",
    "name": "user.name",
}


def _decision_rows() -> list[tuple[str, str, str | None, str, str | None, TransferDecision]]:
    rows = []
    for line in _DECISIONS.strip().splitlines():
        home, dest, basis, purpose, category, _, allowed, rule, reason = line.split()
        rows.append(
            (
                home,
                dest,
                None if basis == "-" else basis,
                _NAMES[purpose],
                None if category == "-" else _NAMES[category],
                TransferDecision(allowed == "yes", rule, reason),
            )
        )
    return rows


@pytest.mark.parametrize(
    ("home", "dest", "basis", "purpose", "category", "expected"), _decision_rows()
)
def test_decide(
    limited: TransferRules,
    home: str,
    dest: str,
    basis: str | None,
    purpose: str,
    category: str | None,
    expected: TransferDecision,
) -> None:
    assert limited.decide(home, dest, basis, purpose, category) == expected


def test_the_reason_codes_are_the_documented_constants() -> None:
    used = {row[-1].reason for row in _decision_rows()}
    assert used == {
        NO_TRANSFER,
        TRANSFER_ALLOWED,
        TRANSFER_NOT_ALLOWED,
        TRANSFER_BASIS_MISSING,
        TRANSFER_BASIS_NOT_ACCEPTED,
        TRANSFER_PURPOSE_NOT_ALLOWED,
        TRANSFER_CATEGORY_NOT_ALLOWED,
        TRANSFER_UNKNOWN_REGION,
    }


def test_an_empty_basis_is_not_accepted(limited: TransferRules) -> None:
    decision = limited.decide("de", "us", "", "essential.service", None)
    assert decision == TransferDecision(
        False, "no-rule:de->us:unknown", TRANSFER_BASIS_NOT_ACCEPTED
    )


def test_matrix_lists_every_pair_of_two_regions(limited: TransferRules) -> None:
    matrix = limited.matrix()
    assert list(matrix)[:4] == [("cn", "us"), ("cn", "de"), ("cn", "ru"), ("cn", "sg")]
    assert len(matrix) == 5 * 4
    assert matrix[("de", "us")] == ("consent", "scc")
    assert matrix[("de", "sg")] == ("consent",)
    assert {pair for pair, bases in matrix.items() if bases} == {("de", "us"), ("de", "sg")}
    assert limited.limited_only("de", "sg", "consent")
    assert limited.limited_only("de", "us", "consent")
    assert not limited.limited_only("de", "us", "scc")
    assert not limited.limited_only("de", "cn", "scc")


def test_no_rules_refuse_every_transfer() -> None:
    rules = TransferRules(regions=_REGIONS)
    assert rules.decide("de", "us", "scc", "essential.service", None).reason == (
        TRANSFER_NOT_ALLOWED
    )
    assert TransferRules().decide("de", "us", "scc", "essential.service", None).reason == (
        TRANSFER_UNKNOWN_REGION
    )
    assert TransferRules().decide("de", "de", None, "essential.service", None).allowed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"destinations": frozenset()}, "destinations: must not be empty"),
        ({"destinations": frozenset({"de", "us"})}, "must not include the home region"),
        ({"bases": frozenset()}, "bases: must not be empty"),
        ({"bases": frozenset({"scc", "contract"})}, "names an unknown transfer basis"),
        ({"purposes": frozenset()}, "purposes: must be None"),
        ({"categories": frozenset()}, "categories: must be None"),
    ],
)
def test_a_rule_checks_itself(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "home": "de",
        "destinations": frozenset({"us"}),
        "bases": frozenset({"scc"}),
    }
    with pytest.raises(ValueError, match=message):
        TransferRule(**(fields | kwargs))  # type: ignore[arg-type]


def test_rules_name_declared_regions_only() -> None:
    with pytest.raises(ValueError, match="declared regions only"):
        TransferRules(regions=("de", "us"), rules=(_rule("de", {"sg"}, {"scc"}),))
    with pytest.raises(ValueError, match="must not repeat"):
        TransferRules(regions=("de", "de"))


def test_rules_are_frozen(limited: TransferRules) -> None:
    with pytest.raises(AttributeError):
        limited.rules = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        limited.rules[0].bases = frozenset()  # type: ignore[misc]


def test_given_lists_are_frozen() -> None:
    rule = TransferRule(home="de", destinations=["us"], bases=["scc"], purposes=["x"])  # type: ignore[arg-type]
    rules = TransferRules(regions=["de", "us"], rules=[rule])  # type: ignore[arg-type]
    assert rule.destinations == frozenset({"us"}) and rule.purposes == frozenset({"x"})
    assert rule.categories is None
    assert rules.regions == ("de", "us") and rules.rules == (rule,)


# --- the transfers section of a regions file ------------------------------------

_TRANSFERS = {
    "de": [
        {"to": ["us"], "bases": ["scc", "adequacy"]},
        {"to": ["sg"], "bases": ["consent"], "purposes": ["marketing.promotions"]},
    ],
    "ru": [],
    "us": [{"to": ["de", "sg"], "bases": ["scc"], "categories": ["user.name"]}],
}


@pytest.fixture
def raw() -> dict[str, Any]:
    """The shipped regions file, with the transfer rules above."""
    loaded: dict[str, Any] = yaml.safe_load(default_regions_file().read_text())
    loaded["transfers"] = copy.deepcopy(_TRANSFERS)
    return loaded


def test_the_section_is_read_into_transfer_rules(raw: dict[str, Any]) -> None:
    cfg = parse_regions(raw)
    assert cfg.transfers == TransferRules(
        regions=("cn", "us", "de", "ru", "sg"),
        rules=(
            TransferRule(
                home="de", destinations=frozenset({"us"}), bases=frozenset({"scc", "adequacy"})
            ),
            TransferRule(
                home="de",
                destinations=frozenset({"sg"}),
                bases=frozenset({"consent"}),
                purposes=frozenset({"marketing.promotions"}),
            ),
            TransferRule(
                home="us",
                destinations=frozenset({"de", "sg"}),
                bases=frozenset({"scc"}),
                categories=frozenset({"user.name"}),
            ),
        ),
    )


def test_no_section_means_no_transfer(raw: dict[str, Any]) -> None:
    del raw["transfers"]
    rules = parse_regions(raw).transfers
    assert rules.rules == ()
    assert not any(rules.matrix().values())
    assert rules.decide("de", "us", "scc", "essential.service", None).reason == (
        TRANSFER_NOT_ALLOWED
    )


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A change to the raw file: ``path`` like ``transfers.de.0.to``; None deletes."""

    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = raw
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        key_: Any = int(last) if isinstance(node, list) else last
        if value is None:
            del node[key_]
        else:
            node[key_] = value

    return change


_BASES_HINT = "(adequacy, consent, scc, security_assessment)"
_KEYS_HINT = "(to, bases, purposes, categories)"


@pytest.mark.parametrize(
    ("change", "problems"),
    [
        (
            _set("transfers.de.0.to", ["us", "xx"]),
            [("transfers.de[0].to", "'xx' is not a declared region")],
        ),
        (
            _set("transfers.xx", [{"to": ["de"], "bases": ["scc"]}]),
            [("transfers.xx", "is not a declared region")],
        ),
        (
            _set("transfers.de.1.to", ["sg", "de"]),
            [("transfers.de[1].to", "names de itself: data at home is not a transfer")],
        ),
        (
            _set("transfers.de.0.bases", ["scc", "contract"]),
            [("transfers.de[0].bases", f"'contract' is not a transfer basis {_BASES_HINT}")],
        ),
        (
            _set("transfers.de.0.bases", []),
            [("transfers.de[0].bases", "must list at least one transfer basis")],
        ),
        (
            _set("transfers.de.0.bases", "scc"),
            [("transfers.de[0].bases", "must be a list of transfer basis names")],
        ),
        (
            _set("transfers.de.0.bases", None),
            [("transfers.de[0].bases", "is required")],
        ),
        (
            _set("transfers.us.0.to", None),
            [("transfers.us[0].to", "is required")],
        ),
        (
            _set("transfers.de.0.to", []),
            [("transfers.de[0].to", "must list at least one region id")],
        ),
        (
            _set("transfers.de.0.to", ["us", "us"]),
            [("transfers.de[0].to", "lists us twice")],
        ),
        (
            _set("transfers.de.0.tos", ["sg"]),
            [("transfers.de[0].tos", f"is not a known key {_KEYS_HINT}")],
        ),
        (
            _set("transfers.de.1.purposes", "marketing.promotions"),
            [
                (
                    "transfers.de[1].purposes",
                    "must be a list of purpose names (leave it out for any purpose)",
                )
            ],
        ),
        (
            _set("transfers.us.0.categories", {"user.name": "*"}),
            [
                (
                    "transfers.us[0].categories",
                    "must be a list of category names (leave it out for any category)",
                )
            ],
        ),
        (
            _set("transfers.de.1.purposes", []),
            [
                (
                    "transfers.de[1].purposes",
                    "must list at least one purpose (leave it out for any purpose)",
                )
            ],
        ),
        (
            _set("transfers.us.0.categories", ["user.name", "User Name"]),
            [("transfers.us[0].categories", "'User Name' is not a category name")],
        ),
        (
            _set("transfers.ru", {}),
            [("transfers.ru", "must be a list of rules ([] for none)")],
        ),
        (
            _set("transfers.de.0", "us"),
            [("transfers.de[0]", "must be a mapping with to and bases")],
        ),
        (
            _set("transfers", [{"to": ["us"], "bases": ["scc"]}]),
            [("transfers", "must map home region ids to lists of rules")],
        ),
        (
            _set("countries.us", ["US", "FR"]),
            [("countries.us", "FR is already mapped to de")],
        ),
        (
            _set("regions.2.endpoint", "127.0.0.1:70000"),
            [("regions[de].endpoint", "must end in a port from 1 to 65535")],
        ),
    ],
)
def test_a_broken_file_names_the_place(
    raw: dict[str, Any],
    change: Callable[[dict[str, Any]], None],
    problems: list[tuple[str, str]],
) -> None:
    change(raw)
    with pytest.raises(ConfigError) as e:
        parse_regions(raw)
    assert [(p.where, p.problem) for p in e.value.problems] == problems


def test_every_transfer_problem_is_reported_at_once(raw: dict[str, Any]) -> None:
    raw["transfers"]["de"][0] = {"to": ["de", "xx"], "bases": ["contract"], "tos": []}
    raw["transfers"]["us"][0]["purposes"] = "essential.service"
    raw["transfers"]["zz"] = []
    raw["countries"]["sg"].append("DE")
    raw["regions"][0]["endpoint"] = "localhost"
    with pytest.raises(ConfigError) as e:
        parse_regions(raw, source="regions.yaml")
    assert [(p.where, p.problem) for p in e.value.problems] == [
        ("regions[cn].endpoint", "must be host:port"),
        ("countries.sg", "DE is already mapped to de"),
        ("transfers.de[0].tos", f"is not a known key {_KEYS_HINT}"),
        ("transfers.de[0].to", "names de itself: data at home is not a transfer"),
        ("transfers.de[0].to", "'xx' is not a declared region"),
        ("transfers.de[0].bases", f"'contract' is not a transfer basis {_BASES_HINT}"),
        (
            "transfers.us[0].purposes",
            "must be a list of purpose names (leave it out for any purpose)",
        ),
        ("transfers.zz", "is not a declared region"),
    ]
    assert str(e.value).startswith("invalid configuration in regions.yaml:\n")
    assert "  transfers.de[0].to: 'xx' is not a declared region\n" in str(e.value)


def test_a_rule_naming_a_broken_region_is_not_reported_again(raw: dict[str, Any]) -> None:
    del raw["regions"][4]["database_url"]  # sg
    with pytest.raises(ConfigError) as e:
        parse_regions(raw)
    assert [p.where for p in e.value.problems] == ["regions[sg].database_url"]


def test_a_home_given_twice_in_a_file_is_an_error(tmp_path: Path) -> None:
    text = default_regions_file().read_text()
    text = text.split("\ntransfers:\n")[0] + (
        "\ntransfers:\n"
        "  de:\n"
        "    - {to: [us], bases: [scc]}\n"
        "  ru: []\n"
        "  de:\n"
        "    - {to: [sg], bases: [scc]}\n"
    )
    f = tmp_path / "regions.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_regions(f)
    line = len(text.splitlines()) - 1
    assert [(p.where, p.problem) for p in e.value.problems] == [
        (f"line {line}", "repeats the key 'de' of its mapping")
    ]


# --- the shipped rules ----------------------------------------------------------------

# What regions/regions.yaml promises, written out here rather than read from the
# code under test: home -> {destination: accepted bases}. Anything else is refused.
_SHIPPED: dict[str, dict[str, set[str]]] = {
    # EEA: EU standard contractual clauses everywhere, adequacy only towards us.
    "de": {"us": {"scc", "adequacy"}, "cn": {"scc"}, "ru": {"scc"}, "sg": {"scc"}},
    # Russian personal data stays in Russia.
    "ru": {},
    # Chinese personal data leaves only after a security assessment.
    "cn": {d: {"security_assessment"} for d in ("us", "de", "ru", "sg")},
    # United States: contract or consent, not to countries of concern.
    "us": {"de": {"scc", "consent"}, "sg": {"scc", "consent"}},
    # Singapore (and every unmapped country): contract or consent.
    "sg": {d: {"scc", "consent"} for d in ("cn", "us", "de", "ru")},
}
_BASES = ("scc", "adequacy", "consent", "security_assessment")


def _shipped_expectation(home: str, dest: str, basis: str | None) -> TransferDecision:
    if home == dest:
        return TransferDecision(True, f"local:{home}", "NO_TRANSFER")
    accepted = _SHIPPED[home].get(dest, set())
    if not accepted:
        return TransferDecision(False, f"no-rule:{home}->{dest}", "TRANSFER_NOT_ALLOWED")
    if basis is None:
        return TransferDecision(False, f"no-rule:{home}->{dest}:none", "TRANSFER_BASIS_MISSING")
    if basis not in accepted:
        return TransferDecision(
            False, f"no-rule:{home}->{dest}:{basis}", "TRANSFER_BASIS_NOT_ACCEPTED"
        )
    return TransferDecision(True, f"{home}->{dest}:{basis}", "TRANSFER_ALLOWED")


@pytest.fixture(scope="module")
def shipped() -> TransferRules:
    return load_regions(data_dir="/d", openbao_addr="x").transfers


def test_the_test_knows_every_basis() -> None:
    assert frozenset(_BASES) == TRANSFER_BASES


@pytest.mark.parametrize("basis", [None, *_BASES])
@pytest.mark.parametrize("dest", list(_SHIPPED))
@pytest.mark.parametrize("home", list(_SHIPPED))
def test_shipped_rules(shipped: TransferRules, home: str, dest: str, basis: str | None) -> None:
    expected = _shipped_expectation(home, dest, basis)
    # The shipped rules are not limited to purposes or categories.
    for purpose, category in [
        ("essential.service", None),
        ("essential.service", "user.name"),
        ("marketing.promotions", "user.contact.email"),
        ("essential.subject_rights", "user.location.precise"),
    ]:
        assert shipped.decide(home, dest, basis, purpose, category) == expected


def test_shipped_matrix(shipped: TransferRules) -> None:
    assert shipped.regions == ("cn", "us", "de", "ru", "sg")
    assert shipped.matrix() == {
        (home, dest): tuple(sorted(_SHIPPED[home].get(dest, ())))
        for home in ("cn", "us", "de", "ru", "sg")
        for dest in ("cn", "us", "de", "ru", "sg")
        if dest != home
    }
    assert not any(rule.limited for rule in shipped.rules)


# --- pdvault regions check ------------------------------------------------------------

_REPO = Path(__file__).resolve().parents[2]


def _regions_check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(_REPO),
        "PYTHONIOENCODING": "utf-8",
        "COLUMNS": "80",  # the table is wider: piped, it must not be folded or cut
    }
    env.pop("PDVAULT_REGIONS", None)
    return subprocess.run(
        [sys.executable, "-m", "vault.cli", "regions", "check", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=_REPO,
        timeout=60,
        check=False,
    )


def _table_rows(stdout: str) -> list[list[str]]:
    """The cells of every header and body line of a rich table."""
    return [
        [cell.strip() for cell in re.split(r"[│┃]", line)[1:-1]]
        for line in stdout.splitlines()
        if line.startswith(("│", "┃"))
    ]


def test_cli_prints_the_transfer_matrix() -> None:
    run = _regions_check()
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert lines[0] == "OK: 5 regions (cn, us, de, ru, sg), 34 countries mapped, default sg"
    regions = ["cn", "us", "de", "ru", "sg"]
    names = {"cn": "Beijing", "us": "United States", "de": "Germany", "ru": "Russia"}
    names["sg"] = "Singapore"
    expected = [["home → to", *regions]] + [
        [
            f"{home} ({names[home]})",
            *(
                "local" if dest == home else ", ".join(sorted(_SHIPPED[home].get(dest, ()))) or "—"
                for dest in regions
            ),
        ]
        for home in regions
    ]
    assert _table_rows(run.stdout) == expected
    assert "— no transfer" in run.stdout


def test_cli_marks_bases_limited_to_some_purposes(tmp_path: Path) -> None:
    text = default_regions_file().read_text().split("\ntransfers:\n")[0] + (
        "\ntransfers:\n"
        "  de:\n"
        "    - {to: [us], bases: [scc]}\n"
        "    - {to: [us, sg], bases: [consent], purposes: [essential.service.support]}\n"
    )
    f = tmp_path / "regions.yaml"
    f.write_text(text)
    run = _regions_check(str(f))
    assert run.returncode == 0, run.stderr
    rows = {row[0]: row[1:] for row in _table_rows(run.stdout)}
    assert rows["de (Germany)"] == ["—", "consent*, scc", "local", "—", "consent*"]
    assert rows["ru (Russia)"] == ["—", "—", "—", "local", "—"]


def test_cli_exits_1_with_the_problems_of_a_broken_file(tmp_path: Path) -> None:
    text = default_regions_file().read_text()
    text = text.replace("    - to: [cn, ru, sg]\n", "    - to: [cn, ru, sg, xx, de]\n")
    text = text.replace("bases: [security_assessment]", "bases: [security_assessment, pipl]")
    text = text.replace("  us: [US]\n", "  us: [US, FR]\n")
    f = tmp_path / "regions.yaml"
    f.write_text(text)
    run = _regions_check(str(f))
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"invalid configuration in {f}:",
        "  countries.us: FR is already mapped to de",
        "  transfers.de[1].to: 'xx' is not a declared region",
        "  transfers.de[1].to: names de itself: data at home is not a transfer",
        "  transfers.cn[0].bases: 'pipl' is not a transfer basis "
        "(adequacy, consent, scc, security_assessment)",
    ]
