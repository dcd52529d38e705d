"""Every validation rule of the policy file has a negative test here."""

from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vault.errors import ConfigError
from vault.policy import (
    LEGAL_BASES,
    OPERATIONS,
    Category,
    Purpose,
    check_main,
    default_policy_path,
    load_policy,
    parse_policy,
)

MARKETING = "purposes.marketing.communications.email"


def valid() -> dict[str, Any]:
    """A small valid policy; each test breaks one thing."""
    return {
        "version": 1,
        "revision": "2026-11-29",
        "categories": {
            "user.contact.email": {"description": "Email address.", "fields": ["address"]},
            "user.name": {"description": "Name.", "fields": ["first", "last"]},
            "user.content": {"description": "Free-form."},
        },
        "purposes": {
            "essential.service": {
                "description": "Provide the service.",
                "legal_basis": "contract",
                "categories": {
                    "user.contact.email": "*",
                    "user.name": ["first", "last"],
                    "user.content": ["anything-goes_1"],
                },
                "operations": ["read", "write"],
                "requires_consent": False,
                "minors": True,
                "allowed_when_restricted": False,
                "retention_days": None,
            },
            "marketing.communications.email": {
                "description": "Marketing email.",
                "legal_basis": "consent",
                "categories": {"user.contact.email": ["address"]},
                "operations": ["read"],
                "requires_consent": True,
                "minors": False,
                "allowed_when_restricted": False,
                "retention_days": 730,
            },
        },
    }


def problems(raw: object) -> dict[str, list[str]]:
    with pytest.raises(ConfigError) as e:
        parse_policy(raw, "test.yaml")
    assert e.value.source == "test.yaml"
    out: dict[str, list[str]] = {}
    for p in e.value.problems:
        out.setdefault(p.where, []).append(p.problem)
    return out


def broken(path: str, value: Any) -> dict[str, Any]:
    """valid() with the key at ``path`` (a list of keys) set to ``value``."""
    raw = valid()
    *parents, last = path.split("/")
    node = raw
    for k in parents:
        node = node[k]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


_DELETE = object()
ESS = "purposes/essential.service"
MKT = "purposes/marketing.communications.email"


def test_valid_policy_parses() -> None:
    policy = parse_policy(valid(), "test.yaml")
    assert policy.revision == "2026-11-29"
    assert policy.categories["user.content"].fields is None
    assert policy.categories["user.name"].fields == frozenset({"first", "last"})
    p = policy.purposes["essential.service"]
    assert p.categories["user.contact.email"] is None
    assert p.categories["user.name"] == frozenset({"first", "last"})
    assert p.operations == frozenset({"read", "write"})
    assert policy.purposes["marketing.communications.email"].retention_days == 730


def test_document_must_be_a_mapping() -> None:
    assert "file" in problems(["version", 1])
    assert "file" in problems(None)


# --- top level ----------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    assert "purpose" in problems(broken("purpose", {}))


@pytest.mark.parametrize("version", [2, 0, "1", True, None, 1.0])
def test_version_must_be_1(version: object) -> None:
    assert "version" in problems(broken("version", version))


def test_version_missing() -> None:
    assert "version" in problems(broken("version", _DELETE))


@pytest.mark.parametrize("revision", [_DELETE, "", "  ", 7, None])
def test_revision_is_a_required_string(revision: object) -> None:
    assert "revision" in problems(broken("revision", revision))


# --- categories ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [_DELETE, {}, [], "user.name", None])
def test_categories_must_be_a_non_empty_mapping(value: object) -> None:
    assert "categories" in problems(broken("categories", value))


@pytest.mark.parametrize(
    "name", ["contact.email", "user", "user.Contact", "user..email", "user.contact-email", "user.1"]
)
def test_category_name_must_follow_the_taxonomy(name: str) -> None:
    assert f"categories.{name}" in problems(broken(f"categories/{name}", {"description": "x"}))


def test_category_must_be_a_mapping() -> None:
    assert "categories.user.name" in problems(broken("categories/user.name", ["first"]))


