"""pdvault: a multi-region personal data vault.

Public entry points: :mod:`vault.client` (the typed gRPC client),
:mod:`vault.errors` (the error family), the ``pdvault`` command
(:mod:`vault.cli`). Everything else is internal.
"""

__version__ = "0.1.0"
