"""The audit schema: entries, the chain head of each log, checkpoints.

Timestamps are integer microseconds since the epoch (UTC). ``entry`` holds the
canonical entry exactly as hashed; ``subject`` and ``at_us`` repeat two of its
fields for the access report's index and are checked against it by
``pdvault audit verify``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

entries = Table(
    "audit_entries",
    metadata,
    Column("log", String(32), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at_us", BigInteger, nullable=False, comment="microseconds since the epoch"),
    Column("subject", String(64), nullable=True, comment="subject pseudonym (hex)"),
    Column("entry", Text, nullable=False),
    Column("hash", String(64), nullable=False, comment="chain hash (hex)"),
)
Index("ix_audit_entries_subject", entries.c.log, entries.c.subject, entries.c.seq)

heads = Table(
    "audit_heads",
    metadata,
    Column("log", String(32), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("log", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("at_us", BigInteger, nullable=False, comment="microseconds since the epoch"),
    Column("note", Text, nullable=False, comment="the signed note (body and signature)"),
)
Index("ix_audit_checkpoints_log_size", checkpoints.c.log, checkpoints.c.size)
