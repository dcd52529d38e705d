"""The OpenBao policies of deploy/openbao/policies, applied to a real OpenBao.

Each role logs in with AppRole (as a node does) and is shown what it may do
and, for everything else a stolen credential would want — another region's
mount, key material, export, backup, reconfiguration, deletion — a 403 from
OpenBao itself. Every refusal has a counterpart that succeeds for the role
(or the root token) that is meant to do it, so a refusal for any other reason
(a wrong path) would not pass for least privilege.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import hvac
import hvac.exceptions
import pytest

from tests.conftest import Bao
from vault.config import load_regions
from vault.devstack import Credentials
from vault.errors import DecryptionFailed, KeyServiceUnavailable
from vault.keys import AppRole, AppRoleLogin, KeyRef, TransitKeyProvider, TransitKeyShredder

pytestmark = pytest.mark.integration

AD = b"associated"


@dataclass
class Roles:
    bao: Bao
    creds: dict[str, Credentials]

    def client(self, region: str, role: str) -> hvac.Client:
        """An hvac client logged in (AppRole) as ``role`` of ``region``."""
        cred: AppRole = getattr(self.creds[region], role)
        return hvac.Client(url=self.bao.address, token=self.bao.server.login(cred), timeout=10)


@pytest.fixture(scope="module")
def roles(bao: Bao) -> Iterator[Roles]:
    regions = load_regions(data_dir="/nonexistent", openbao_addr=bao.address)
    yield Roles(bao, bao.server.configure_per_region(regions))


def _key(root: hvac.Client, mount: str = "transit-de", **extra: Any) -> str:
    name = f"subject-test-{uuid.uuid4().hex}"
    root.secrets.transit.create_key(name=name, mount_point=mount, **extra)
    return name


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _forbidden(call: Callable[[], object]) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        call()


def test_a_node_uses_its_own_mount_and_the_signing_key_only(roles: Roles) -> None:
    node = roles.client("de", "node")
    keys = TransitKeyProvider(node)
    ref = KeyRef("transit-de", f"subject-test-{uuid.uuid4().hex}")
    keys.create_key(ref)
    keys.create_key(ref)  # repeated after a crash: still allowed
    assert keys.unwrap(ref, keys.wrap(ref, b"k" * 32, AD), AD) == b"k" * 32
    signing = KeyRef("transit-control", "token-signing")
    assert keys.unwrap(signing, keys.wrap(signing, b"s" * 32, AD), AD) == b"s" * 32

    root = roles.bao.root()
    for other in ("transit-us", "transit-ru", "transit-cn", "transit-sg"):
        theirs = _key(root, other)
        _forbidden(lambda m=other: node.secrets.transit.create_key(name="x", mount_point=m))
        _forbidden(
            lambda m=other, k=theirs: node.secrets.transit.encrypt_data(
                name=k, plaintext=_b64(b"k"), mount_point=m
            )
        )
        wrapped = root.secrets.transit.encrypt_data(
            name=theirs, plaintext=_b64(b"k"), mount_point=other
        )["data"]["ciphertext"]
        _forbidden(
            lambda m=other, k=theirs, w=wrapped: node.secrets.transit.decrypt_data(
                name=k, ciphertext=w, mount_point=m
            )
        )
        # Through the vault's adapter a refusal is the key service being unavailable.
        with pytest.raises(KeyServiceUnavailable, match="permission"):
            keys.create_key(KeyRef(other, theirs))
    # Another key of the control mount than the signing key's.
    other_control = _key(root, "transit-control")
    _forbidden(
        lambda: node.secrets.transit.encrypt_data(
            name=other_control, plaintext=_b64(b"k"), mount_point="transit-control"
        )
    )


def test_a_node_cannot_read_export_back_up_reconfigure_rotate_or_delete_keys(
    roles: Roles,
) -> None:
    node = roles.client("de", "node")
    root = roles.bao.root()
    name = _key(root, exportable=True, allow_plaintext_backup=True)
    t = node.secrets.transit
    refused: dict[str, Callable[[], object]] = {
        "read key": lambda: t.read_key(name=name, mount_point="transit-de"),
        "list keys": lambda: t.list_keys(mount_point="transit-de"),
        "export": lambda: t.export_key(
            name=name, key_type="encryption-key", mount_point="transit-de"
        ),
        "backup": lambda: t.backup_key(name=name, mount_point="transit-de"),
        "restore": lambda: t.restore_key(backup="AAAA", name="x", mount_point="transit-de"),
        "config": lambda: t.update_key_configuration(
            name=name, deletion_allowed=True, mount_point="transit-de"
        ),
        "rotate": lambda: t.rotate_key(name=name, mount_point="transit-de"),
        "trim": lambda: t.trim_key(name=name, min_version=1, mount_point="transit-de"),
        "delete": lambda: t.delete_key(name=name, mount_point="transit-de"),
        "rewrap": lambda: t.rewrap_data(
            name=name, ciphertext="vault:v1:x", mount_point="transit-de"
        ),
        "datakey": lambda: t.generate_data_key(
            name=name, key_type="plaintext", mount_point="transit-de"
        ),
        "hmac": lambda: t.generate_hmac(name=name, hash_input=_b64(b"x"), mount_point="transit-de"),
        "an exportable key": lambda: t.create_key(
            name=f"subject-test-{uuid.uuid4().hex}", exportable=True, mount_point="transit-de"
        ),
        "a plaintext-backup key": lambda: t.create_key(
            name=f"subject-test-{uuid.uuid4().hex}",
            allow_plaintext_backup=True,
            mount_point="transit-de",
        ),
        "another key type": lambda: t.create_key(
            name=f"subject-test-{uuid.uuid4().hex}", key_type="rsa-2048", mount_point="transit-de"
        ),
        "mount engines": lambda: node.sys.enable_secrets_engine("transit", path="transit-evil"),
        "write policies": lambda: node.sys.create_or_update_policy("evil", 'path "*" {}'),
        "issue tokens": lambda: node.auth.token.create(policies=["pdvault-eraser-de"]),
        "read its role": lambda: node.auth.approle.read_role_id("pdvault-eraser-de"),
    }
    for what, call in refused.items():
        with pytest.raises(hvac.exceptions.Forbidden):
            call()
            pytest.fail(f"the node could {what}")
    # The same export works for the root token: the key is exportable, so the
    # refusal above is the policy's, not the key's.
    assert root.secrets.transit.export_key(
        name=name, key_type="encryption-key", mount_point="transit-de"
    )["data"]["keys"]
    # The key survived every attempt.
    assert root.secrets.transit.read_key(name=name, mount_point="transit-de")["data"]["name"]


def test_only_the_eraser_deletes_keys_and_only_on_its_own_mount(roles: Roles) -> None:
    root = roles.bao.root()
    eraser = roles.client("de", "eraser")
    name = _key(root)
    ref = KeyRef("transit-de", name)
    wrapped = root.secrets.transit.encrypt_data(
        name=name, plaintext=_b64(b"k" * 32), associated_data=_b64(AD), mount_point="transit-de"
    )["data"]["ciphertext"]

    # The eraser cannot use keys, create them, or make one exportable.
    t = eraser.secrets.transit
    _forbidden(lambda: t.encrypt_data(name=name, plaintext=_b64(b"k"), mount_point="transit-de"))
    _forbidden(lambda: t.create_key(name="x", mount_point="transit-de"))
    _forbidden(
        lambda: t.update_key_configuration(name=name, exportable=True, mount_point="transit-de")
    )
    _forbidden(lambda: t.export_key(name=name, key_type="encryption-key", mount_point="transit-de"))
    theirs = _key(root, "transit-us")
    _forbidden(lambda: t.delete_key(name=theirs, mount_point="transit-us"))
    _forbidden(
        lambda: t.update_key_configuration(
            name=theirs, deletion_allowed=True, mount_point="transit-us"
        )
    )

    shredder = TransitKeyShredder(eraser)
    assert shredder.destroy(ref) == (1,)
    assert shredder.versions(ref) == ()
    assert "encryption key not found" in shredder.prove_destroyed(ref, wrapped, AD)
    # The other region's key is untouched.
    assert root.secrets.transit.read_key(name=theirs, mount_point="transit-us")["data"]["keys"]


def test_the_rotation_role_rotates_and_rewraps_but_cannot_delete_or_export(
    roles: Roles,
) -> None:
    root = roles.bao.root()
    rot = roles.client("de", "rotation")
    name = _key(root)
    ad = _b64(b"subject|de")
    wrapped = root.secrets.transit.encrypt_data(
        name=name, plaintext=_b64(b"k" * 32), associated_data=ad, mount_point="transit-de"
    )["data"]["ciphertext"]
    t = rot.secrets.transit
    assert name in t.list_keys(mount_point="transit-de")["data"]["keys"]
    t.rotate_key(name=name, mount_point="transit-de")
    # Re-wrap a legacy (non-derived) key's wrap as the rotation job does it:
    # Transit's rewrap takes no associated data, so it is a decrypt and an
    # encrypt under the newest version.
    dek = t.decrypt_data(
        name=name, ciphertext=wrapped, associated_data=ad, mount_point="transit-de"
    )["data"]["plaintext"]
    rewrapped = t.encrypt_data(
        name=name, plaintext=dek, associated_data=ad, mount_point="transit-de"
    )["data"]["ciphertext"]
    assert rewrapped.startswith("vault:v2:")
    # Allowed, but of no use for a wrap bound by associated data: rewrap opens
    # it without the associated data, and authentication fails.
    with pytest.raises(hvac.exceptions.InvalidRequest, match="authentication failed"):
        t.rewrap_data(name=name, ciphertext=wrapped, mount_point="transit-de")
    t.rotate_key(name=name, mount_point="transit-de")
    t.update_key_configuration(
        name=name, min_decryption_version=2, min_encryption_version=3, mount_point="transit-de"
    )
    t.trim_key(name=name, min_version=2, mount_point="transit-de")
    assert sorted(t.read_key(name=name, mount_point="transit-de")["data"]["keys"]) == ["2", "3"]

    _forbidden(
        lambda: t.update_key_configuration(
            name=name, deletion_allowed=True, mount_point="transit-de"
        )
    )
    _forbidden(
        lambda: t.update_key_configuration(name=name, exportable=True, mount_point="transit-de")
    )
    _forbidden(
        lambda: t.update_key_configuration(
            name=name, allow_plaintext_backup=True, mount_point="transit-de"
        )
    )
    _forbidden(lambda: t.delete_key(name=name, mount_point="transit-de"))
    _forbidden(lambda: t.export_key(name=name, key_type="encryption-key", mount_point="transit-de"))
    _forbidden(lambda: t.backup_key(name=name, mount_point="transit-de"))
    _forbidden(lambda: t.rotate_key(name=_key(root, "transit-us"), mount_point="transit-us"))
    _forbidden(
        lambda: t.decrypt_data(
            name=_key(root, "transit-us"), ciphertext=wrapped, mount_point="transit-us"
        )
    )
    # The root token reads the re-wrapped value: the rotation did not lose it.
    assert root.secrets.transit.decrypt_data(
        name=name, ciphertext=rewrapped, associated_data=ad, mount_point="transit-de"
    )["data"]["plaintext"] == _b64(b"k" * 32)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_approle_login_renews_then_logs_in_again_as_its_token_ages(roles: Roles) -> None:
    client = hvac.Client(url=roles.bao.address, timeout=10)
    clock = FakeClock()
    login = AppRoleLogin(client, roles.creds["de"].node, clock)
    keys = TransitKeyProvider(client, login)
    ref = KeyRef("transit-de", f"subject-test-{uuid.uuid4().hex}")
    keys.create_key(ref)
    first = client.token
    assert first and login.logins == 1
    ttl = client.auth.token.lookup_self()["data"]["ttl"]
    assert 0 < ttl <= 3600  # short-lived, never the root token's unlimited TTL
    assert client.auth.token.lookup_self()["data"]["policies"] == ["pdvault-node-de"]

    keys.wrap(ref, b"k" * 32, AD)
    assert (login.logins, login.renewals) == (1, 0)  # young token: nothing to do
    clock.now += ttl  # past two thirds of its TTL: renewed, the same token
    keys.wrap(ref, b"k" * 32, AD)
    assert (login.logins, login.renewals, client.token) == (1, 1, first)

    # Revoked behind its back (or expired unseen): the renewal fails, it logs in again.
    roles.bao.root().auth.token.revoke(first)
    clock.now += ttl
    keys.wrap(ref, b"k" * 32, AD)
    assert login.logins == 2 and client.token != first


def test_a_wrong_secret_id_fails_closed(roles: Roles) -> None:
    role = roles.creds["de"].node
    keys = TransitKeyProvider.connect(
        roles.bao.address, AppRole(role.role_id, "not-the-secret-id", role.mount)
    )
    with pytest.raises(KeyServiceUnavailable) as e:
        keys.create_key(KeyRef("transit-de", "subject-test-x"))
    assert "not-the-secret-id" not in str(e.value)
    assert role.secret_id not in repr(role)


def _derived_wrap(root: hvac.Client, context: bytes) -> tuple[str, str]:
    """A derived key made by the root token, and a data key wrapped under it with ``context``."""
    name = _key(root, derived=True)
    wrapped = root.secrets.transit.encrypt_data(
        name=name, plaintext=_b64(b"k" * 32), context=_b64(context), mount_point="transit-de"
    )["data"]["ciphertext"]
    return name, wrapped


def test_a_node_creates_derived_subject_keys_but_never_rewraps_or_widens_them(
    roles: Roles,
) -> None:
    node = roles.client("de", "node")
    root = roles.bao.root()
    keys = TransitKeyProvider(node)
    ref = KeyRef("transit-de", f"subject-test-{uuid.uuid4().hex}", derived=True)
    keys.create_key(ref)
    keys.create_key(ref)  # repeated after a crash: still allowed
    made = root.secrets.transit.read_key(name=ref.name, mount_point="transit-de")["data"]
    assert made["derived"] and made["type"] == "aes256-gcm96" and not made["convergent_encryption"]
    assert not made["exportable"] and not made["allow_plaintext_backup"]
    wrapped = keys.wrap(ref, b"k" * 32, AD)
    assert keys.unwrap(ref, wrapped, AD) == b"k" * 32
    with pytest.raises(DecryptionFailed):  # another subject's binding
        keys.unwrap(ref, wrapped, b"another subject")

    t = node.secrets.transit
    root.secrets.transit.rotate_key(name=ref.name, mount_point="transit-de")
    # Only the rotation role re-wraps; the node's 403 comes before the key is looked at.
    _forbidden(
        lambda: t.rewrap_data(
            name=ref.name, ciphertext=wrapped, context=_b64(AD), mount_point="transit-de"
        )
    )
    # The derived switch does not open the other parameters.
    for extra in (
        {"derived": True, "convergent_encryption": True},
        {"derived": True, "exportable": True},
        {"derived": True, "allow_plaintext_backup": True},
        {"derived": True, "key_type": "chacha20-poly1305"},
    ):
        name = f"subject-test-{uuid.uuid4().hex}"
        _forbidden(lambda n=name, e=extra: t.create_key(name=n, mount_point="transit-de", **e))
        with pytest.raises(hvac.exceptions.InvalidPath):  # nothing was made
            root.secrets.transit.read_key(name=name, mount_point="transit-de")
    _forbidden(lambda: t.create_key(name="x", derived=True, mount_point="transit-us"))


def test_the_rotation_role_rewraps_a_derived_key_inside_openbao(roles: Roles) -> None:
    root = roles.bao.root()
    rot = roles.client("de", "rotation")
    ctx = b"subject|de"
    name, wrapped = _derived_wrap(root, ctx)
    t = rot.secrets.transit
    t.rotate_key(name=name, mount_point="transit-de")
    rewrapped = t.rewrap_data(
        name=name, ciphertext=wrapped, context=_b64(ctx), mount_point="transit-de"
    )["data"]["ciphertext"]
    assert rewrapped.startswith("vault:v2:")
    assert "plaintext" not in str(rewrapped)
    # Another context does not re-wrap it (the binding holds inside rewrap too).
    with pytest.raises(hvac.exceptions.InvalidRequest, match="authentication failed"):
        t.rewrap_data(
            name=name, ciphertext=wrapped, context=_b64(b"other|de"), mount_point="transit-de"
        )
    # The re-wrapped data key is the same, and opens only with its context.
    opened = root.secrets.transit.decrypt_data(
        name=name, ciphertext=rewrapped, context=_b64(ctx), mount_point="transit-de"
    )["data"]["plaintext"]
    assert opened == _b64(b"k" * 32)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root.secrets.transit.decrypt_data(
            name=name, ciphertext=rewrapped, context=_b64(b"other|de"), mount_point="transit-de"
        )
    # Not on another region's mount.
    theirs = _key(root, "transit-us", derived=True)
    _forbidden(
        lambda: t.rewrap_data(
            name=theirs, ciphertext=wrapped, context=_b64(ctx), mount_point="transit-us"
        )
    )
