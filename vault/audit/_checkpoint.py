"""Signed checkpoints of an audit log, in the style of C2SP signed notes.

A checkpoint commits to a log's size and head hash::

    pdvault audit <log>          (origin line)
    <size>                       (entries, decimal)
    <base64 head hash>
                                 (blank line)
    — <key name> <base64(key version, 4 bytes big-endian || Ed25519 signature)>

The signature is over the body (the three lines, each ending in a newline),
made by OpenBao Transit with a non-exportable Ed25519 key; the verifier needs
only the public key (from OpenBao's key read, or a file saved from it).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ORIGIN_PREFIX = "pdvault audit "
SIGNING_KEY_NAME = "pdvault-audit"


class Signer(Protocol):
    """Signs checkpoint bodies (:class:`vault.keys.TransitSigner`)."""

    def sign(self, message: bytes) -> tuple[int, bytes]: ...


class BadCheckpoint(ValueError):
    """A checkpoint that does not parse or whose signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    log: str
    size: int
    hash: bytes

    def body(self) -> bytes:
        return (
            f"{ORIGIN_PREFIX}{self.log}\n{self.size}\n{base64.b64encode(self.hash).decode()}\n"
        ).encode()


def sign_checkpoint(cp: Checkpoint, signer: Signer, key_name: str) -> str:
    """The signed note of ``cp``."""
    body = cp.body()
    version, sig = signer.sign(body)
    blob = base64.b64encode(struct.pack(">I", version) + sig).decode()
    return f"{body.decode()}\n\u2014 {key_name} {blob}\n"


def note_log(note: str) -> str | None:
    """The log a note says it is about (unverified: to pick the key to check it with)."""
    first = note.split("\n", 1)[0]
    return first[len(ORIGIN_PREFIX) :] if first.startswith(ORIGIN_PREFIX) else None


def open_checkpoint(note: str, public_keys: Mapping[int, bytes]) -> Checkpoint:
    """The checkpoint of a signed note whose signature verifies under one of
    ``public_keys`` (key version → raw Ed25519 key); :class:`BadCheckpoint` else."""
    body, sep, sigs = note.partition("\n\n")
    if not sep:
        raise BadCheckpoint("not a signed note")
    body_bytes = (body + "\n").encode()
    lines = body.split("\n")
    if len(lines) != 3 or not lines[0].startswith(ORIGIN_PREFIX):
        raise BadCheckpoint("not a pdvault audit checkpoint")
    try:
        size = int(lines[1])
        head = base64.b64decode(lines[2], validate=True)
    except (ValueError, binascii.Error) as e:
        raise BadCheckpoint("malformed size or hash") from e
    if size < 0 or len(head) != 32 or lines[1] != str(size):
        raise BadCheckpoint("malformed size or hash")
    for line in sigs.strip("\n").split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014":
            continue
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except binascii.Error:
            continue
        if len(blob) != 4 + 64:
            continue
        (version,) = struct.unpack(">I", blob[:4])
        key = public_keys.get(version)
        if key is None:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(blob[4:], body_bytes)
        except (InvalidSignature, ValueError):
            continue
        return Checkpoint(lines[0][len(ORIGIN_PREFIX) :], size, head)
    raise BadCheckpoint("no valid signature by the audit key")


def save_checkpoints(path: Path, notes: list[str]) -> None:
    """Witness copies: one JSON line per signed note (appended)."""
    with path.open("a") as f:
        for n in notes:
            f.write(json.dumps({"note": n}) + "\n")


def load_checkpoints(path: Path) -> list[str]:
    notes = []
    for line in path.read_text().splitlines():
        if line.strip():
            notes.append(str(json.loads(line)["note"]))
    return notes


def save_public_keys(path: Path, keys: Mapping[str, Mapping[int, bytes]]) -> None:
    """The audit keys' public halves, per log (``{log: {version: base64}}``)."""
    path.write_text(
        json.dumps(
            {
                log: {str(v): base64.b64encode(k).decode() for v, k in sorted(vs.items())}
                for log, vs in sorted(keys.items())
            },
            indent=1,
        )
        + "\n"
    )


def load_public_keys(path: Path) -> dict[str, dict[int, bytes]]:
    raw = json.loads(path.read_text())
    return {
        str(log): {int(v): base64.b64decode(k, validate=True) for v, k in vs.items()}
        for log, vs in raw.items()
    }
