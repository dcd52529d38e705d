"""The purpose policy: which purpose may touch which data categories, fields and
operations, on what legal basis, for how long, and for which subjects.

Pure logic: no gRPC, no database. The shipped default (``default.yaml``)
encodes the privacy policy in ``reference/privacy-policy.md``.
"""

from vault.policy._decide import filter_fields
from vault.policy._load import check_main, default_policy_path, load_policy, parse_policy
from vault.policy._model import (
    LEGAL_BASES,
    OPERATIONS,
    Category,
    Policy,
    Purpose,
    SubjectFacts,
)

__all__ = [
    "LEGAL_BASES",
    "OPERATIONS",
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
