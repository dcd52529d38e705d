"""A node: routes each request to the home cell named by the ID's region prefix.

Every RPC that names a subject or record goes through here, erasure included,
so that the region an ID belongs to decides where it is served.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from vault import audit, ids, validation
from vault.cell import Cell, ConsentView, RecordPage, RecordView, SubjectView, normalise
from vault.config import Limits, RegionsConfig
from vault.erasure import Eraser, ErasureView
from vault.errors import FieldViolation, InvalidArgument, KeyServiceUnavailable, TooLarge
from vault.inline import ensure_may_block
from vault.policy import Caller

#: Records per person in one ImportSubjects message.
MAX_IMPORT_RECORDS = 100


class RegionNotServed(KeyServiceUnavailable):
    """The home region of the ID is not served by this node (no forwarding yet)."""

    reason = "REGION_NOT_SERVED"


class Node:
    """The vault as one process sees it: the cells it serves, behind one API."""

    def __init__(
        self, regions: RegionsConfig, cells: dict[str, Cell], limits: Limits, eraser: Eraser
    ) -> None:
        self.regions = regions
        self.cells = cells
        self.limits = limits
        self.eraser = eraser
        self._region_ids = regions.region_ids
        # Inline execution only when no served cell's database is across a network.
        self.inline_capable = all(c.local_store for c in cells.values())

    def _cell(self, region: str) -> Cell:
        cell = self.cells.get(region)
        audit.served_by(region)
        if cell is None:
            raise RegionNotServed("the home region of this id is not served by this node")
        return cell

    def close(self) -> None:
        for cell in self.cells.values():
            cell.close()

    @property
    def entry_region(self) -> str | None:
        """The region a caller enters by at this node, for forwarding: the one
        region it serves; None for a node serving several (it never forwards)."""
        return next(iter(self.cells)) if len(self.cells) == 1 else None

    def home_of(self, value: str, kind: Literal["sub", "rec"]) -> str | None:
        """The home region named by a subject (``sub``) or record (``rec``) id;
        None when the id is not valid (the local path reports why)."""
        try:
            return ids.parse_id(value, kind, field="id", regions=self._region_ids).region
        except InvalidArgument:
            return None

    def home_of_new_subject(self, country: str, region: str) -> str | None:
        """The region a new subject of ``country`` belongs to; None if invalid."""
        try:
            return self.regions.region_for(country, region)
        except InvalidArgument:
            return None

    def transfer_history(self, subject_id: str) -> list[dict[str, object]]:
        """The recorded cross-border transfers of a subject served here."""
        cell, sid = self.subject_cell(subject_id)
        return cell.transfer_history(sid)

    def subject_cell(self, value: str, field: str = "subject_id") -> tuple[Cell, str]:
        """The home cell of a subject id (validated) and the id."""
        vid = ids.parse_id(value, "sub", field=field, regions=self._region_ids)
        return self._cell(vid.region), vid.value

    def _record(self, value: str, field: str = "record_id") -> tuple[Cell, str]:
        vid = ids.parse_id(value, "rec", field=field, regions=self._region_ids)
        return self._cell(vid.region), vid.value

    def create_subject(
        self,
        caller: Caller,
        *,
        country: str,
        region: str = "",
        minor: bool = False,
        idempotency_key: str = "",
        lookups: list[tuple[str, str]] | None = None,
    ) -> SubjectView:
        home = self.regions.region_for(country, region)
        key = validation.idempotency_key(idempotency_key)
        for i, (kind, value) in enumerate(lookups or ()):
            normalise(kind, value, f"lookups[{i}]")  # reject bad input before creating anything
        return self._cell(home).create_subject(
            caller, minor=minor, idempotency_key=key, lookups=lookups
        )

    def import_subject(
        self,
        caller: Caller,
        *,
        country: str,
        region: str = "",
        minor: bool = False,
        idempotency_key: str,
        lookups: list[tuple[str, str]] | None = None,
        records: list[tuple[str, dict[str, str]]],
    ) -> tuple[SubjectView, int]:
        """One person of a bulk import: the subject (as CreateSubject, keyed by
        the required idempotency key) and their records in one batch. Every
        check runs before the subject is created; sent again, it completes what
        an interrupted import left undone and writes nothing twice. Returns the
        subject and how many records were new."""
        if not idempotency_key:
            raise InvalidArgument(
                FieldViolation("subject.idempotency_key", "is required for an import")
            )
        if len(records) > MAX_IMPORT_RECORDS:
            raise TooLarge(f"a person of an import holds at most {MAX_IMPORT_RECORDS} records")
        checked = [(validation.category(c), validation.fields(f, self.limits)) for c, f in records]
        home = self.regions.region_for(country, region)
        self._cell(home).check_import(caller, minor, checked)
        subject = self.create_subject(
            caller,
            country=country,
            region=region,
            minor=minor,
            idempotency_key=idempotency_key,
            lookups=lookups,
        )
        written = self._cell(home).import_records(
            caller, subject.subject_id, checked, idempotency_key
        )
        return subject, written

    def set_lookups(self, caller: Caller, subject_id: str, lookups: list[tuple[str, str]]) -> int:
        cell, sid = self.subject_cell(subject_id)
        return cell.set_lookups(caller, sid, lookups)

    def check_lookup(self, kind: str, value: str) -> None:
        normalise(kind, value)

    def find_subjects(
        self, caller: Caller, kind: str, value: str, region: str, all_regions: bool
    ) -> list[str]:
        normalise(kind, value)
        if all_regions:
            targets = [r for r in self.cells if caller.claims.allows_region(r)]
        else:
            if region not in self._region_ids:
                raise InvalidArgument(
                    FieldViolation("region", "must name a region, or set all_regions")
                )
            targets = [region]
        found: list[str] = []
        for r in sorted(targets):
            found += self._cell(r).find_subjects(caller, kind, value)
        return found

    def get_subject(self, caller: Caller, subject_id: str) -> SubjectView:
        cell, sid = self.subject_cell(subject_id)
        return cell.get_subject(caller, sid)

    def put_record(
        self,
        caller: Caller,
        *,
        subject_id: str,
        category: str,
        fields: dict[str, str],
        record_id: str = "",
        expected_version: int = 0,
        idempotency_key: str = "",
    ) -> RecordView:
        category = validation.category(category)
        fields = validation.fields(fields, self.limits)
        expected_version = validation.expected_version(expected_version)
        key = validation.idempotency_key(idempotency_key)
        if record_id:
            cell, rid = self._record(record_id)
            if subject_id:
                self.subject_cell(subject_id)  # well-formed; the cell checks it owns the record
            return cell.put_record(
                caller,
                subject_id=subject_id,
                category=category,
                fields=fields,
                record_id=rid,
                expected_version=expected_version,
            )
        cell, sid = self.subject_cell(subject_id)
        return cell.put_record(
            caller, subject_id=sid, category=category, fields=fields, idempotency_key=key
        )

    def get_record(self, caller: Caller, record_id: str) -> RecordView:
        cell, rid = self._record(record_id)
        return cell.get_record(caller, rid)

    def list_records(
        self,
        caller: Caller,
        subject_id: str,
        category: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> RecordPage:
        cell, sid = self.subject_cell(subject_id)
        return cell.list_records(
            caller,
            sid,
            validation.optional_category(category),
            validation.page_size(page_size, self.limits),
            page_token,
        )

    def delete_record(self, caller: Caller, record_id: str, expected_version: int = 0) -> None:
        cell, rid = self._record(record_id)
        cell.delete_record(caller, rid, validation.expected_version(expected_version))

    def set_consent(
        self, caller: Caller, subject_id: str, purpose: str, granted: bool, source: str
    ) -> ConsentView:
        cell, sid = self.subject_cell(subject_id)
        return cell.set_consent(
            caller, sid, validation.purpose(purpose), granted, validation.label(source, "source")
        )

    def list_consents(self, caller: Caller, subject_id: str) -> list[ConsentView]:
        cell, sid = self.subject_cell(subject_id)
        return cell.list_consents(caller, sid)

    def export_subject(self, caller: Caller, subject_id: str) -> Iterator[bytes]:
        cell, sid = self.subject_cell(subject_id)
        return cell.export_subject(caller, sid)

    def access_report(
        self, caller: Caller, subject_id: str, since_us: int = 0
    ) -> list[dict[str, object]]:
        cell, sid = self.subject_cell(subject_id)
        return cell.access_report(caller, sid, since_us)

    def restrict_processing(self, caller: Caller, subject_id: str, restricted: bool) -> SubjectView:
        cell, sid = self.subject_cell(subject_id)
        return cell.restrict_processing(caller, sid, restricted)

    def erase_subject(
        self, caller: Caller, subject_id: str, reason: str, grace_seconds: int, grace_nanos: int = 0
    ) -> ErasureView:
        cell, sid = self.subject_cell(subject_id)
        # Erasure talks to the key service and may wait for another node's
        # claim: never on the event loop.
        ensure_may_block()
        return self.eraser.erase(
            caller,
            cell,
            sid,
            validation.label(reason or "subject_request", "reason"),
            validation.grace_period(grace_seconds, grace_nanos),
        )

    def cancel_erasure(self, caller: Caller, subject_id: str) -> SubjectView:
        cell, sid = self.subject_cell(subject_id)
        ensure_may_block()
        return self.eraser.cancel(caller, cell, sid)
