"""Cross-border transfer rules: may a person's plaintext cross a region border?

Every person's records live in their *home* region (the cell their country
maps to). A caller enters the vault by a node of some *entry* region. When the
two differ, serving the request carries the person's plaintext across the
border between them, and the ``transfers:`` section of ``regions/regions.yaml``
decides whether it may, read into :class:`TransferRules` by
:func:`vault.config.parse_regions`.

Direction. A rule ``home -> destination`` governs plaintext leaving its home
region: a reply to a caller who entered by a node of ``destination``. A write
entering by that node carries plaintext the other way, into the home region,
and is governed by *the same rule*: ask ``decide(home, entry, ...)`` for reads
and writes alike. Why: the plaintext is the same person's, processed by the
same node in the same foreign region either way, so the home jurisdiction's
law on processing it there applies to both; the localisation laws behind the
strictest rules (Russia, China) require the data to be recorded in the home
country in the first place, not merely kept from being sent out; and one rule
per pair of regions is what a reviewer can check. A refusal only means the
caller has to enter by a node of the home region.

Decision (:meth:`TransferRules.decide`), in this order:

1. home == destination: no transfer, always allowed (``local:<home>``, or
   ``local`` for an undeclared region; ``NO_TRANSFER``);
2. an undeclared region: refused (``unknown-region``,
   ``TRANSFER_UNKNOWN_REGION``);
3. no rule from home to destination: refused (``no-rule:<home>-><dest>``,
   ``TRANSFER_NOT_ALLOWED``), whatever the token carries;
4. the token carries no transfer basis: refused
   (``no-rule:<home>-><dest>:none``, ``TRANSFER_BASIS_MISSING``);
5. no rule for the pair accepts the token's basis: refused
   (``no-rule:<home>-><dest>:<basis>``, ``TRANSFER_BASIS_NOT_ACCEPTED``);
6. the rules accepting the basis are limited to purposes that do not include
   the request's: refused (``<home>-><dest>:<basis>``,
   ``TRANSFER_PURPOSE_NOT_ALLOWED``); then likewise for categories
   (``TRANSFER_CATEGORY_NOT_ALLOWED``; a request about no single category,
   ``category=None``, passes only rules without a category limit);
7. otherwise allowed (``<home>-><dest>:<basis>``, ``TRANSFER_ALLOWED``).

A rule name is built from declared region ids and known basis names only (an
unknown basis is spelled ``unknown``), and a reason is one of the constants
below: both can be logged and counted; neither ever holds personal data or the
request's purpose or category.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vault.tokens import TRANSFER_BASES

#: Allowed: home and destination are the same region, nothing crosses a border.
NO_TRANSFER: Final = "NO_TRANSFER"
#: Allowed by a rule.
TRANSFER_ALLOWED: Final = "TRANSFER_ALLOWED"
#: No rule lets data of the home region go to the destination at all.
TRANSFER_NOT_ALLOWED: Final = "TRANSFER_NOT_ALLOWED"
#: Some rule would, but the token carries no ``transfer_basis``.
TRANSFER_BASIS_MISSING: Final = "TRANSFER_BASIS_MISSING"
#: Some rule would, but none accepts the token's ``transfer_basis``.
TRANSFER_BASIS_NOT_ACCEPTED: Final = "TRANSFER_BASIS_NOT_ACCEPTED"
#: The rules accepting the basis are limited to other purposes.
TRANSFER_PURPOSE_NOT_ALLOWED: Final = "TRANSFER_PURPOSE_NOT_ALLOWED"
#: The rules accepting the basis and purpose are limited to other categories.
TRANSFER_CATEGORY_NOT_ALLOWED: Final = "TRANSFER_CATEGORY_NOT_ALLOWED"
#: The home or the destination is not a declared region.
TRANSFER_UNKNOWN_REGION: Final = "TRANSFER_UNKNOWN_REGION"


@dataclass(frozen=True, slots=True)
class TransferDecision:
    """The answer of :meth:`TransferRules.decide`; see the module docstring."""

    allowed: bool
    #: A short stable name of what decided, e.g. ``de->us:scc``, ``no-rule:ru->us``.
    rule: str
    #: A stable reason code, one of the constants of this module.
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferRule:
    """Data of ``home`` may go to each of ``destinations`` under any of ``bases``.

    ``purposes`` / ``categories``, when not None, limit the rule to requests
    made for one of those purposes / about one of those categories.
    """

    home: str
    destinations: frozenset[str]
    bases: frozenset[str]
    purposes: frozenset[str] | None = None
    categories: frozenset[str] | None = None

    def __post_init__(self) -> None:
        # Whatever iterables were given, hold frozensets: a rule cannot change.
        for name in ("destinations", "bases", "purposes", "categories"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, frozenset(value))
        if not self.destinations:
            raise ValueError("destinations: must not be empty")
        if self.home in self.destinations:
            raise ValueError("destinations: must not include the home region")
        if not self.bases:
            raise ValueError("bases: must not be empty")
        if not self.bases <= TRANSFER_BASES:
            raise ValueError("bases: names an unknown transfer basis")
        if self.purposes is not None and not self.purposes:
            raise ValueError("purposes: must be None (any) or not empty")
        if self.categories is not None and not self.categories:
            raise ValueError("categories: must be None (any) or not empty")

    @property
    def limited(self) -> bool:
        """Whether the rule holds only for some purposes or categories."""
        return self.purposes is not None or self.categories is not None

    def covers(self, purpose: str, category: str | None) -> bool:
        return (self.purposes is None or purpose in self.purposes) and (
            self.categories is None or (category is not None and category in self.categories)
        )


@dataclass(frozen=True, slots=True)
class TransferRules:
    """Every transfer rule of a regions file; anything no rule allows is refused.

    ``regions`` are the declared region ids in file order (the order of
    :meth:`matrix`). The default, no regions and no rules, refuses every transfer.
    """

    regions: tuple[str, ...] = ()
    rules: tuple[TransferRule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "regions", tuple(self.regions))
        object.__setattr__(self, "rules", tuple(self.rules))
        if len(set(self.regions)) != len(self.regions):
            raise ValueError("regions: must not repeat a region")
        declared = frozenset(self.regions)
        for rule in self.rules:
            if rule.home not in declared or not rule.destinations <= declared:
                raise ValueError("rules: must name declared regions only")

    def rules_for(self, home: str, destination: str) -> tuple[TransferRule, ...]:
        """The rules that let data of ``home`` go to ``destination`` at all."""
        return tuple(r for r in self.rules if r.home == home and destination in r.destinations)

    def decide(
        self, home: str, destination: str, basis: str | None, purpose: str, category: str | None
    ) -> TransferDecision:
        """May plaintext of a person of ``home`` be served to / taken from ``destination``?

        ``destination`` is the region of the node the caller entered by, for a
        reply and for a write alike; ``basis`` is the token's
        ``transfer_basis`` claim (None when absent), ``purpose`` the token's
        purpose, ``category`` the data category concerned (None if none).
        """
        if home == destination:
            name = f"local:{home}" if home in self.regions else "local"
            return TransferDecision(True, name, NO_TRANSFER)
        if home not in self.regions or destination not in self.regions:
            return TransferDecision(False, "unknown-region", TRANSFER_UNKNOWN_REGION)
        pair = f"{home}->{destination}"
        candidates = self.rules_for(home, destination)
        if not candidates:
            return TransferDecision(False, f"no-rule:{pair}", TRANSFER_NOT_ALLOWED)
        if basis is None:
            return TransferDecision(False, f"no-rule:{pair}:none", TRANSFER_BASIS_MISSING)
        accepting = [r for r in candidates if basis in r.bases]
        if not accepting:
            spelled = basis if basis in TRANSFER_BASES else "unknown"
            return TransferDecision(False, f"no-rule:{pair}:{spelled}", TRANSFER_BASIS_NOT_ACCEPTED)
        name = f"{pair}:{basis}"
        if not any(r.purposes is None or purpose in r.purposes for r in accepting):
            return TransferDecision(False, name, TRANSFER_PURPOSE_NOT_ALLOWED)
        if not any(r.covers(purpose, category) for r in accepting):
            return TransferDecision(False, name, TRANSFER_CATEGORY_NOT_ALLOWED)
        return TransferDecision(True, name, TRANSFER_ALLOWED)

    def matrix(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """For every (home, destination) of two different regions, the accepted bases.

        In region order; bases sorted by name; an empty tuple means no transfer.
        A basis is listed if any rule accepts it, limited to some purposes or
        categories or not (see :meth:`limited_only`).
        """
        return {
            (home, dest): tuple(sorted({b for r in self.rules_for(home, dest) for b in r.bases}))
            for home in self.regions
            for dest in self.regions
            if dest != home
        }

    def limited_only(self, home: str, destination: str, basis: str) -> bool:
        """Whether every rule accepting ``basis`` from home to destination is limited."""
        accepting = [r for r in self.rules_for(home, destination) if basis in r.bases]
        return bool(accepting) and all(r.limited for r in accepting)
