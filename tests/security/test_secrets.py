"""Secrets on disk: the export file, the administrator credential, token issuers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.conftest import Bao, Stack, start_stack
from vault.cli import main
from vault.client import VaultClient, VaultClientError
from vault.datadir import DataDir
from vault.errors import Unauthenticated
from vault.tokens import REGIONS, Claims, KeySet, SigningKey, decode, issue
from vault.tokens.authority import AdminCredential, ensure_admin_credential, rotate_admin_credential
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration


def _export_with_umask_0(stack: Stack, token: str, subject_id: str, out: Path) -> str:
    """`pdvault export` in a process whose umask would leave any file world-readable."""
    cmd = [sys.executable, "-m", "vault.cli", "export", subject_id, "-o", str(out)]
    cmd += ["--target", stack.target, "--token", token]
    done = subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stderr if done.returncode else ""


def test_export_file_is_created_0600_whatever_the_umask(stack: Stack, tmp_path: Path) -> None:
    token = stack.issue("essential.subject_rights", ["user.name"], ["read", "write", "export"])
    c = stack.client(token)
    sid = c.create_subject("DE").subject_id
    c.put_record(sid, "user.name", {"first": "Ada"})

    fresh = tmp_path / "fresh.json"
    assert _export_with_umask_0(stack, token, sid, fresh) == ""
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert "Ada" in fresh.read_text()

    # An existing world-readable file is narrowed before anything is written.
    existing = tmp_path / "existing.json"
    existing.write_text("old")
    existing.chmod(0o644)
    assert _export_with_umask_0(stack, token, sid, existing) == ""
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600
    assert "Ada" in existing.read_text()


def test_export_does_not_write_through_a_symlink(stack: Stack, tmp_path: Path) -> None:
    token = stack.issue("essential.subject_rights", ["user.name"], ["read", "write", "export"])
    c = stack.client(token)
    sid = c.create_subject("DE").subject_id
    c.put_record(sid, "user.name", {"first": "Ada"})
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    victim.chmod(0o644)
    link = tmp_path / "export.json"
    os.symlink(victim, link)
    assert "cannot be written" in _export_with_umask_0(stack, token, sid, link)
    assert victim.read_text() == "untouched"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


# --- the administrator credential ---------------------------------------------------


def test_admin_credential_follows_its_file_at_most_once_a_second(tmp_path: Path) -> None:
    path = DataDir(tmp_path).admin_credential
    old = ensure_admin_credential(tmp_path)
    now = [0.0]
    admin = AdminCredential.following(path, clock=lambda: now[0])
    assert admin.matches(old) and not admin.matches(old + "x") and not admin.matches("")

    rotate_admin_credential(tmp_path)
    new = path.read_text().strip()
    assert new != old and new.startswith("pdva_")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not DataDir(tmp_path).admin_credential_new.exists()
    now[0] = 0.5  # not looked at again yet
    assert admin.matches(old) and not admin.matches(new)
    now[0] = 1.0
    assert admin.matches(new) and not admin.matches(old)

    path.unlink()  # gone: nothing is accepted (fail closed)
    now[0] = 2.0
    assert not admin.matches(new) and not admin.matches(old)
    path.write_text("\n")  # empty: nothing either
    now[0] = 3.0
    assert not admin.matches("") and not admin.matches(new)
    path.write_text("pdva_restored\n")
    now[0] = 4.0
    assert admin.matches("pdva_restored")


def test_admin_rotate_needs_an_existing_credential(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        rotate_admin_credential(tmp_path)
    assert main(["admin", "rotate", "--data-dir", str(tmp_path)]) == 1
    assert not DataDir(tmp_path).admin_credential.exists()


def _issue(stack: Stack, credential: str) -> None:
    with VaultClient(stack.target, token=credential) as admin:
        admin.issue_token(
            service="rotation",
            purpose="essential.service",
            categories=["user.name"],
            operations=["read"],
            ttl_seconds=60,
        )


def _refused_as_admin(stack: Stack, credential: str) -> bool:
    try:
        _issue(stack, credential)
    except VaultClientError as e:
        assert (e.code, e.reason) == (grpc.StatusCode.UNAUTHENTICATED, "ADMIN_REQUIRED")
        return True
    return False


def test_admin_rotate_on_a_running_node_without_restart(
    bao: Bao, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = start_stack(bao, tmp_path)
    try:
        old = s.admin
        _issue(s, old)
        victim = s.client().create_subject("DE").subject_id

        assert main(["admin", "rotate", "--data-dir", str(tmp_path)]) == 0
        assert "admin.credential" in capsys.readouterr().out
        path = DataDir(tmp_path).admin_credential
        new = s.admin = path.read_text().strip()
        assert new != old and stat.S_IMODE(path.stat().st_mode) == 0o600

        deadline = time.monotonic() + 5
        while not _refused_as_admin(s, old):
            assert time.monotonic() < deadline, "the old credential is still accepted"
            time.sleep(0.2)
        _issue(s, new)
        # The old credential cannot revoke either, and is no purpose token.
        token_id = s.client(s.issue()).exchange_token(operations=["read"]).token_id
        with VaultClient(s.target, token=old) as c:
            with pytest.raises(VaultClientError) as e:
                c.revoke_token(token_id)
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(VaultClientError):
                c.get_subject(victim)
    finally:
        s.stop()


def _admin_as_purpose_token(stack: Stack, credential: str, subject_id: str, record_id: str) -> None:
    """Every RPC that wants a purpose token refuses the administrator credential."""
    calls: dict[str, Callable[[VaultClient], object]] = {
        "CreateSubject": lambda c: c.create_subject("DE"),
        "GetSubject": lambda c: c.get_subject(subject_id),
        "PutRecord": lambda c: c.put_record(subject_id, "user.name", {"first": "Eve"}),
        "GetRecord": lambda c: c.get_record(record_id),
        "ListRecords": lambda c: c.list_records(subject_id),
        "DeleteRecord": lambda c: c.delete_record(record_id),
        "FindSubjects": lambda c: c.find_subjects("email", "a@example.org", all_regions=True),
        "SetConsent": lambda c: c.set_consent(
            subject_id, "marketing.communications.email", True, source="x"
        ),
        "ExportSubject": lambda c: c.export_subject(subject_id),
        "GetAccessReport": lambda c: c.access_report(subject_id),
        "EraseSubject": lambda c: c.erase_subject(subject_id, reason="subject_request"),
        "ExchangeToken": lambda c: c.exchange_token(operations=["read"]),
        "ImportSubjects": lambda c: c.import_subjects(
            [pb.ImportSubjectRequest(subject=pb.CreateSubjectRequest(country="DE"))]
        ),
    }
    with VaultClient(stack.target, token=credential) as c:
        for rpc, call in calls.items():
            with pytest.raises(VaultClientError) as e:
                call(c)
            assert (e.value.code, e.value.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "MALFORMED_TOKEN",
            ), rpc


def test_admin_credential_is_never_a_purpose_token(stack: Stack) -> None:
    owner = stack.client()
    sid = owner.create_subject("DE").subject_id
    rid = owner.put_record(sid, "user.name", {"first": "Ada"}).record_id
    _admin_as_purpose_token(stack, stack.admin, sid, rid)
    # Nothing happened to the subject or its record.
    assert dict(owner.get_record(rid).fields) == {"first": "Ada"}


# --- the token issuer -------------------------------------------------------------


def _foreign_claims(sub: str = "foreign") -> Claims:
    return Claims.new(
        iss="someone-else",
        sub=sub,
        purpose="essential.service",
        categories={"user.name": None},
        operations=frozenset({"read", "write"}),
        regions=frozenset(REGIONS),
        subjects=None,
        ttl=600,
        now=time.time(),
    )


def test_decode_refuses_a_token_from_another_issuer() -> None:
    key = SigningKey.generate()
    token = issue(_foreign_claims(), key)
    with pytest.raises(Unauthenticated) as e:
        decode(token, KeySet([key.public()]), now=time.time())
    assert e.value.reason == "WRONG_ISSUER"


def test_node_refuses_a_token_from_another_issuer(stack: Stack) -> None:
    sid = stack.client().create_subject("DE").subject_id
    token = issue(_foreign_claims(), stack.vault.authority._signing)
    with pytest.raises(VaultClientError) as e:
        stack.client(token).get_subject(sid)
    assert (e.value.code, e.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "WRONG_ISSUER")
