"""The portability document (GDPR Art. 20), produced in pieces.

Format ``pdvault.export`` version 1: one JSON object with ``subject``,
``consents``, ``records`` (the fields the caller may export, per record) and
``omitted_records`` (records of categories it may not) and ``transfers`` (every
recorded cross-border transfer decision about the subject's data: regions,
basis, purpose, service, token id, ids, categories, rule; never data) and
``access_report`` (who accessed the subject's data, from the audit log: see
GetAccessReport). Pieces are produced
page by page so a large subject never sits in memory at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vault.cell._views import RecordView
from vault.store import SubjectRow


def export_pieces(
    subject: SubjectRow,
    consents: list[tuple[str, bool, str, int]],
    pages: Iterable[list[RecordView | None]],
    now_us: Callable[[], int],
    transfers: list[dict[str, Any]] | None = None,
    accesses: list[dict[str, Any]] | None = None,
) -> Iterator[bytes]:
    """The document in pieces; ``pages`` yields the subject's records page by
    page, ``None`` standing for a record the caller may not export."""
    head = {
        "format": "pdvault.export",
        "version": 1,
        "exported_at_us": now_us(),
        "subject": {
            "subject_id": subject.id,
            "region": subject.region,
            "state": str(subject.state),
            "minor": subject.minor,
            "created_at_us": subject.created_at,
        },
        "consents": [
            {"purpose": p, "granted": g, "source": src, "updated_at_us": at}
            for p, g, src, at in consents
        ],
    }
    text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))
    yield (text[:-1] + ',"records":[').encode()
    first = True
    omitted = 0
    for page in pages:
        parts = []
        for v in page:
            if v is None:
                omitted += 1
                continue
            rec = {
                "record_id": v.record_id,
                "category": v.category,
                "fields": v.fields,
                "version": v.version,
                "created_at_us": v.created_at_us,
                "updated_at_us": v.updated_at_us,
            }
            parts.append(("" if first else ",") + json.dumps(rec, ensure_ascii=False))
            first = False
        if parts:
            yield "".join(parts).encode()
    tail = json.dumps(transfers or [], ensure_ascii=False, separators=(",", ":"))
    report = json.dumps(accesses or [], ensure_ascii=False, separators=(",", ":"))
    yield f'],"omitted_records":{omitted},"transfers":{tail},"access_report":{report}}}'.encode()
