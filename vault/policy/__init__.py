"""The purpose policy: which purpose may touch which data categories, fields and
operations, on what legal basis, for how long, and for which subjects — and
the one place that decides what a caller may do (:class:`Authorizer`).

Pure logic: no gRPC, no database. The shipped default (``default.yaml``)
encodes the privacy policy this vault is built for.
"""

from vault.policy._access import Authorizer, Caller
from vault.policy._decide import filter_fields
from vault.policy._load import check_main, default_policy_path, load_policy, parse_policy
from vault.policy._model import LEGAL_BASES, OPERATIONS, Category, Purpose, SubjectFacts
from vault.policy._policy import Policy

__all__ = [
    "LEGAL_BASES",
    "OPERATIONS",
    "Authorizer",
    "Caller",
    "Category",
    "Policy",
    "Purpose",
    "SubjectFacts",
    "check_main",
    "default_policy_path",
    "filter_fields",
    "load_policy",
    "parse_policy",
]
