"""Authentication: purpose tokens and the administrator credential.

The token signing key (Ed25519) never touches disk in plaintext: it is kept
wrapped by a non-exportable OpenBao Transit key (``transit-control`` /
``token-signing``) and unwrapped into memory when a node starts. The
verification keys (public) are a plain file every node of every region reads.

The administrator credential is a random bearer secret written to the data dir
(0600) by ``pdvault up``; nodes keep only its SHA-256 (:class:`AdminCredential`),
and follow the file when ``pdvault admin rotate`` replaces it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from vault.control import ControlStore, Revocations, TokenEvent
from vault.datadir import DataDir, write_file
from vault.errors import AccessDenied, FieldViolation, InvalidArgument, Unauthenticated
from vault.inline import ensure_may_block
from vault.policy import Authorizer, Caller
from vault.tokens._claims import Claims, is_narrowing, narrow
from vault.tokens._codec import issue
from vault.tokens._keys import KeySet, SigningKey
from vault.tokens._verifier import TokenVerifier
from vault.tokens.keyfiles import (
    MAX_TTL,
    SIGNING_KEY_NAME,
    SigningState,
    load_or_create_signing_key,
)

__all__ = [
    "MAX_TTL",
    "SIGNING_KEY_NAME",
    "AdminCredential",
    "IssueRequest",
    "SigningState",
    "TokenAuthority",
    "ensure_admin_credential",
    "load_or_create_signing_key",
    "rotate_admin_credential",
]

DEFAULT_TTL = 3600
_ADMIN_PREFIX = "pdva_"
#: How often a node looks at the administrator credential file, at most.
ADMIN_CHECK_SECONDS = 1.0

log = logging.getLogger("vault.tokens")


def _new_admin_credential() -> str:
    return _ADMIN_PREFIX + secrets.token_urlsafe(32) + "\n"


def ensure_admin_credential(data_dir: Path) -> str:
    """The local stack's administrator credential, created on first start (0600)."""
    path = DataDir(data_dir).admin_credential
    if not path.exists():
        write_file(path, _new_admin_credential(), 0o600)
    return path.read_text().strip()


def rotate_admin_credential(data_dir: Path) -> Path:
    """Replaces the data dir's administrator credential with a new one (0600).

    Written beside it, then renamed over it: a node reading the file sees the
    old credential or the new one, never a partial file. Nodes following the
    file (:class:`AdminCredential`) accept the new one and refuse the old one
    within :data:`ADMIN_CHECK_SECONDS`. Raises FileNotFoundError when the data
    dir has no credential to rotate.
    """
    layout = DataDir(data_dir)
    if not layout.admin_credential.is_file():
        raise FileNotFoundError(layout.admin_credential)
    write_file(layout.admin_credential_new, _new_admin_credential(), 0o600)
    os.replace(layout.admin_credential_new, layout.admin_credential)
    return layout.admin_credential