def test_unknown_category_key() -> None:
    raw = broken("categories/user.name/fileds", ["first"])
    assert "categories.user.name.fileds" in problems(raw)


@pytest.mark.parametrize("value", [_DELETE, "", 3])
def test_category_description_is_required(value: object) -> None:
    where = "categories.user.name.description"
    assert where in problems(broken("categories/user.name/description", value))


@pytest.mark.parametrize("value", ["first", [], {"first": 1}])
def test_category_fields_must_be_a_non_empty_list(value: object) -> None:
    where = "categories.user.name.fields"
    assert where in problems(broken("categories/user.name/fields", value))


@pytest.mark.parametrize("field", ["first.name", "-first", "", "first name", 7, True])
def test_category_field_names(field: object) -> None:
    raw = broken("categories/user.name/fields", ["last", field])
    assert "categories.user.name.fields[1]" in problems(raw)


def test_category_field_listed_twice() -> None:
    raw = broken("categories/user.name/fields", ["first", "last", "first"])
    assert "categories.user.name.fields[2]" in problems(raw)


# --- purposes -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [_DELETE, {}, [], None])
def test_purposes_must_be_a_non_empty_mapping(value: object) -> None:
    assert "purposes" in problems(broken("purposes", value))


@pytest.mark.parametrize("name", ["Essential", "essential..service", "1st", "essential.", "a-b"])
def test_purpose_name(name: str) -> None:
    raw = valid()
    raw["purposes"][name] = raw["purposes"].pop("essential.service")
    assert f"purposes.{name}" in problems(raw)


def test_purpose_must_be_a_mapping() -> None:
    assert "purposes.essential.service" in problems(broken(ESS, "contract"))


def test_unknown_purpose_key() -> None:
    where = "purposes.essential.service.retention"
    assert where in problems(broken(f"{ESS}/retention", 30))


@pytest.mark.parametrize(
    "key",
    [
        "description",
        "legal_basis",
        "categories",
        "operations",
        "requires_consent",
        "minors",
        "allowed_when_restricted",
        "retention_days",
    ],
)
def test_every_purpose_key_is_required(key: str) -> None:
    found = problems(broken(f"{ESS}/{key}", _DELETE))
    assert found[f"purposes.essential.service.{key}"] == ["is required"]


@pytest.mark.parametrize(
    "basis", ["Consent", "legitimate_interest", "", None, 1, ["consent"], {"consent": True}]
)
def test_legal_basis_must_be_known(basis: object) -> None:
    assert f"{MARKETING}.legal_basis" in problems(broken(f"{MKT}/legal_basis", basis))


@pytest.mark.parametrize("key", ["requires_consent", "minors", "allowed_when_restricted"])
@pytest.mark.parametrize("value", ["false", "no", 0, 1, None])
def test_flags_must_be_booleans(key: str, value: object) -> None:
    assert f"purposes.essential.service.{key}" in problems(broken(f"{ESS}/{key}", value))


def test_consent_basis_requires_consent() -> None:
    found = problems(broken(f"{MKT}/requires_consent", False))
    assert any("legal_basis is consent" in p for p in found[f"{MARKETING}.requires_consent"])


def test_marketing_never_applies_to_minors() -> None:
    assert f"{MARKETING}.minors" in problems(broken(f"{MKT}/minors", True))


def test_marketing_needs_consent_whatever_the_basis() -> None:
    raw = broken(f"{MKT}/legal_basis", "legitimate_interests")
    raw["purposes"]["marketing.communications.email"]["requires_consent"] = False
    assert f"{MARKETING}.requires_consent" in problems(raw)


def test_non_marketing_purposes_may_include_minors() -> None:
    assert parse_policy(valid(), "t").purposes["essential.service"].minors


@pytest.mark.parametrize("value", [[], "read", None, {"read": True}])
def test_operations_must_be_a_non_empty_list(value: object) -> None:
    where = "purposes.essential.service.operations"
    assert where in problems(broken(f"{ESS}/operations", value))


@pytest.mark.parametrize("op", ["sell", "READ", "update", 1, None])
def test_unknown_operation(op: object) -> None:
    raw = broken(f"{ESS}/operations", ["read", op])
    assert "purposes.essential.service.operations[1]" in problems(raw)


