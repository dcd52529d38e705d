"""Reading and validating a purpose-policy file.

The file format (``version: 1``)::

    version: 1
    revision: "2026-11-29"
    categories:
      user.contact.email: {description: "...", fields: [address]}
    purposes:
      essential.service:
        description: "..."
        legal_basis: contract
        categories: {user.contact.email: "*"}
        operations: [read, write]
        requires_consent: false
        minors: true
        allowed_when_restricted: false
        retention_days: null

Every problem found is reported at once in one :class:`~vault.errors.ConfigError`
whose paths read like ``purposes.marketing.communications.email.legal_basis``.
Every purpose key is required: a privacy policy states each decision
explicitly rather than inheriting a default nobody reviewed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import yaml

from vault.errors import ConfigError, ConfigProblem
from vault.policy._model import LEGAL_BASES, OPERATIONS, Category, Purpose
from vault.policy._policy import Policy

SCHEMA_VERSION = 1

_CATEGORY_RE = re.compile(r"^user(\.[a-z][a-z0-9_]*)+$")
_PURPOSE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
_FIELD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

_Report = Callable[[str, str], None]

_TOP_KEYS = ("version", "revision", "categories", "purposes")
_CATEGORY_KEYS = ("description", "fields")
_PURPOSE_KEYS = (
    "description",
    "legal_basis",
    "categories",
    "operations",
    "requires_consent",
    "minors",
    "allowed_when_restricted",
    "retention_days",
)
_ALL_FIELDS = "*"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MARKETING_PREFIX = "marketing."


def default_policy_path() -> Path:
    """The shipped default policy, ``default.yaml`` next to this package."""
    return Path(__file__).resolve().parent / "default.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that notes duplicate mapping keys.

    Plain ``safe_load`` keeps the last of two equal keys, so a purpose declared
    twice would silently replace the first; here it is reported instead.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[ConfigProblem] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            # Only plain keys: merge keys (<<) may legitimately be overridden,
            # and the base class reports keys that cannot be keys at all.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            if key in seen:
                self.duplicates.append(
                    ConfigProblem(
                        f"line {key_node.start_mark.line + 1}", f"key {key!r} is declared twice"
                    )
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(text: str) -> tuple[object, list[ConfigProblem]]:
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def load_policy(path: Path) -> Policy:
    """Reads and validates a policy file; raises :class:`ConfigError` listing
    every problem found.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8"
        raise ConfigError(source, [ConfigProblem("file", f"cannot be read ({why})")]) from e
    try:
        raw, duplicates = _read_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(source, [ConfigProblem("file", f"is not valid YAML{where}")]) from e
    try:
        policy = parse_policy(raw, source)
    except ConfigError as e:
        raise ConfigError(source, duplicates + e.problems) from None
    if duplicates:
        raise ConfigError(source, duplicates)
    return policy


def parse_policy(raw: object, source: str) -> Policy:
    """Validates an already-parsed policy document (``yaml.safe_load`` output)."""
    problems: list[ConfigProblem] = []

    def bad(where: str, problem: str) -> None:
        problems.append(ConfigProblem(where, problem))

    if not isinstance(raw, dict):
        raise ConfigError(source, [ConfigProblem("file", "must be a mapping")])
    _unknown_keys(raw, _TOP_KEYS, "", bad)

    version = raw.get("version")
    # bool is an int subclass: YAML 1.1 reads `version: yes` as True == 1.
    if type(version) is not int or version != SCHEMA_VERSION:
        bad("version", f"must be {SCHEMA_VERSION}")
    revision = raw.get("revision")
    if revision is None:
        bad("revision", "is required")
    elif not isinstance(revision, str) or not revision.strip():
        # An unquoted 2026-11-29 is a date to YAML, not a string.
        bad("revision", 'must be a non-empty string (quote it: revision: "2026-11-29")')

    categories = _parse_categories(raw.get("categories"), bad)
    purposes = _parse_purposes(raw.get("purposes"), categories, bad)

    if problems:
        raise ConfigError(source, problems)
    return Policy(
        version=SCHEMA_VERSION,
        revision=str(revision),
        categories=categories,
        purposes=purposes,
        source=source,
    )


