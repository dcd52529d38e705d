"""Cross-border transfer rules: the decision, the shipped rules, broken files, the CLI."""

from __future__ import annotations

import pytest

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
