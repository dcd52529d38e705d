"""Hypothesis profile for `make mutation` (selected with --hypothesis-profile=mutation).

Derandomised, so two runs over the same mutant agree, and without the per-example
deadline, so a mutant under mutmut's slower trampolines is never "killed" by a
timing failure instead of an assertion.
"""

from hypothesis import settings

settings.register_profile("mutation", deadline=None, derandomize=True, database=None)