def test_operation_listed_twice() -> None:
    raw = broken(f"{ESS}/operations", ["read", "write", "read"])
    assert "purposes.essential.service.operations[2]" in problems(raw)


@pytest.mark.parametrize("days", [-1, -365, 0, 1.5, "30", True])
def test_retention_must_be_positive_days(days: object) -> None:
    where = "purposes.essential.service.retention_days"
    assert where in problems(broken(f"{ESS}/retention_days", days))


def test_retention_may_be_null() -> None:
    assert parse_policy(valid(), "t").purposes["essential.service"].retention_days is None


@pytest.mark.parametrize("value", [{}, [], "*", None])
def test_purpose_categories_must_be_a_non_empty_mapping(value: object) -> None:
    where = "purposes.essential.service.categories"
    assert where in problems(broken(f"{ESS}/categories", value))


def test_purpose_names_an_undeclared_category() -> None:
    raw = broken(f"{ESS}/categories/user.financial", "*")
    found = problems(raw)
    assert found["purposes.essential.service.categories.user.financial"] == [
        "is not a declared category"
    ]


def test_purpose_field_not_declared_by_category() -> None:
    raw = broken(f"{ESS}/categories/user.name", ["first", "middle"])
    found = problems(raw)
    assert any("'middle'" in p for p in found["purposes.essential.service.categories.user.name"])


def test_free_form_category_accepts_any_field_name() -> None:
    policy = parse_policy(valid(), "t")
    assert policy.purposes["essential.service"].categories["user.content"] == frozenset(
        {"anything-goes_1"}
    )


@pytest.mark.parametrize("value", ["all", "**", [], None, 1, {"first": True}])
def test_grant_must_be_star_or_field_list(value: object) -> None:
    where = "purposes.essential.service.categories.user.name"
    assert where in problems(broken(f"{ESS}/categories/user.name", value))


def test_granted_field_names_are_checked_in_free_form_categories() -> None:
    raw = broken(f"{ESS}/categories/user.content", ["ok", "not.ok"])
    assert "purposes.essential.service.categories.user.content[1]" in problems(raw)


# --- every problem at once ----------------------------------------------------------


def test_every_problem_is_reported_together() -> None:
    raw = valid()
    raw["version"] = 2
    raw["colour"] = "blue"
    raw["categories"]["user.name"]["fields"] = ["first", "first.name"]
    ess = raw["purposes"]["essential.service"]
    ess["legal_basis"] = "because"
    ess["operations"] = ["read", "sell"]
    ess["retention_days"] = -1
    ess["categories"]["user.financial"] = "*"
    mkt = raw["purposes"]["marketing.communications.email"]
    mkt["minors"] = True
    mkt["requires_consent"] = False
    with pytest.raises(ConfigError) as e:
        parse_policy(raw, "test.yaml")
    wheres = {p.where for p in e.value.problems}
    assert wheres >= {
        "version",
        "colour",
        "categories.user.name.fields[1]",
        "purposes.essential.service.legal_basis",
        "purposes.essential.service.operations[1]",
        "purposes.essential.service.retention_days",
        "purposes.essential.service.categories.user.financial",
        f"{MARKETING}.minors",
        f"{MARKETING}.requires_consent",
    }
    # The message lists them all, one per line.
    assert str(e.value).count("\n") == len(e.value.problems)


# --- files and YAML -----------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_round_trips_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(valid()))
    policy = load_policy(path)
    assert policy.source == str(path)
    assert set(policy.purposes) == {"essential.service", "marketing.communications.email"}


def test_yaml_that_does_not_parse(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_policy(write(tmp_path, "version: 1\npurposes: [unclosed\n"))
    [problem] = e.value.problems
    assert problem.where == "file"
    assert "not valid YAML" in problem.problem


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_policy(tmp_path / "absent.yaml")
    assert e.value.problems[0].where == "file"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"version: 1\nrevision: \xff\xfe\n")
    with pytest.raises(ConfigError) as e:
        load_policy(path)
    assert e.value.problems[0].where == "file"


