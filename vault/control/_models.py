"""Control-plane schema. Holds token ids and service names, never tokens or personal data.

Every timestamp column is integer microseconds since the epoch (UTC).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table

metadata = MetaData()

revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    # Assigned by the database on insert: what nodes poll by (never a clock).
    # PostgreSQL takes it at insert, not commit, so it may become visible out
    # of order; see Revocations.
    Column(
        "seq",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("jti", String(64), nullable=False, unique=True),
    Column("expires_at", BigInteger, nullable=False),
    # The revoking node's wall clock: for the record only.
    Column("revoked_at", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)

token_events = Table(
    "token_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    Column("event", String(16), nullable=False),  # issue | exchange | revoke
    Column("jti", String(64), nullable=False),
    Column("parent_jti", String(64), nullable=True),
    Column("caller", String(256), nullable=False),  # the service that asked
    Column("service", String(256), nullable=False),  # the token's subject (a service)
    Column("purpose", String(128), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

# The erasure ledger: every subject key the vault destroyed (or will destroy at
# ``destroy_after``), so that `pdvault erasure reapply` can destroy it again
# after an OpenBao snapshot restore brings it back. Kept in the control plane,
# not the cell, so that restoring a cell backup cannot roll it back.
erasures = Table(
    "erasures",
    metadata,
    Column("subject_id", String(64), primary_key=True),
    Column("region", String(8), nullable=False),
    Column("key_mount", String(128), nullable=False),
    Column("key_name", String(128), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("requested_at", BigInteger, nullable=False),
    Column("destroy_after", BigInteger, nullable=False),
    Column("destroyed_at", BigInteger, nullable=True, index=True),
    # Set by the node destroying the key, so two nodes never race on one erasure.
    Column("claimed_at", BigInteger, nullable=True),
    Column("receipt", String(8192), nullable=True),
    # The key's versions ("1,2"), noted just before it is destroyed: a retry
    # after the destroy (the key is gone) still names them in its receipt.
    Column("key_versions", String(512), nullable=True),
)
