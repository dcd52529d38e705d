"""A stateful model test: random sequences of the vault's operations against a
real node, each answer checked against an in-memory model of the rules.

The model keeps, for each subject, its state (active, restricted, erasure
pending, erased), whether it is a minor, its consents and its records; and
for each token its purpose, its grant (categories and fields), its operations,
its parent and whether it is revoked. For every call it computes the set of
answers the rules allow: success (with exactly which fields), or the status
codes of every rule the call breaks. The node's answer must be one of them.
Above all, the properties the vault promises:

* an erased (or erasure-pending) subject is never readable;
* a read never returns a field its purpose does not allow, nor one outside the
  token's grant — an exchanged token never reads more than its parent;
* restriction and consent are honoured; a revoked token is refused.

A read the model says must be refused but the node answers is counted as an
unauthorised read in the run's summary (and fails the test).
Bounded in CI; ``--long`` or ``PDVAULT_LONG=1`` runs many more steps.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import POLICY, Bao, Stack, long_runs, start_stack
from tests.fault_tally import TALLY
from vault.client import VaultClient, VaultClientError
from vault.v1 import vault_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVICE = "essential.service"
RIGHTS = "essential.subject_rights"
MARKETING = "marketing.communications.email"
CATEGORIES = {"user.name": ["first", "last", "full"], "user.contact.email": ["address", "verified"]}

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
MISSING = grpc.StatusCode.NOT_FOUND

Grant = dict[str, frozenset[str] | None]


@dataclass
class Tok:
    """A token as the model knows it."""

    token: str
    jti: str
    purpose: str
    grant: Grant
    ops: frozenset[str]
    parent: Tok | None = None
    revoked: bool = False

    @property
    def refused(self) -> bool:
        """Revoked, it or any token it was exchanged from."""
        return self.revoked or (self.parent is not None and self.parent.refused)

    def readable(self, category: str) -> frozenset[str] | bool | None:
        """The fields a read of ``category`` returns (None: all), or False."""
        p = POLICY.purposes[self.purpose]
        if category not in p.categories or category not in self.grant:
            return False
        pf, tf = p.categories[category], self.grant[category]
        if pf is None:
            return tf
        return pf if tf is None else pf & tf


@dataclass
class Subj:
    minor: bool
    state: str = "active"  # active | restricted | pending | erased
    prior: str = "active"
    consents: set[str] = field(default_factory=set)
    records: dict[str, tuple[str, dict[str, str], int]] = field(default_factory=dict)

    @property
    def gone(self) -> bool:
        return self.state in ("pending", "erased")


@dataclass
class Node:
    stack: Stack
    admin: VaultClient


@pytest.fixture(scope="module")
def node(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    stack = start_stack(bao, tmp_path_factory.mktemp("model"))
    try:
        yield Node(stack, stack.client(stack.admin))
    finally:
        stack.stop()


def _visible(s: Subj, t: Tok) -> set[grpc.StatusCode]:
    """What the subject's facts rule out for the token's purpose (empty: nothing)."""
    p = POLICY.purposes[t.purpose]
    out: set[grpc.StatusCode] = set()
    if p.requires_consent and (t.purpose not in s.consents or (s.minor and not p.minors)):
        out.add(DENIED)
    if s.minor and not p.minors:
        out.add(DENIED)
    if s.state == "restricted" and not p.allowed_when_restricted:
        out.add(PRECONDITION)
    return out


def _filtered(fields: dict[str, str], allowed: frozenset[str] | None) -> dict[str, str]:
    return dict(fields) if allowed is None else {k: v for k, v in fields.items() if k in allowed}


class VaultModel(RuleBasedStateMachine):
    node: Node  # set by the test

    subjects_b = Bundle("subjects")
    records_b = Bundle("records")
    tokens_b = Bundle("tokens")

    def __init__(self) -> None:
        super().__init__()
        self.subjects: dict[str, Subj] = {}
        self.record_subject: dict[str, str] = {}
        self.clients: dict[str, VaultClient] = {}
        self.tokens: list[Tok] = []
        self.touched: set[str] = set()
        self.checks = 0
        self.steps = 0

    # -- helpers -----------------------------------------------------------

    def _client(self, t: Tok) -> VaultClient:
        c = self.clients.get(t.token)
        if c is None:
            c = self.clients[t.token] = VaultClient(self.node.stack.target, token=t.token)
        return c

    def _call(self, allowed: set[grpc.StatusCode], fn: Any, *args: Any, **kw: Any) -> Any:
        self.steps += 1
        TALLY.model_steps += 1
        try:
            reply = fn(*args, **kw)
            code = OK
        except VaultClientError as e:
            reply, code = e, e.code
        assert code in allowed, f"{fn.__name__}: got {code.name}, rules allow {allowed}: {reply}"
        return reply if code == OK else None

    def _issue(self, purpose: str, grant: Grant, ops: list[str]) -> Tok:
        cats = {c: sorted(f) if f is not None else [] for c, f in grant.items()}
        r = self.node.admin.issue_token(
            service="model", purpose=purpose, categories=cats, operations=ops, ttl_seconds=3600
        )
        return Tok(r.token, r.token_id, purpose, grant, frozenset(ops))

    # -- set-up -----------------------------------------------------------------

    @initialize(target=tokens_b)
    def root_tokens(self) -> Any:
        svc = self._issue(SERVICE, dict.fromkeys(CATEGORIES), ["read", "write", "delete"])
        mkt = self._issue(
            MARKETING,
            {"user.name": frozenset({"first"}), "user.contact.email": frozenset({"address"})},
            ["read"],
        )
        rights = self._issue(
            RIGHTS, dict.fromkeys(CATEGORIES), ["read", "consent", "erase", "export"]
        )
        self.svc, self.rights = svc, rights
        self.tokens += [svc, mkt, rights]
        return multiple(svc, mkt, rights)

    # -- subjects -----------------------------------------------------------------

    @rule(target=subjects_b, minor=st.booleans())
    def create_subject(self, minor: bool) -> str:
        s = self._call({OK}, self._client(self.svc).create_subject, "DE", minor=minor)
        self.subjects[s.subject_id] = Subj(minor)
        return str(s.subject_id)

    @rule(sid=subjects_b, granted=st.booleans())
    def set_consent(self, sid: str, granted: bool) -> None:
        s = self.subjects[sid]
        ok = self._call(
            {PRECONDITION} if s.gone else {OK},
            self._client(self.rights).set_consent,
            sid,
            MARKETING,
            granted,
            source="model",
        )
        if ok is not None:
            (s.consents.add if granted else s.consents.discard)(MARKETING)

    @rule(sid=subjects_b, restricted=st.booleans())
    def restrict(self, sid: str, restricted: bool) -> None:
        s = self.subjects[sid]
        ok = self._call(
            {PRECONDITION} if s.gone else {OK},
            self._client(self.rights).restrict_processing,
            sid,
            restricted,
        )
        if ok is not None:
            s.state = "restricted" if restricted else "active"
            assert ok.state == (
                pb.SUBJECT_STATE_RESTRICTED if restricted else pb.SUBJECT_STATE_ACTIVE
            )

    @rule(sid=subjects_b, grace=st.sampled_from([0, 3600]))
    def erase(self, sid: str, grace: int) -> None:
        s = self.subjects[sid]
        r = self._call(
            {OK}, self._client(self.rights).erase_subject, sid, grace_period_seconds=grace
        )
        if s.state == "erased" or (s.state != "pending" and grace == 0):
            assert r.state == pb.ERASURE_STATE_COMPLETED and r.signed_receipt
            s.state = "erased"
            for rid in s.records:
                self.record_subject.pop(rid, None)
            s.records.clear()
            s.consents.clear()
        else:
            assert r.state == pb.ERASURE_STATE_PENDING
            if s.state != "pending":
                s.prior, s.state = s.state, "pending"

    @rule(sid=subjects_b)
    def cancel(self, sid: str) -> None:
        s = self.subjects[sid]
        allowed = {OK} if s.state == "pending" else {PRECONDITION if s.gone else MISSING}
        r = self._call(allowed, self._client(self.rights).cancel_erasure, sid)
        if r is not None:
            s.state = s.prior
            assert r.state == (
                pb.SUBJECT_STATE_RESTRICTED if s.state == "restricted" else pb.SUBJECT_STATE_ACTIVE
            )

    # -- records ------------------------------------------------------------------

    @rule(
        target=records_b,
        sid=subjects_b,
        category=st.sampled_from(sorted(CATEGORIES)),
        data=st.data(),
    )
    def put_new(self, sid: str, category: str, data: st.DataObject) -> Any:
        s = self.subjects[sid]
        names = data.draw(st.sets(st.sampled_from(CATEGORIES[category]), min_size=1))
        fields = {n: f"{n}-{uuid.uuid4().hex[:6]}" for n in sorted(names)}
        allowed = {PRECONDITION} if s.gone else (_visible(s, self.svc) or {OK})
        r = self._call(allowed, self._client(self.svc).put_record, sid, category, fields)
        if r is None:
            return multiple()
        s.records[r.record_id] = (category, fields, 1)
        self.record_subject[r.record_id] = sid
        self.touched.add(r.record_id)
        return str(r.record_id)

    def _record_answers(self, rid: str, t: Tok, op: str) -> set[grpc.StatusCode]:
        """The refusals the rules give a call on record ``rid`` (empty: allowed)."""
        if t.refused:
            return {UNAUTH}
        if op not in t.ops:
            return {DENIED}
        sid = self.record_subject.get(rid)
        if sid is None:
            return {MISSING}
        s = self.subjects[sid]
        out: set[grpc.StatusCode] = set()
        if s.gone:
            out.add(PRECONDITION)
        if t.readable(s.records[rid][0]) is False:
            out.add(DENIED)
        return out | _visible(s, t)

    @rule(rid=records_b, data=st.data())
    def update(self, rid: str, data: st.DataObject) -> None:
        refusals = self._record_answers(rid, self.svc, "write")
        sid = self.record_subject.get(rid)
        if sid is None:
            self._call(
                {MISSING},
                self._client(self.svc).put_record,
                "",
                "user.name",
                {"first": "x"},
                record_id=rid,
            )
            return
        s = self.subjects[sid]
        category, _, version = s.records[rid]
        names = data.draw(st.sets(st.sampled_from(CATEGORIES[category]), min_size=1))
        fields = {n: f"{n}-{uuid.uuid4().hex[:6]}" for n in sorted(names)}
        r = self._call(
            refusals or {OK},
            self._client(self.svc).put_record,
            sid,
            category,
            fields,
            record_id=rid,
            expected_version=version,
        )
        if r is not None:
            assert r.version == version + 1
            s.records[rid] = (category, fields, version + 1)

    @rule(rid=consumes(records_b))
    def delete(self, rid: str) -> None:
        refusals = self._record_answers(rid, self.svc, "delete")
        r = self._call(refusals or {OK}, self._client(self.svc).delete_record, rid)
        if r is not None:
            sid = self.record_subject.pop(rid)
            del self.subjects[sid].records[rid]

    @rule(rid=records_b, t=tokens_b)
    def get(self, rid: str, t: Tok) -> None:
        self._check_get(rid, t)

    @invariant()
    def a_recent_record_reads_as_the_rules_say(self) -> None:
        """After every step, one of the known records read with one of the known
        tokens (in turn), so every state the sequence reaches is read."""
        rids = [r for r in self.record_subject if r in self.touched][-3:]
        if rids and self.tokens:
            n = self.checks = self.checks + 1
            self._check_get(rids[n % len(rids)], self.tokens[n % len(self.tokens)])

    def _check_get(self, rid: str, t: Tok) -> None:
        refusals = self._record_answers(rid, t, "read")
        TALLY.reads_checked += 1
        try:
            got = self._client(t).get_record(rid)
        except VaultClientError as e:
            self.steps += 1
            TALLY.model_steps += 1
            assert refusals, f"a permitted read was refused: {e}"
            assert e.code in refusals, f"GetRecord: {e.code.name}, rules allow {refusals}"
            return
        self.steps += 1
        TALLY.model_steps += 1
        if refusals:
            TALLY.unauthorised_reads += 1
            raise AssertionError(f"unauthorised read ({t.purpose}): rules say {refusals}")
        sid = self.record_subject[rid]
        category, fields, version = self.subjects[sid].records[rid]
        allowed = t.readable(category)
        assert allowed is not False
        returned = dict(got.fields)
        if not set(returned) <= set(_filtered(fields, allowed)):
            TALLY.unauthorised_reads += 1
        assert returned == _filtered(fields, allowed), (t.purpose, t.grant, returned)
        assert got.version == version

    @rule(sid=subjects_b, t=tokens_b)
    def list(self, sid: str, t: Tok) -> None:
        s = self.subjects[sid]
        if t.refused:
            refusals = {UNAUTH}
        elif "read" not in t.ops:
            refusals = {DENIED}
        else:
            refusals = ({PRECONDITION} if s.gone else set()) | _visible(s, t)
        page = self._call(refusals or {OK}, self._client(t).list_records, sid, page_size=100)
        TALLY.reads_checked += 1
        if page is None:
            return
        if refusals:
            TALLY.unauthorised_reads += 1
        expected = {
            rid: _filtered(f, t.readable(c))  # type: ignore[arg-type]
            for rid, (c, f, _) in s.records.items()
            if t.readable(c) is not False
        }
        got = {r.record_id: dict(r.fields) for r in page.records}
        if not all(set(v) <= set(expected.get(k, {})) for k, v in got.items()):
            TALLY.unauthorised_reads += 1
        assert got == expected

    # -- tokens ---------------------------------------------------------------------

    @precondition(lambda self: self.steps < 10_000)
    @rule(target=tokens_b, parent=tokens_b, data=st.data())
    def exchange(self, parent: Tok, data: st.DataObject) -> Any:
        if parent.parent is not None or parent.purpose == RIGHTS:
            return multiple()
        cats = data.draw(st.sets(st.sampled_from(sorted(parent.grant)), min_size=1))
        grant: Grant = {}
        for c in sorted(cats):
            within = parent.readable(c)
            names = sorted(within) if isinstance(within, frozenset) else CATEGORIES[c]
            grant[c] = frozenset(data.draw(st.sets(st.sampled_from(names), min_size=1)))
        wider = data.draw(st.booleans())
        ask = {c: sorted(f) for c, f in grant.items() if f is not None}
        if wider:  # a category the parent does not hold: must be refused
            ask["user.financial"] = []
        refusals = {UNAUTH} if parent.refused else ({DENIED} if wider else set())
        r = self._call(
            refusals or {OK},
            self._client(parent).exchange_token,
            categories=ask,
            operations=["read"],
        )
        if r is None:
            return multiple()
        child = Tok(r.token, r.token_id, parent.purpose, grant, frozenset({"read"}), parent)
        self.tokens.append(child)
        return child

    @rule(t=tokens_b)
    def revoke(self, t: Tok) -> None:
        if t.parent is None:
            return  # the model's root tokens stay
        self._call({OK}, self.node.admin.revoke_token, t.jti)
        t.revoked = True

    @invariant()
    def erased_subjects_stay_unreadable(self) -> None:
        for sid, s in list(self.subjects.items())[-3:]:
            if s.state == "erased":
                with pytest.raises(VaultClientError) as e:
                    self._client(self.rights).list_records(sid)
                assert e.value.code == PRECONDITION

    def teardown(self) -> None:
        for c in self.clients.values():
            c.close()


def test_the_vault_follows_the_model(node: Node, request: pytest.FixtureRequest) -> None:
    VaultModel.node = node
    long = long_runs(request.config)
    run_state_machine_as_test(
        VaultModel,
        settings=settings(
            max_examples=300 if long else 20,
            stateful_step_count=50 if long else 35,
            deadline=None,
            database=None,
            derandomize=not long,
            suppress_health_check=list(HealthCheck),
        ),
    )
    assert TALLY.unauthorised_reads == 0
