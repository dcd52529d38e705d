"""Secrets on disk: the export file, the administrator credential, token issuers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Stack

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