def _sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class AdminCredential:
    """What a node knows of the administrator credential: its SHA-256.

    ``fixed``: a credential given once. ``following(path)``: the credential
    in a file, looked at again at most once per ``check_seconds`` (a stat of
    its inode, size and modification time); when the file changed, its hash is
    read again, so a rotation takes effect on a running node without a restart
    and the old credential is refused from then on. A file that is gone,
    unreadable or empty accepts no credential at all (fail closed).
    """

    def __init__(
        self,
        digest: bytes | None,
        path: Path | None = None,
        *,
        check_seconds: float = ADMIN_CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._digest = digest
        self._path = path
        self._check_seconds = check_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int, int] | None = None
        self._next_check = float("-inf")

    @classmethod
    def fixed(cls, credential: str | None) -> AdminCredential:
        return cls(_sha256(credential) if credential else None)

    @classmethod
    def following(
        cls,
        path: Path,
        *,
        check_seconds: float = ADMIN_CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> AdminCredential:
        admin = cls(None, path, check_seconds=check_seconds, clock=clock)
        admin._current()
        return admin

    def matches(self, presented: str) -> bool:
        digest = self._current()
        if digest is None:
            return False
        return hmac.compare_digest(_sha256(presented), digest)

    def _current(self) -> bytes | None:
        if self._path is None:
            return self._digest
        with self._lock:
            now = self._clock()
            if now < self._next_check:
                return self._digest
            self._next_check = now + self._check_seconds
            try:
                st = self._path.stat()
                seen = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                if seen != self._seen:
                    secret = self._path.read_text().strip()
                    self._digest = _sha256(secret) if secret else None
                    if self._seen is not None:
                        log.warning("the administrator credential changed: the new one is in use")
                    self._seen = seen
            except OSError:
                if self._digest is not None:
                    log.warning("the administrator credential file cannot be read: none accepted")
                self._digest, self._seen = None, None
            return self._digest


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("a bearer token is required", reason="MISSING_TOKEN")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the authorization header must be 'Bearer <token>'", reason="MALFORMED_TOKEN"
        )
    return token.strip()


@dataclass(frozen=True)
class IssueRequest:
    service: str
    purpose: str
    categories: Mapping[str, frozenset[str] | None]
    operations: frozenset[str]
    regions: frozenset[str]
    subjects: frozenset[str] | None
    transfer_basis: str | None
    ttl: int


