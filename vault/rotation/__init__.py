"""Key rotation jobs: subject keys (rotate, re-wrap, retire old versions) and
the blind index (re-index under a new index key version, retire the old)."""

from vault.rotation._reindex import LookupReindex, ReindexSummary
from vault.rotation._subjects import RateLimiter, RotationSummary, SubjectKeyRotation

__all__ = [
    "LookupReindex",
    "RateLimiter",
    "ReindexSummary",
    "RotationSummary",
    "SubjectKeyRotation",
]