def _key(name: object) -> str:
    # YAML 1.1 turns keys such as `no` or `2026-11-29` into non-strings.
    return name if isinstance(name, str) else repr(name)


def _unknown_keys(raw: dict[Any, Any], known: tuple[str, ...], where: str, bad: _Report) -> None:
    prefix = f"{where}." if where else ""
    for k in raw:
        if k not in known:
            bad(f"{prefix}{_key(k)}", f"is not a known key (expected one of: {', '.join(known)})")


def _field_list(value: object, where: str, bad: _Report) -> frozenset[str] | None:
    """A non-empty list of distinct field names, or None after reporting."""
    if not isinstance(value, list) or not value:
        bad(where, "must be a non-empty list of field names")
        return None
    names: set[str] = set()
    ok = True
    for i, f in enumerate(value):
        if isinstance(f, bool):
            # YAML 1.1 reads unquoted yes/no/on/off as booleans.
            bad(f"{where}[{i}]", f"{f!r} is a YAML boolean, not a field name (quote it)")
            ok = False
        elif not isinstance(f, str) or not _FIELD_RE.fullmatch(f):
            bad(f"{where}[{i}]", f"{f!r} is not a field name (letters, digits, _ and -)")
            ok = False
        elif f in names:
            bad(f"{where}[{i}]", f"field {f!r} is listed twice")
            ok = False
        else:
            names.add(f)
    return frozenset(names) if ok else None


def _parse_categories(raw: object, bad: _Report) -> dict[str, Category]:
    categories: dict[str, Category] = {}
    if not isinstance(raw, dict) or not raw:
        bad("categories", "must be a non-empty mapping of category names")
        return categories
    for name, body in raw.items():
        where = f"categories.{_key(name)}"
        if not isinstance(name, str) or not _CATEGORY_RE.fullmatch(name):
            bad(where, "is not a category name (like user.contact.email)")
            continue
        if not isinstance(body, dict):
            bad(where, "must be a mapping with a description")
            continue
        _unknown_keys(body, _CATEGORY_KEYS, where, bad)
        valid = True
        description = body.get("description")
        if not isinstance(description, str) or not description.strip():
            bad(f"{where}.description", "must be a non-empty string")
            valid = False
        fields: frozenset[str] | None = None
        if body.get("fields") is not None:
            fields = _field_list(body["fields"], f"{where}.fields", bad)
            valid = valid and fields is not None
        if valid:
            categories[name] = Category(name=name, description=str(description), fields=fields)
        else:
            # Still declared, so purposes naming it are not reported twice;
            # the policy is rejected anyway.
            categories[name] = Category(name=name, description="", fields=None)
    return categories


def _parse_purposes(
    raw: object, categories: dict[str, Category], bad: _Report
) -> dict[str, Purpose]:
    purposes: dict[str, Purpose] = {}
    if not isinstance(raw, dict) or not raw:
        bad("purposes", "must be a non-empty mapping of purpose names")
        return purposes
    for name, body in raw.items():
        where = f"purposes.{_key(name)}"
        if not isinstance(name, str) or not _PURPOSE_RE.fullmatch(name):
            bad(where, "is not a purpose name (like essential.service)")
            continue
        if not isinstance(body, dict):
            bad(where, "must be a mapping")
            continue
        purpose = _parse_purpose(name, body, where, categories, bad)
        if purpose is not None:
            purposes[name] = purpose
    return purposes


