"""The cell schema. No column holds plaintext personal data.

``subjects`` keeps a person's id, state, the minor flag (a processing rule, not
content), where their key lives and their data key *wrapped* by that key.
``records`` keeps ids, category, version, timestamps and the sealed envelope.
Timestamps are integer microseconds since the epoch (UTC), identical on SQLite
and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

subjects = Table(
    "subjects",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("region", String(8), nullable=False),
    Column("state", String(16), nullable=False),
    Column("minor", Boolean, nullable=False, default=False),
    Column("key_mount", String(128), nullable=False),
    Column("key_name", String(128), nullable=False),
    Column("wrapped_dek", Text, nullable=False),
    # sha256(calling service, key): keys are scoped by the service that sent them.
    Column("idempotency_key", String(128), nullable=True, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # Digest of the request the idempotency key was first used for (no content).
    Column("request_digest", String(64), nullable=True),
    # The state before an erasure request, restored if the erasure is cancelled.
    Column("prior_state", String(16), nullable=True),
    # The Transit key version that wrapped wrapped_dek (key rotation coverage).
    Column("key_version", Integer, nullable=False, server_default="1"),
    # When the subject's key was last rotated (µs); a rotation job's claim.
    Column("key_rotated_at", BigInteger, nullable=True),
    Column("rotation_claim", String(64), nullable=True),
    Column("rotation_claimed_until", BigInteger, nullable=True),
    # Data-key generations (rekey): wrapped_dek holds the data key of
    # generation dek_generation; while a rekey runs, wrapped_dek_next holds the
    # next one (generation dek_generation + 1), wrapped the same way.
    Column("dek_generation", Integer, nullable=False, server_default="1"),
    Column("wrapped_dek_next", Text, nullable=True),
    # The subject's audit pseudonym key, carried over a rekey: sealed
    # (AES-GCM) under the data key of dek_generation; NULL: derived from it.
    Column("pseudonym_seal", LargeBinary, nullable=True),
    # The subject key is a derived Transit key: its wrap is bound to the subject
    # by the derivation context, and rotation re-wraps it inside OpenBao. False:
    # a key made before revision 0008 (bound by associated data).
    Column("key_derived", Boolean, nullable=False, server_default=sa_false()),
)

records = Table(
    "records",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("subject_id", String(64), ForeignKey("subjects.id"), nullable=False),
    Column("category", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("envelope", LargeBinary, nullable=False),
    Column("idempotency_key", String(128), nullable=True),
    # When the policy's retention for the record's category and purpose ends
    # (microseconds); NULL: kept as long as the account.
    Column("expires_at", BigInteger, nullable=True, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # Keyed digest (under the subject's data key) of the request an idempotency
    # key was first used for; a replay with other content is refused.
    Column("request_digest", String(64), nullable=True),
    # The generation of the subject's data key the envelope is sealed under.
    Column("dek_generation", Integer, nullable=False, server_default="1"),
    UniqueConstraint("subject_id", "idempotency_key", name="uq_records_subject_idempotency"),
    Index("ix_records_subject_id_id", "subject_id", "id"),
)

consents = Table(
    "consents",
    metadata,
    Column("subject_id", String(64), ForeignKey("subjects.id"), primary_key=True),
    Column("purpose", String(128), primary_key=True),
    Column("granted", Boolean, nullable=False),
    # Where the consent was collected ("signup-form-v3"): a label, never free text.
    Column("source", String(128), nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Blind index: HMAC-SHA256 of a normalised lookup value (email, phone, account
# id) under the region's index key. Finds a subject without storing the value.
# One row per active index key version (key_version, see index_keys).
lookups = Table(
    "lookups",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("digest", String(64), primary_key=True),
    Column("subject_id", String(64), ForeignKey("subjects.id"), primary_key=True),
    Column("key_version", Integer, nullable=False, server_default="1"),
    Index("ix_lookups_subject_id", "subject_id"),
    Index("ix_lookups_key_version_subject_id", "key_version", "subject_id"),
)

# The lookup values themselves, each sealed under the subject's data key
# (vault.crypto.seal_lookup_value, associated data: subject, region, kind), so
# the blind index can be rebuilt under a new index key; erasure deletes them
# and destroys the data key. value_id is an HMAC of the value under the same
# data key (one row per value, whatever its digests).
lookup_values = Table(
    "lookup_values",
    metadata,
    Column("subject_id", String(64), ForeignKey("subjects.id"), primary_key=True),
    Column("value_id", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("sealed", LargeBinary, nullable=False),
    # The generation of the data key it is sealed under (see records).
    Column("dek_generation", Integer, nullable=False, server_default="1"),
)

# Versions of the region's blind-index key. The key of version 1 is the cell
# key "lookup-index", of version N > 1 "lookup-index/vN" (cell_keys). Active
# versions are written (and searched) together; a re-index adds one, and
# retires the older once every entry has a digest under the new one: its
# digests and its wrapped key are deleted, this row stays (state "retired").
index_keys = Table(
    "index_keys",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),
    # Microseconds since the epoch.
    Column("created_at", BigInteger, nullable=False),
    Column("retired_at", BigInteger, nullable=True),
)

# Keys of the cell itself, stored only wrapped by the region's Transit mount.
cell_keys = Table(
    "cell_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("key_mount", String(128), nullable=False),
    Column("key_name", String(128), nullable=False),
    Column("wrapped", Text, nullable=False),
)

# Cross-border transfers of this region's data (allowed and refused), one row
# per decision: ids, region names, the basis, purpose and service names, the
# token id (never the token) and the rule that decided. No personal data.
transfers = Table(
    "transfers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at_us", BigInteger, nullable=False),
    Column("from_region", String(8), nullable=False),
    Column("to_region", String(8), nullable=False),
    # read (home -> entry) or write (entry -> home).
    Column("direction", String(8), nullable=False),
    Column("operation", String(32), nullable=False),
    Column("basis", String(32), nullable=True),
    Column("purpose", String(128), nullable=False),
    Column("service", String(128), nullable=False),
    Column("token_id", String(64), nullable=False),
    Column("subject_id", String(64), nullable=False),
    Column("record_id", String(64), nullable=True),
    # Sorted, comma-separated category names ("" for none in particular).
    Column("categories", String(1024), nullable=False),
    Column("allowed", Boolean, nullable=False),
    Column("rule", String(128), nullable=False),
    Column("reason", String(64), nullable=False),
    Index("ix_transfers_subject_id_id", "subject_id", "id"),
)

# Key rotation jobs of the cell: cursor (last subject id done) and counts.
# kind "rotate": cutoff_us is the rotation cutoff; kind "reindex": cutoff_us is
# the index key version the job builds (rotated: subjects re-indexed; skipped:
# erased meanwhile or without sealed lookup values).
key_jobs = Table(
    "key_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("cutoff_us", BigInteger, nullable=False),
    Column("cursor", String(64), nullable=False, server_default=""),
    Column("rotated", Integer, nullable=False, server_default="0"),
    Column("skipped", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("started_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger, nullable=True),
)

# Subject-key pool: subject ids minted ahead of sign-up, each with its Transit
# key already created and a fresh data key wrapped under it (the derivation
# context binding that id and the region; key_derived false: associated data).
# No personal data: an entry is an unused id and key material the vault cannot
# read without the key service. Claiming an entry deletes it in the statement
# that reads it (never reused).
subject_pool = Table(
    "subject_pool",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_mount", String(128), nullable=False),
    Column("key_name", String(128), nullable=False),
    Column("wrapped_dek", Text, nullable=False),
    # Microseconds since the epoch.
    Column("created_at", BigInteger, nullable=False),
    # As subjects.key_derived.
    Column("key_derived", Boolean, nullable=False, server_default=sa_false()),
)

# One row per batch the pool filler added: when (microseconds), how many
# entries, how long minting them took (microseconds). The refill rate comes
# from here, on every node and in `pdvault pool status`.
subject_pool_fills = Table(
    "subject_pool_fills",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at_us", BigInteger, nullable=False, index=True),
    Column("entries", Integer, nullable=False),
    Column("duration_us", BigInteger, nullable=False),
)
