"""Control-plane schema. Holds token ids and service names, never tokens or personal data."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table

metadata = MetaData()

revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=False, index=True),
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
