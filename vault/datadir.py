"""The layout of a pdvault data directory, declared once.

``pdvault up`` creates it; every command that talks to a local stack reads it::

    DATA_DIR/                      (default ./.pdvault, mode 0700)
      endpoint                     host:port the local stack listens on
                                   (grpcs://host:port when it serves TLS)
      endpoints.json               five-region topology: every region's node
                                   ({"de": "grpcs://127.0.0.1:…", …}), entry first
      pki/                         five-region topology: local CA, node and
                                   client certificates (keys 0600; vault.devpki)
      five/                        five-region topology: the generated regions.yaml
                                   (and policy.yaml), logs/REGION.log of each node
      admin.credential             the administrator credential (0600)
      admin.credential.new         the next one while `pdvault admin rotate` writes it
      tokens/signing-key.json      the token signing key, wrapped by OpenBao (0600)
      tokens/verification-keys.json  the public verification keys (0644)
      tokens/signing-key-history.json  every signing key ever used, chained (0644)
      openbao/                     the local OpenBao (raft storage, unseal material)
      cells/REGION.db              the cells' SQLite files (named in regions/)
      control.db                   the control plane (named in regions/)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vault.tokens import KeySet, history_keyset, keyset_from_json, verify_history

DEFAULT_DATA_DIR = Path(".pdvault")
DEFAULT_TARGET = "127.0.0.1:50051"


def write_file(path: Path, text: str, mode: int) -> None:
    """Writes ``text`` with exactly ``mode``, whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def replace_file(path: Path, text: str, mode: int) -> None:
    """Like :func:`write_file`, but readers see the old content or the new, never
    a partial file (written beside it, then renamed over it): for files that
    several processes read while one may be writing (the verification keys)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_file(tmp, text, mode)
    os.replace(tmp, path)


@dataclass(frozen=True)
class DataDir:
    """Where each file of a data directory lives."""

    root: Path = DEFAULT_DATA_DIR

    @property
    def endpoint(self) -> Path:
        return self.root / "endpoint"

    @property
    def admin_credential(self) -> Path:
        return self.root / "admin.credential"

    @property
    def admin_credential_new(self) -> Path:
        return self.root / "admin.credential.new"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def signing_key(self) -> Path:
        return self.tokens / "signing-key.json"

    @property
    def verification_keys(self) -> Path:
        return self.tokens / "verification-keys.json"

    @property
    def signing_key_history(self) -> Path:
        return self.tokens / "signing-key-history.json"

    @property
    def endpoints(self) -> Path:
        return self.root / "endpoints.json"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def five(self) -> Path:
        return self.root / "five"

    def region_endpoints(self) -> dict[str, str]:
        """The five-region topology's endpoint per region ({} when not running one)."""
        try:
            raw = json.loads(self.endpoints.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def local_tls_files(self, target: str) -> tuple[Path, Path, Path] | None:
        """(CA, client certificate, key) of this data dir's five-region topology
        when ``target`` is one of its nodes, else None."""
        if target not in self.region_endpoints().values():
            return None
        ca, cert, key = (self.pki / n for n in ("ca.pem", "client.pem", "client-key.pem"))
        return (ca, cert, key) if all(p.exists() for p in (ca, cert, key)) else None

    @property
    def openbao(self) -> Path:
        return self.root / "openbao"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def target(self, explicit: str | None = None) -> str:
        """Where to reach the vault: ``explicit``, else the local stack of this
        data dir, else ``$PDVAULT_TARGET``, else the default port."""
        if explicit:
            return explicit
        if self.endpoint.exists():
            return self.endpoint.read_text().strip()
        return os.environ.get("PDVAULT_TARGET", DEFAULT_TARGET)

    def read_admin_credential(self) -> str:
        """The administrator credential; SystemExit with a hint when missing."""
        try:
            return self.admin_credential.read_text().strip()
        except OSError:
            raise SystemExit(
                f"pdvault: no administrator credential at {self.admin_credential} "
                "(is `pdvault up` using this data dir?)"
            ) from None

    def read_keyset(self, path: Path | None = None) -> KeySet:
        """The published verification keys (of this data dir, or ``path``)."""
        return keyset_from_json((path or self.verification_keys).read_text())

    def read_receipt_keys(self, path: Path | None = None) -> KeySet:
        """The keys receipts verify under: every key of the signing-key history
        (of this data dir, or ``path``) once its chain verifies (HistoryError
        otherwise). ``path`` may also name a published key set."""
        text = (path or self.signing_key_history).read_text()
        if '"history"' not in text:
            return keyset_from_json(text)
        return history_keyset(verify_history(text))