def test_unquoted_date_revision_is_reported(tmp_path: Path) -> None:
    text = yaml.safe_dump(valid()).replace("revision: '2026-11-29'", "revision: 2026-11-29")
    assert "revision: 2026-11-29" in text
    with pytest.raises(ConfigError) as e:
        load_policy(write(tmp_path, text))
    [problem] = e.value.problems
    assert problem.where == "revision"
    assert "quote" in problem.problem


def test_yaml_11_booleans_are_booleans(tmp_path: Path) -> None:
    text = yaml.safe_dump(valid()).replace("minors: true", "minors: yes")
    assert "minors: yes" in text
    assert load_policy(write(tmp_path, text)).purposes["essential.service"].minors is True


def test_yaml_11_boolean_field_name_is_reported(tmp_path: Path) -> None:
    # `on` is a boolean to YAML 1.1: a field so named must be quoted.
    raw = valid()
    raw["categories"]["user.content"]["fields"] = ["PLACEHOLDER"]
    text = yaml.safe_dump(raw).replace("- PLACEHOLDER", "- on")
    with pytest.raises(ConfigError) as e:
        load_policy(write(tmp_path, text))
    [problem] = e.value.problems
    assert problem.where == "categories.user.content.fields[0]"
    assert "YAML boolean" in problem.problem


def test_yaml_11_boolean_purpose_name_is_reported(tmp_path: Path) -> None:
    raw = valid()
    raw["purposes"]["PLACEHOLDER"] = copy.deepcopy(raw["purposes"]["essential.service"])
    text = yaml.safe_dump(raw).replace("PLACEHOLDER:", "no:")
    with pytest.raises(ConfigError) as e:
        load_policy(write(tmp_path, text))
    assert "purposes.False" in {p.where for p in e.value.problems}


def test_duplicate_keys_are_reported_with_other_problems(tmp_path: Path) -> None:
    text = yaml.safe_dump(valid(), sort_keys=False)
    # Declare essential.service a second time and break the version.
    ess_block = text[text.index("  essential.service:") : text.index("  marketing.")]
    text = text.replace("version: 1", "version: 2") + ess_block
    with pytest.raises(ConfigError) as e:
        load_policy(write(tmp_path, text))
    found = [(p.where, p.problem) for p in e.value.problems]
    assert any("'essential.service' is declared twice" in problem for _, problem in found)
    assert ("version", "must be 1") in found


def test_duplicate_keys_alone_are_reported(tmp_path: Path) -> None:
    text = yaml.safe_dump(valid(), sort_keys=False).replace(
        "    minors: true\n", "    minors: true\n    minors: true\n"
    )
    with pytest.raises(ConfigError) as e:
        load_policy(write(tmp_path, text))
    [problem] = e.value.problems
    assert problem.where.startswith("line ")
    assert "'minors' is declared twice" in problem.problem


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = """
version: 1
revision: r1
categories:
  user.name: {description: Name.}
purposes:
  essential.service: &base
    description: Provide the service.
    legal_basis: contract
    categories: {user.name: "*"}
    operations: [read]
    requires_consent: false
    minors: true
    allowed_when_restricted: false
    retention_days: null
  essential.service.support:
    <<: *base
    retention_days: 30
"""
    policy = load_policy(write(tmp_path, text))
    assert policy.purposes["essential.service.support"].retention_days == 30


# --- pdvault policy check -----------------------------------------------------------


def test_check_main_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(str(default_policy_path())) == 0
    out, err = capsys.readouterr()
    policy = load_policy(default_policy_path())
    assert out == (
        f"OK: policy revision {policy.revision}, {len(policy.purposes)} purposes, "
        f"{len(policy.categories)} categories\n"
    )
    assert err == ""


def test_check_main_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = broken(f"{MKT}/minors", True)
    raw["version"] = 3
    assert check_main(str(write(tmp_path, yaml.safe_dump(raw)))) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "version: must be 1" in err
    assert f"{MARKETING}.minors:" in err


# --- robustness ---------------------------------------------------------------------

