"""Key jobs: subject key rotation (rotate, re-wrap, retire old versions), the
blind index (re-index under a new index key version, retire the old) and
subject rekey (records re-encrypted under a fresh data key)."""

from vault.rotation._reindex import LookupReindex, ReindexSummary
from vault.rotation._rekey import RekeyHeld, RekeySummary, SubjectRekey
from vault.rotation._subjects import RateLimiter, RotationSummary, SubjectKeyRotation

__all__ = [
    "LookupReindex",
    "RateLimiter",
    "ReindexSummary",
    "RekeyHeld",
    "RekeySummary",
    "RotationSummary",
    "SubjectKeyRotation",
    "SubjectRekey",
]