def _parse_purpose(
    name: str, body: dict[Any, Any], where: str, categories: dict[str, Category], bad: _Report
) -> Purpose | None:
    failed = False

    def problem(at: str, what: str) -> None:
        nonlocal failed
        failed = True
        bad(at, what)

    _unknown_keys(body, _PURPOSE_KEYS, where, problem)
    for k in _PURPOSE_KEYS:
        if k not in body:
            problem(f"{where}.{k}", "is required")

    description = body.get("description")
    if "description" in body and (not isinstance(description, str) or not description.strip()):
        problem(f"{where}.description", "must be a non-empty string")

    legal_basis = body.get("legal_basis")
    if "legal_basis" in body and (
        not isinstance(legal_basis, str) or legal_basis not in LEGAL_BASES
    ):
        problem(f"{where}.legal_basis", f"must be one of: {', '.join(sorted(LEGAL_BASES))}")

    flags: dict[str, bool] = {}
    for k in ("requires_consent", "minors", "allowed_when_restricted"):
        if k in body:
            if isinstance(body[k], bool):
                flags[k] = body[k]
            else:
                problem(f"{where}.{k}", "must be true or false")

    retention = body.get("retention_days")
    if retention is not None and (type(retention) is not int or retention < 1):
        problem(f"{where}.retention_days", "must be a positive whole number of days or null")

    operations: frozenset[str] | None = None
    grants: dict[str, frozenset[str] | None] | None = None
    if "operations" in body:
        operations = _parse_operations(body["operations"], f"{where}.operations", problem)
    if "categories" in body:
        grants = _parse_grants(body["categories"], f"{where}.categories", categories, problem)

    marketing = name.startswith(_MARKETING_PREFIX)
    if flags.get("requires_consent") is False:
        if legal_basis == "consent":
            problem(f"{where}.requires_consent", "must be true when legal_basis is consent")
        elif marketing:
            problem(f"{where}.requires_consent", "must be true: marketing needs consent")
    if marketing and flags.get("minors") is True:
        problem(f"{where}.minors", "must be false: marketing never applies to a minor's data")

    if failed or operations is None or grants is None:
        return None
    return Purpose(
        name=name,
        description=str(description),
        legal_basis=str(legal_basis),
        categories=grants,
        operations=operations,
        requires_consent=flags["requires_consent"],
        minors=flags["minors"],
        allowed_when_restricted=flags["allowed_when_restricted"],
        retention_days=retention,
    )


def _parse_operations(raw: object, where: str, bad: _Report) -> frozenset[str] | None:
    if not isinstance(raw, list) or not raw:
        bad(where, f"must be a non-empty list of: {', '.join(sorted(OPERATIONS))}")
        return None
    ops: set[str] = set()
    for i, op in enumerate(raw):
        if not isinstance(op, str) or op not in OPERATIONS:
            bad(f"{where}[{i}]", f"{op!r} is not one of: {', '.join(sorted(OPERATIONS))}")
        elif op in ops:
            bad(f"{where}[{i}]", f"operation {op!r} is listed twice")
        else:
            ops.add(op)
    return frozenset(ops)


def _parse_grants(
    raw: object,
    where: str,
    categories: dict[str, Category],
    bad: _Report,
) -> dict[str, frozenset[str] | None] | None:
    if not isinstance(raw, dict) or not raw:
        bad(where, 'must map at least one category to "*" or a list of fields')
        return None
    grants: dict[str, frozenset[str] | None] = {}
    for cat, value in raw.items():
        at = f"{where}.{_key(cat)}"
        declared = categories.get(cat) if isinstance(cat, str) else None
        if declared is None:
            bad(at, "is not a declared category")
            continue
        if value == _ALL_FIELDS:
            grants[cat] = None
            continue
        if isinstance(value, str):
            bad(at, 'must be "*" or a list of fields')
            continue
        fields = _field_list(value, at, bad)
        if fields is None:
            continue
        if declared.fields is not None:
            for f in sorted(fields - declared.fields):
                bad(at, f"field {f!r} is not declared by category {cat}")
        grants[cat] = fields
    return grants


def check_main(path: str) -> int:
    """``pdvault policy check FILE``: 0 and a summary if valid, else 1 and the
    problems on stderr.
    """
    try:
        policy = load_policy(Path(path))
    except ConfigError as e:
        print(f"invalid policy {e.source}:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p.where}: {p.problem}", file=sys.stderr)
        return 1
    print(
        f"OK: policy revision {policy.revision}, {len(policy.purposes)} purposes, "
        f"{len(policy.categories)} categories"
    )
    return 0