#: Values next to the well-formed ones, which random draws would seldom hit.
_near_misses = st.sampled_from(
    [0, 1, -1, 1.0, "1", "", " ", "*", "consent", "contract", "read", "erase", "first", "last"]
)
_yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | _near_misses
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _text(v: object) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _names(v: object) -> frozenset[str] | None:
    """A non-empty list of distinct field names, as a set; None if it is not one."""
    if not isinstance(v, list) or not v:
        return None
    if not all(isinstance(f, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", f) for f in v):
        return None
    return frozenset(v) if len(set(v)) == len(v) else None


def _never(v: object) -> bool:
    # A mapping of these needs keys such as "description" or "user.contact.email",
    # longer than any key the strategy draws: nothing drawn is well-formed here.
    return False


#: Per place of test_any_malformed_value_is_a_config_error: is ``value`` well-formed
#: there, the rest of valid() unchanged? (ESS has requires_consent false and grants
#: user.name's first and last; MKT's legal basis is consent.)
_WELL_FORMED: dict[str, Callable[[object], bool]] = {
    "version": lambda v: type(v) is int and v == 1,
    "revision": _text,
    "categories": _never,
    "categories/user.name": _never,
    "categories/user.name/fields": lambda v: (
        v is None or ((n := _names(v)) is not None and {"first", "last"} <= n)
    ),
    "categories/user.name/description": _text,
    "purposes": _never,
    ESS: _never,
    f"{ESS}/description": _text,
    f"{ESS}/legal_basis": lambda v: isinstance(v, str) and v in LEGAL_BASES - {"consent"},
    f"{ESS}/categories": _never,
    f"{ESS}/operations": lambda v: (n := _names(v)) is not None and n <= OPERATIONS,
    f"{ESS}/categories/user.name": lambda v: (
        v == "*" or ((n := _names(v)) is not None and n <= {"first", "last"})
    ),
    f"{MKT}/requires_consent": lambda v: v is True,
    f"{MKT}/minors": lambda v: v is False,
    f"{MKT}/retention_days": lambda v: v is None or (type(v) is int and v >= 1),
}


@pytest.mark.parametrize("where", list(_WELL_FORMED))
@settings(max_examples=40)  # per place; the near misses and examples below do the rest
@given(value=_yaml_values)
# Each of these is malformed in most places, and for some place the only kind of
# malformation a single draw may miss.
@example(value=0)
@example(value=-1)
@example(value=True)
@example(value=1.0)
@example(value=" ")
@example(value=["read", "read"])
@example(value=["first", "last", "first"])
@example(value=["first", "true"])
def test_any_malformed_value_is_a_config_error(where: str, value: object) -> None:
    """Every value is either well-formed for its place (then accepted) or refused
    with the problems listed; a malformed value accepted fails the test."""
    ok = _WELL_FORMED[where](value)
    try:
        parse_policy(broken(where, value), "t")
    except ConfigError as e:
        assert e.problems
        assert not ok, f"{where}: the well-formed {value!r} was refused: {e.problems}"
    else:
        assert ok, f"{where}: the malformed {value!r} was accepted"


def test_the_oracle_tells_well_formed_from_malformed() -> None:
    """The oracle above is not vacuous: each place has a value it accepts and one it does not."""
    samples = {
        "version": (1, True),
        "revision": ("r1", " "),
        "categories/user.name/fields": (["last", "first", "x"], ["first"]),
        "categories/user.name/description": ("Name", ""),
        f"{ESS}/description": ("d", 1),
        f"{ESS}/legal_basis": ("contract", "consent"),
        f"{ESS}/operations": (["read"], ["read", "read"]),
        f"{ESS}/categories/user.name": ("*", ["middle"]),
        f"{MKT}/requires_consent": (True, False),
        f"{MKT}/minors": (False, 0),
        f"{MKT}/retention_days": (None, True),
    }
    for where, (good, bad) in samples.items():
        assert _WELL_FORMED[where](good) and not _WELL_FORMED[where](bad), where
        parse_policy(broken(where, good), "t")
        assert problems(broken(where, bad))


# --- exactly what is reported ---------------------------------------------------------

OPS = "consent, delete, erase, export, read, write"
BASES = "consent, contract, legal_obligation, legitimate_interests, public_task, vital_interests"
ESS_KEYS = (
    "description, legal_basis, categories, operations, requires_consent, minors, "
    "allowed_when_restricted, retention_days"
)
E = "purposes.essential.service"
M = MARKETING


def test_valid_policy_parses_to_exactly_these_values() -> None:
    policy = parse_policy(valid(), "test.yaml")
    assert (policy.version, policy.revision, policy.source) == (1, "2026-11-29", "test.yaml")
    assert policy.categories == {
        "user.contact.email": Category(
            "user.contact.email", "Email address.", frozenset({"address"})
        ),
        "user.name": Category("user.name", "Name.", frozenset({"first", "last"})),
        "user.content": Category("user.content", "Free-form.", None),
    }
    assert policy.purposes["essential.service"] == Purpose(
        name="essential.service",
        description="Provide the service.",
        legal_basis="contract",
        categories={
            "user.contact.email": None,
            "user.name": frozenset({"first", "last"}),
            "user.content": frozenset({"anything-goes_1"}),
        },
        operations=frozenset({"read", "write"}),
        requires_consent=False,
        minors=True,
        allowed_when_restricted=False,
        retention_days=None,
    )
    marketing = policy.purposes["marketing.communications.email"]
    assert (marketing.legal_basis, marketing.requires_consent, marketing.minors) == (
        "consent",
        True,
        False,
    )
    assert marketing.allowed_when_restricted is False
    assert marketing.categories == {"user.contact.email": frozenset({"address"})}


def test_purpose_flags_are_read_as_given() -> None:
    raw = valid()
    raw["purposes"]["essential.service"].update(
        requires_consent=True, minors=False, allowed_when_restricted=True
    )
    p = parse_policy(raw, "t").purposes["essential.service"]
    assert (p.requires_consent, p.minors, p.allowed_when_restricted) == (True, False, True)


def test_one_day_is_the_shortest_retention() -> None:
    raw = broken(f"{ESS}/retention_days", 1)
    assert parse_policy(raw, "t").purposes["essential.service"].retention_days == 1


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "purpose",
            {},
            [
                (
                    "purpose",
                    "is not a known key (expected one of: version, revision, categories, purposes)",
                )
            ],
        ),
        ("version", 2, [("version", "must be 1")]),
        ("revision", _DELETE, [("revision", "is required")]),
        (
            "revision",
            "",
            [("revision", 'must be a non-empty string (quote it: revision: "2026-11-29")')],
        ),
        (
            "categories",
            {},
            [
                ("categories", "must be a non-empty mapping of category names"),
                (f"{E}.categories.user.contact.email", "is not a declared category"),
                (f"{E}.categories.user.name", "is not a declared category"),
                (f"{E}.categories.user.content", "is not a declared category"),
                (f"{M}.categories.user.contact.email", "is not a declared category"),
            ],
        ),
        (
            "categories/user.name",
            ["first"],
            [
                ("categories.user.name", "must be a mapping with a description"),
                (f"{E}.categories.user.name", "is not a declared category"),
            ],
        ),
        (
            "categories/user.name/fileds",
            ["first"],
            [
                (
                    "categories.user.name.fileds",
                    "is not a known key (expected one of: description, fields)",
                )
            ],
        ),
        (
            "categories/user.name/description",
            "",
            [("categories.user.name.description", "must be a non-empty string")],
        ),
        (
            "categories/user.name/fields",
            "first",
            [("categories.user.name.fields", "must be a non-empty list of field names")],
        ),
        # A category with a bad field list is not used to check the grants naming it
        # (essential.service grants user.name's "last", which the list lacks).
        (
            "categories/user.name/fields",
            ["first", "first.name"],
            [
                (
                    "categories.user.name.fields[1]",
                    "'first.name' is not a field name (letters, digits, _ and -)",
                )
            ],
        ),
        (
            "categories/user.name/fields",
            ["first", True],
            [
                (
                    "categories.user.name.fields[1]",
                    "True is a YAML boolean, not a field name (quote it)",
                )
            ],
        ),
        (
            "categories/user.name/fields",
            ["first", "first"],
            [("categories.user.name.fields[1]", "field 'first' is listed twice")],
        ),
        ("purposes", {}, [("purposes", "must be a non-empty mapping of purpose names")]),
        (ESS, "contract", [(E, "must be a mapping")]),
        (
            f"{ESS}/retention",
            30,
            [(f"{E}.retention", f"is not a known key (expected one of: {ESS_KEYS})")],
        ),
        (f"{ESS}/description", " ", [(f"{E}.description", "must be a non-empty string")]),
        (f"{MKT}/legal_basis", "because", [(f"{M}.legal_basis", f"must be one of: {BASES}")]),
        (f"{ESS}/minors", "yes", [(f"{E}.minors", "must be true or false")]),
        (
            f"{ESS}/retention_days",
            0,
            [(f"{E}.retention_days", "must be a positive whole number of days or null")],
        ),
        (
            f"{MKT}/requires_consent",
            False,
            [(f"{M}.requires_consent", "must be true when legal_basis is consent")],
        ),
        (
            f"{MKT}/minors",
            True,
            [(f"{M}.minors", "must be false: marketing never applies to a minor's data")],
        ),
        (f"{ESS}/operations", [], [(f"{E}.operations", f"must be a non-empty list of: {OPS}")]),
        (
            f"{ESS}/operations",
            ["read", "sell"],
            [(f"{E}.operations[1]", f"'sell' is not one of: {OPS}")],
        ),
        (
            f"{ESS}/operations",
            ["read", "read"],
            [(f"{E}.operations[1]", "operation 'read' is listed twice")],
        ),
        (
            f"{ESS}/categories",
            {},
            [(f"{E}.categories", 'must map at least one category to "*" or a list of fields')],
        ),
        (
            f"{ESS}/categories/user.financial",
            "*",
            [(f"{E}.categories.user.financial", "is not a declared category")],
        ),
        (
            f"{ESS}/categories/user.name",
            "all",
            [(f"{E}.categories.user.name", 'must be "*" or a list of fields')],
        ),
        (
            f"{ESS}/categories/user.name",
            ["first", "middle"],
            [(f"{E}.categories.user.name", "field 'middle' is not declared by category user.name")],
        ),
    ],
)
def test_each_defect_is_reported_exactly(
    path: str, value: object, expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(ConfigError) as e:
        parse_policy(broken(path, value), "test.yaml")
    assert [(p.where, p.problem) for p in e.value.problems] == expected


def test_marketing_without_consent_is_reported_exactly() -> None:
    raw = broken(f"{MKT}/legal_basis", "legitimate_interests")
    raw["purposes"]["marketing.communications.email"]["requires_consent"] = False
    assert problems(raw) == {f"{M}.requires_consent": ["must be true: marketing needs consent"]}


def test_a_category_that_fails_is_not_used_to_check_grants() -> None:
    # Reported once, at the category: the grant of an undeclared field is not
    # checked against a category that is itself invalid.
    raw = broken("categories/user.name/description", "")
    raw["purposes"]["essential.service"]["categories"]["user.name"] = ["first", "middle"]
    assert problems(raw) == {"categories.user.name.description": ["must be a non-empty string"]}


def test_the_file_must_be_a_mapping_exactly() -> None:
    with pytest.raises(ConfigError) as e:
        parse_policy(["version", 1], "test.yaml")
    assert [(p.where, p.problem) for p in e.value.problems] == [("file", "must be a mapping")]


def test_a_non_string_key_is_named_by_its_repr() -> None:
    raw = valid()
    raw["categories"][datetime.date(2026, 11, 29)] = {"description": "x"}
    assert problems(raw) == {
        "categories.datetime.date(2026, 11, 29)": [
            "is not a category name (like user.contact.email)"
        ]
    }


def _first(mapping: dict[str, Any], key: object, value: object) -> dict[str, Any]:
    """``mapping`` with ``key`` set to ``value`` and moved to the front."""
    return {key: value, **{k: v for k, v in mapping.items() if k != key}}


def test_every_entry_is_checked_after_a_bad_category() -> None:
    raw = valid()
    raw["categories"] = _first(raw["categories"], "contact.email", {"description": "x"})
    raw["categories"] = _first(raw["categories"], "user.aaa", ["x"])
    assert problems(raw) == {
        "categories.user.aaa": ["must be a mapping with a description"],
        "categories.contact.email": ["is not a category name (like user.contact.email)"],
    }


def test_every_purpose_is_checked_after_a_bad_one() -> None:
    raw = broken(f"{ESS}/legal_basis", "because")
    raw["purposes"] = _first(raw["purposes"], "Bad", {})
    raw["purposes"] = _first(raw["purposes"], "essential.other", "contract")
    assert problems(raw) == {
        "purposes.essential.other": ["must be a mapping"],
        "purposes.Bad": ["is not a purpose name (like essential.service)"],
        f"{E}.legal_basis": [f"must be one of: {BASES}"],
    }


def test_every_grant_is_checked_after_a_bad_one() -> None:
    raw = valid()
    grants = raw["purposes"]["essential.service"]["categories"]
    grants["user.name"] = ["first", "middle"]
    grants = _first(grants, "user.contact.email", ["nope!"])
    grants = _first(grants, "user.content", "all")
    grants = _first(grants, "user.financial", "*")
    raw["purposes"]["essential.service"]["categories"] = grants
    assert problems(raw) == {
        f"{E}.categories.user.financial": ["is not a declared category"],
        f"{E}.categories.user.content": ['must be "*" or a list of fields'],
        f"{E}.categories.user.contact.email[0]": [
            "'nope!' is not a field name (letters, digits, _ and -)"
        ],
        f"{E}.categories.user.name": ["field 'middle' is not declared by category user.name"],
    }


# --- files, exactly -------------------------------------------------------------------


def file_problems(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        load_policy(path)
    assert e.value.source == str(path)
    return [(p.where, p.problem) for p in e.value.problems]


def test_file_errors_are_reported_exactly(tmp_path: Path) -> None:
    assert file_problems(tmp_path / "absent.yaml") == [
        ("file", "cannot be read (No such file or directory)")
    ]
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\nrevision: \xff\xfe\n")
    assert file_problems(path) == [("file", "cannot be read (not UTF-8)")]
    bad = write(tmp_path, "version: 1\npurposes: [unclosed\n")
    assert file_problems(bad) == [("file", "is not valid YAML (line 3)")]
    # A reader error carries no position.
    assert file_problems(write(tmp_path, "version: 1\nrevision: \x00\n")) == [
        ("file", "is not valid YAML")
    ]


def test_duplicate_keys_are_reported_with_their_line(tmp_path: Path) -> None:
    text = "version: 1\nrevision: r\nversion: 1\n"
    path = write(
        tmp_path, text + yaml.safe_dump({k: valid()[k] for k in ("categories", "purposes")})
    )
    assert file_problems(path) == [("line 3", "key 'version' is declared twice")]
    path = write(tmp_path, "version: 2\nversion: 1\n")
    assert file_problems(path)[0] == ("line 2", "key 'version' is declared twice")


def test_duplicates_after_a_merge_key_are_reported(tmp_path: Path) -> None:
    text = """
version: 1
revision: r1
categories:
  user.name: {description: Name.}
purposes:
  essential.service: &base
    description: Provide the service.
    legal_basis: contract
    categories: {user.name: "*"}
    operations: [read]
    requires_consent: false
    minors: true
    allowed_when_restricted: false
    retention_days: null
  essential.service.support:
    <<: *base
    retention_days: 30
    retention_days: 60
"""
    assert file_problems(write(tmp_path, text)) == [
        ("line 19", "key 'retention_days' is declared twice")
    ]


def test_check_main_prints_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = broken(f"{MKT}/minors", True)
    raw["version"] = 3
    path = write(tmp_path, yaml.safe_dump(raw))
    assert check_main(str(path)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"invalid policy {path}:\n"
        "  version: must be 1\n"
        f"  {M}.minors: must be false: marketing never applies to a minor's data\n"
    )
