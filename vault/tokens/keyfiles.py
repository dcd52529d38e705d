"""The vault signing key on disk: creation, rotation, and nodes following it.

One Ed25519 key signs purpose tokens and erasure receipts. Its files, in the
data dir's ``tokens/``::

    signing-key.json              the private key, wrapped by OpenBao Transit
                                  (``transit-control/token-signing``), 0600
    signing-key.next.json         the next key while a rotation runs (0600)
    verification-keys.json        the keys tokens are accepted under (0644),
                                  with created_at / retired_at (Unix seconds)
    signing-key-history.json      every key ever used, append-only and
                                  chained (vault.tokens._history), 0644

Rotation (:func:`rotate_signing_key`, ``pdvault token rotate-key``):

1. a new key is generated and written wrapped as ``signing-key.next.json``;
2. it is published in ``verification-keys.json`` (every node accepts its
   tokens from its next poll), the old key marked ``retired_at``; keys retired
   more than :data:`RETIRE_AFTER` ago (the longest token life plus a margin)
   are removed;
3. it is appended to the history, endorsed by the old key;
4. ``signing-key.next.json`` replaces ``signing-key.json``: nodes sign with
   the new key from their next poll.

A rotation interrupted at any step is finished by running it again. Nodes
follow the files (:class:`KeyFollower`, every :data:`FOLLOW_SECONDS`): a new
signing key, a new key published or an old one removed take effect without a
restart. A retired key is refused once :data:`RETIRE_AFTER` has passed even
if nobody rotates again to remove it from the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vault.datadir import replace_file, write_file
from vault.keys import KeyProvider, KeyRef
from vault.tokens._history import (
    HistoryEntry,
    append_key,
    history_keyset,
    history_to_json,
    start_history,
    verify_history,
)
from vault.tokens._keys import (
    KeySet,
    PublishedKey,
    SigningKey,
    published_from_json,
    published_to_json,
)

SIGNING_KEY_NAME = "token-signing"
#: The longest a token may live (seconds).
MAX_TTL = 30 * 24 * 3600
#: After a rotation, a node may sign with the old key until it polls, and
#: clocks differ: the old key stays accepted this much longer than MAX_TTL.
RETIRE_GRACE = 3600
#: How long after its retirement a key's tokens are still accepted.
RETIRE_AFTER = MAX_TTL + RETIRE_GRACE
#: How often a node looks at the key files.
FOLLOW_SECONDS = 1.0

KEY_FILE = "signing-key.json"
NEXT_KEY_FILE = "signing-key.next.json"
PUBLISHED_FILE = "verification-keys.json"
HISTORY_FILE = "signing-key-history.json"

log = logging.getLogger("vault.tokens")


def _signing_aad(kid: str) -> bytes:
    return b"pdvault/token-signing-key/v1|" + kid.encode()


@dataclass(frozen=True)
class SigningState:
    """What a node signs and verifies with at one moment.

    ``tokens``: the keys tokens are accepted under now; ``receipts``: every
    key of the verified history (receipts verify for years).
    """

    signing: SigningKey
    tokens: KeySet
    receipts: KeySet


@dataclass(frozen=True)
class Rotation:
    """What :func:`rotate_signing_key` did (key ids only)."""

    new_kid: str
    retired: tuple[str, ...]
    removed: tuple[str, ...]


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One writer of the key files at a time (rotations, first start)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".keys.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _read_key(path: Path, ref: KeyRef, keys: KeyProvider) -> SigningKey:
    stored = json.loads(path.read_text())
    kid = str(stored["kid"])
    signing = SigningKey.from_pem(keys.unwrap(ref, str(stored["wrapped"]), _signing_aad(kid)))
    if signing.kid != kid:
        raise RuntimeError("the unwrapped token signing key does not match its key id")
    return signing


def _write_key(path: Path, ref: KeyRef, keys: KeyProvider, signing: SigningKey) -> None:
    wrapped = keys.wrap(ref, signing.private_pem(), _signing_aad(signing.kid))
    write_file(path, json.dumps({"kid": signing.kid, "wrapped": wrapped}), 0o600)


def accepted_keys(published: list[PublishedKey], now: float) -> KeySet:
    """The keys tokens are accepted under at ``now``."""
    return KeySet(p.key for p in published if p.accepted_at(now, RETIRE_AFTER))


def read_published(directory: Path) -> list[PublishedKey]:
    return published_from_json((directory / PUBLISHED_FILE).read_text())


def read_history(directory: Path) -> list[HistoryEntry]:
    """The verified history (HistoryError if its chain is broken)."""
    return verify_history((directory / HISTORY_FILE).read_text())


def _publish(directory: Path, published: list[PublishedKey]) -> None:
    # The trust anchor of every node: public, but written 0644 deliberately,
    # never left to the umask; replaced whole, as nodes read it while it changes.
    replace_file(directory / PUBLISHED_FILE, published_to_json(published), 0o644)


def load_or_create_signing_key(
    directory: Path, keys: KeyProvider, mount: str, *, now: float | None = None
) -> SigningState:
    """The node's signing key (unwrapped through OpenBao) and the keys it verifies with.

    On first use a key is generated, wrapped by Transit and written with its
    published verification key and the first entry of the history. A data dir
    made before the history existed gets one that starts with its signing key
    (which signed every receipt so far).
    """
    ref = KeyRef(mount, SIGNING_KEY_NAME)
    at = int(time.time() if now is None else now)
    with _locked(directory):
        key_file = directory / KEY_FILE
        if key_file.exists():
            signing = _read_key(key_file, ref, keys)
        else:
            signing = SigningKey.generate()
            _write_key(key_file, ref, keys, signing)
        pub_file = directory / PUBLISHED_FILE
        published = read_published(directory) if pub_file.exists() else []
        if all(p.key.kid != signing.kid for p in published):
            published.append(PublishedKey(signing.public(), created_at=at))
            _publish(directory, published)
        if not (directory / HISTORY_FILE).exists():
            replace_file(
                directory / HISTORY_FILE, history_to_json(start_history(signing, at)), 0o644
            )
        history = read_history(directory)
    if signing.kid not in history_keyset(history):
        raise RuntimeError("the token signing key is not in the signing-key history")
    return SigningState(signing, accepted_keys(published, at), history_keyset(history))


def rotate_signing_key(directory: Path, keys: KeyProvider, mount: str, *, now: float) -> Rotation:
    """Replaces the signing key (see the module docstring); resumes an
    interrupted rotation. Needs OpenBao (unwrap the old key, wrap the new)."""
    with _locked(directory):
        return _rotate(directory, keys, mount, now)


def _rotate(directory: Path, keys: KeyProvider, mount: str, now: float) -> Rotation:
    """:func:`rotate_signing_key`, with the directory's lock held."""
    ref = KeyRef(mount, SIGNING_KEY_NAME)
    at = int(now)
    key_file, next_file = directory / KEY_FILE, directory / NEXT_KEY_FILE
    if not key_file.exists():
        raise FileNotFoundError(key_file)
    current = _read_key(key_file, ref, keys)
    if next_file.exists():
        new = _read_key(next_file, ref, keys)  # an interrupted rotation
    else:
        new = SigningKey.generate()
        _write_key(next_file, ref, keys, new)

    retired: list[str] = []
    published: list[PublishedKey] = []
    for p in read_published(directory):
        if p.retired_at is None and p.key.kid != new.kid:
            p = PublishedKey(p.key, p.created_at, at)
            retired.append(p.key.kid)
        published.append(p)
    if all(p.key.kid != new.kid for p in published):
        published.append(PublishedKey(new.public(), created_at=at))
    kept = [p for p in published if p.accepted_at(at, RETIRE_AFTER)]
    removed = tuple(p.key.kid for p in published if p not in kept)
    _publish(directory, kept)

    history = read_history(directory)
    if history[-1].key.kid != new.kid:
        history = append_key(history, current, new.public(), at)
        replace_file(directory / HISTORY_FILE, history_to_json(history), 0o644)
    os.replace(next_file, key_file)
    return Rotation(new.kid, tuple(retired), removed)


