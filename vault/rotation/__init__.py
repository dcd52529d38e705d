"""Key rotation jobs: subject keys (rotate, re-wrap, retire old versions)."""

from vault.rotation._subjects import RateLimiter, RotationSummary, SubjectKeyRotation

__all__ = ["RateLimiter", "RotationSummary", "SubjectKeyRotation"]