class TokenAuthority:
    """Issues, exchanges, verifies and revokes purpose tokens."""

    def __init__(
        self,
        signing: SigningKey,
        keys: KeySet,
        control: ControlStore,
        revocations: Revocations,
        authz: Authorizer,
        admin: AdminCredential | bytes | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``admin``: the administrator credential (or just its SHA-256)."""
        self._signing = signing
        self._control = control
        self._revocations = revocations
        self._authz = authz
        self._admin = admin if isinstance(admin, AdminCredential) else AdminCredential(admin)
        self._clock = clock
        self.verifier = TokenVerifier(keys, revocations.is_revoked, clock)
        self._kids = keys.kids

    def use_keys(self, state: SigningState) -> None:
        """Signs with ``state.signing`` and verifies with ``state.tokens`` from
        now on (a rotation, followed by :class:`~vault.tokens.keyfiles.KeyFollower`)."""
        self._signing = state.signing
        if state.tokens.kids != self._kids:
            self._kids = state.tokens.kids
            self.verifier.replace_keys(state.tokens)

    @property
    def signing_kid(self) -> str:
        return self._signing.kid

    # -- authentication ---------------------------------------------------

    def authenticate(self, authorization: str | None) -> Caller:
        token = _bearer(authorization)
        if token.startswith(_ADMIN_PREFIX):
            raise Unauthenticated(
                "the administrator credential is not a purpose token", reason="MALFORMED_TOKEN"
            )
        return self._authz.caller(self.verifier.verify(token))

    def is_admin(self, authorization: str | None) -> bool:
        try:
            token = _bearer(authorization)
        except Unauthenticated:
            return False
        return self._admin.matches(token)

    def require_admin(self, authorization: str | None) -> None:
        if not self.is_admin(authorization):
            raise Unauthenticated(
                "the administrator credential is required", reason="ADMIN_REQUIRED"
            )

    # -- issue / exchange / revoke ----------------------------------------

    def _control_may_block(self) -> None:
        """Token operations write to the control database; when it is a network
        server they run on the thread pool, never inline on the event loop (a
        slow or locked transaction would stall every request of the node).
        Called before anything is written."""
        if self._control.networked:
            ensure_may_block()

    def issue(self, req: IssueRequest) -> tuple[str, Claims]:
        self._control_may_block()
        purpose = self._authz.known_purpose(req.purpose)
        problems = self._authz.grant_problems(purpose, req.categories, req.operations)
        if not 0 < req.ttl <= MAX_TTL:
            problems.append(FieldViolation("ttl_seconds", f"must be between 1 and {MAX_TTL}"))
        if problems:
            raise InvalidArgument(problems)
        try:
            claims = Claims.new(
                sub=req.service,
                purpose=req.purpose,
                categories=req.categories,
                operations=req.operations,
                regions=req.regions,
                subjects=req.subjects,
                transfer_basis=req.transfer_basis,
                ttl=req.ttl,
                now=self._clock(),
            )
        except (TypeError, ValueError) as e:
            # Claims validation names the claim, never a value.
            raise InvalidArgument(FieldViolation("claims", str(e))) from None
        token = issue(claims, self._signing)
        self._record("issue", claims, caller="admin")
        return token, claims

    def exchange(
        self,
        caller: Caller,
        *,
        categories: Collection[str] | None,
        fields: Mapping[str, Collection[str]] | None,
        operations: Collection[str] | None,
        regions: Collection[str] | None,
        subjects: Collection[str] | None,
        ttl: int | None,
    ) -> tuple[str, Claims]:
        self._control_may_block()
        # Asked of the database, not of this node's revocation list, which may
        # not have polled a revocation made a moment ago through another node.
        # A revocation committing after this read is still effective on the
        # child: the child carries its ancestry and is refused with it.
        revoked = self._control.revoked_among(caller.claims.lineage)
        if revoked:
            for jti in revoked:
                self._revocations.add(jti)
            raise Unauthenticated("the token has been revoked", reason="REVOKED")
        child = narrow(
            caller.claims,
            categories=categories,
            fields=fields,
            operations=operations,
            regions=regions,
            subjects=subjects,
            ttl=ttl,
            now=self._clock(),
        )
        # The final guard: whatever narrow() built, never sign a wider token.
        if not is_narrowing(caller.claims, child):
            raise AccessDenied(
                "the exchanged token would be wider than its parent", reason="EXCHANGE_WIDENS"
            )
        token = issue(child, self._signing)
        self._record("exchange", child, caller=caller.service)
        return token, child

    def revoke(self, jti: str, *, admin: bool, caller: Caller | None) -> bool:
        """Revokes ``jti``: an administrator any token; a holder its own or its children."""
        self._control_may_block()
        target = self._control.issued(jti)
        if not admin:
            assert caller is not None
            own = jti == caller.claims.jti
            child = target is not None and target.parent_jti == caller.claims.jti
            if not (own or child):
                raise AccessDenied(
                    "a token may revoke only itself and the tokens exchanged from it",
                    reason="REVOKE_NOT_ALLOWED",
                )
        actor = "admin" if admin else (caller.service if caller else "?")
        revoked = self._revoke_one(jti, target, actor)
        # Every token exchanged from it is refused with it (its lineage names
        # this token). The cascade also revokes, by id, the descendants
        # recorded so far: for the record, and for tokens older than the
        # ancestry claim, which name only their parent.
        pending = [jti]
        while pending:
            for descendant in self._control.children(pending.pop()):
                self._revoke_one(descendant.jti, descendant, actor)
                pending.append(descendant.jti)
        return revoked

    def _revoke_one(self, jti: str, target: TokenEvent | None, actor: str) -> bool:
        expires = target.expires_at_us if target else int((self._clock() + MAX_TTL) * 1e6)
        revoked = self._control.revoke(jti, expires)
        self._revocations.add(jti, expires)
        self._control.record(
            TokenEvent(
                "revoke",
                jti,
                caller=actor,
                service=target.service if target else "",
                purpose=target.purpose if target else "",
                expires_at_us=expires,
            )
        )
        return revoked

    def _record(self, event: str, claims: Claims, caller: str) -> None:
        self._control.record(
            TokenEvent(
                event,
                claims.jti,
                caller=caller,
                service=claims.sub,
                purpose=claims.purpose,
                expires_at_us=claims.exp * 1_000_000,
                parent_jti=claims.parent_jti,
            )
        )