def signing_key_age(directory: Path, now: float) -> float | None:
    """How old the signing key is (seconds since it was published); None when
    its publication time is unknown (keys published before it was recorded)."""
    current = [p for p in read_published(directory) if p.retired_at is None]
    if not current or current[-1].created_at is None:
        return None
    return max(0.0, now - current[-1].created_at)


class SigningKeySchedule:
    """Rotates the signing key once it is older than ``period_seconds``
    (``control.signing_key_rotation`` in regions.yaml), from a node that owns
    the key files. Safe on several nodes sharing them: the rotation holds the
    directory's lock, and a second node finds a fresh key. Where the files are
    read-only (mounted from a Secret), the node only says that the key is due.
    """

    def __init__(
        self,
        directory: Path,
        keys: KeyProvider,
        mount: str,
        period_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if period_seconds <= 0:
            raise ValueError("the signing key rotation period must be positive")
        self.directory = directory
        self.period_seconds = period_seconds
        self._keys, self._mount, self._clock = keys, mount, clock

    def due_in(self) -> float:
        """Seconds until the key is due (0 or less: due now)."""
        age = signing_key_age(self.directory, self._clock())
        return 0.0 if age is None else self.period_seconds - age

    def run(self) -> Rotation | None:
        """Rotates if due and the files are writable here; what was done, or None."""
        if self.due_in() > 0:
            return None
        try:
            if not os.access(self.directory, os.W_OK):
                raise PermissionError(errno.EROFS, "read-only")
            with _locked(self.directory):
                if self.due_in() > 0:  # another node rotated meanwhile
                    return None
                # A read-only directory fails at the first file written (the
                # next key), before anything is published.
                done = _rotate(self.directory, self._keys, self._mount, self._clock())
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            log.warning(
                "the signing key is due for rotation (period %d s), but its files are "
                "read-only on this node: run `pdvault token rotate-key` where they are made",
                self.period_seconds,
            )
            return None
        log.info("signing key rotated on schedule: new key %s", done.new_kid)
        return done


class KeyFollower:
    """Keeps a node's signing state in step with the key files.

    A background thread looks at the files every ``interval`` seconds (their
    inode, size and modification time); when one changed, or a retired key's
    time is up, it builds a new :class:`SigningState` and hands it to
    ``on_change``. A file that cannot be read or verified leaves the current
    state in place (logged, retried next time): the time limit on retired keys
    still applies, as it is evaluated on every poll.
    """

    def __init__(
        self,
        directory: Path,
        keys: KeyProvider,
        mount: str,
        state: SigningState,
        on_change: Callable[[SigningState], None],
        *,
        interval: float = FOLLOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dir = directory
        self._ref = KeyRef(mount, SIGNING_KEY_NAME)
        self._keys = keys
        self._state = state
        self._on_change = on_change
        self._interval = interval
        self._clock = clock
        self._seen: tuple[tuple[int, int, int, int] | None, ...] | None = None
        self._published: list[PublishedKey] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> SigningState:
        return self._state

    def _stat(self) -> tuple[tuple[int, int, int, int] | None, ...]:
        out: list[tuple[int, int, int, int] | None] = []
        for name in (KEY_FILE, PUBLISHED_FILE, HISTORY_FILE):
            try:
                st = (self._dir / name).stat()
                out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def refresh(self) -> None:
        """One look at the files (the thread calls it; tests may too)."""
        seen = self._stat()
        state = self._state
        try:
            if seen != self._seen:
                signing = state.signing
                stored_kid = json.loads((self._dir / KEY_FILE).read_text())["kid"]
                if stored_kid != signing.kid:
                    signing = _read_key(self._dir / KEY_FILE, self._ref, self._keys)
                self._published = read_published(self._dir)
                receipts = history_keyset(read_history(self._dir))
                state = SigningState(signing, state.tokens, receipts)
                self._seen = seen
            assert self._published is not None
            tokens = accepted_keys(self._published, self._clock())
        except Exception as e:  # keep what works; the next poll retries
            log.warning("the signing key files cannot be used (%s): keeping the current keys", e)
            return
        if tokens.kids != state.tokens.kids:
            state = SigningState(state.signing, tokens, state.receipts)
        if state != self._state:
            if state.signing != self._state.signing:
                log.info("the token signing key changed: now signing with %s", state.signing.kid)
            self._state = state
            self._on_change(state)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="key-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
