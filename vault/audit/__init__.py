"""The tamper-evident audit log: hash-chained entries per region, group commit,
signed checkpoints, verification, and subjects under pseudonyms that erasure
makes unlinkable (see :mod:`vault.audit._entry`)."""

from vault.audit._auditor import Auditor, AuditUnavailable, node_name
from vault.audit._checkpoint import (
    SIGNING_KEY_NAME,
    BadCheckpoint,
    Checkpoint,
    load_checkpoints,
    load_public_keys,
    open_checkpoint,
    save_checkpoints,
    save_public_keys,
    sign_checkpoint,
)
from vault.audit._entry import canonical, chain_hash, pseudonym, pseudonym_key
from vault.audit._note import (
    CONTROL_LOG,
    DeferredSink,
    RequestNote,
    about,
    current,
    defer,
    key_used,
    noting,
    served_by,
    touched,
    transfer,
)
from vault.audit._store import AuditStore, StoredEntry, audit_url
from vault.audit._writer import DEFAULT_BATCH_WINDOW, AuditWriter, CheckpointPolicy

__all__ = [
    "CONTROL_LOG",
    "DEFAULT_BATCH_WINDOW",
    "SIGNING_KEY_NAME",
    "AuditStore",
    "AuditUnavailable",
    "AuditWriter",
    "Auditor",
    "BadCheckpoint",
    "Checkpoint",
    "CheckpointPolicy",
    "DeferredSink",
    "RequestNote",
    "StoredEntry",
    "about",
    "audit_url",
    "canonical",
    "chain_hash",
    "current",
    "defer",
    "key_used",
    "load_checkpoints",
    "load_public_keys",
    "node_name",
    "noting",
    "open_checkpoint",
    "pseudonym",
    "pseudonym_key",
    "save_checkpoints",
    "save_public_keys",
    "served_by",
    "sign_checkpoint",
    "touched",
    "transfer",
]
