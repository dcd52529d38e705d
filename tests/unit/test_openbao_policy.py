"""The role policies rendered from deploy/openbao/policies (vault.openbao)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vault.openbao import ROLES, policy_file, role_policy

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "openbao" / "policies"


def test_the_package_reads_the_deploy_files_themselves() -> None:
    files = sorted(p.name for p in DEPLOY.glob("*.hcl"))
    assert files == ["eraser.hcl", "node-control.hcl", "node.hcl", "rotation.hcl", "self.hcl"]
    for name in files:
        assert policy_file(name) == (DEPLOY / name).read_text()


def _paths(hcl: str) -> list[str]:
    return re.findall(r'^path "([^"]+)"', hcl, re.MULTILINE)


@pytest.mark.parametrize("role", ROLES)
def test_a_policy_reaches_exactly_the_regions_mounts(role: str) -> None:
    hcl = role_policy(
        role,  # type: ignore[arg-type]
        ["transit-de", "transit-de-2"],
        control_mount="transit-control",
        signing_key="token-signing",
    )
    assert "${" not in hcl and "$" not in hcl
    mounts = {p.split("/")[0] for p in _paths(hcl)}
    expected = {"transit-de", "transit-de-2", "auth"}
    assert mounts == (expected | {"transit-control"} if role == "node" else expected)
    # Every path of the first mount is there for the second one too.
    first = sorted(
        p.removeprefix("transit-de/") for p in _paths(hcl) if p.startswith("transit-de/")
    )
    second = sorted(
        p.removeprefix("transit-de-2/") for p in _paths(hcl) if p.startswith("transit-de-2/")
    )
    assert first == second and first


def test_the_node_reaches_only_the_signing_and_audit_keys_of_the_control_mount() -> None:
    hcl = role_policy(
        "node", ["transit-de"], control_mount="transit-control", signing_key="token-signing"
    )
    control = [p for p in _paths(hcl) if p.startswith("transit-control/")]
    assert control == [
        "transit-control/encrypt/token-signing",
        "transit-control/decrypt/token-signing",
        "transit-control/sign/pdvault-audit",
        "transit-control/keys/pdvault-audit",
    ]
    with pytest.raises(ValueError, match="control mount"):
        role_policy("node", ["transit-de"])


def test_no_role_reaches_export_backup_or_restore() -> None:
    for role in ROLES:
        hcl = role_policy(role, ["transit-de"], control_mount="c", signing_key="k")
        for path in _paths(hcl):
            assert not re.search(r"/(export|backup|restore|random|hash|hmac)(/|$)", path), path
            assert "*" not in path, path


@pytest.mark.parametrize(
    "mount", ["", 'transit-de" {}\npath "*', "transit de", "transit/+", "transit-*", "../sys"]
)
def test_a_mount_name_that_is_not_a_plain_path_is_refused(mount: str) -> None:
    with pytest.raises(ValueError):
        role_policy("eraser", [mount])
    with pytest.raises(ValueError):
        role_policy("node", ["transit-de"], control_mount="c", signing_key=mount or "x y")


def test_a_policy_needs_a_mount() -> None:
    with pytest.raises(ValueError, match="at least one"):
        role_policy("rotation", [])


def test_only_the_rotation_role_rewraps_and_the_node_may_only_add_derivation() -> None:
    for role in ROLES:
        hcl = role_policy(role, ["transit-de"], control_mount="c", signing_key="k")
        rewraps = [p for p in _paths(hcl) if "/rewrap/" in p]
        assert rewraps == (["transit-de/rewrap/+"] if role == "rotation" else []), role
    node = role_policy("node", ["transit-de"], control_mount="c", signing_key="k")
    params = dict(re.findall(r'^\s*"(\w+)"\s*=\s*(\[[^]]*\])', node, re.MULTILINE))
    assert params == {
        "type": '["aes256-gcm96"]',
        "derived": "[true]",
        "exportable": "[false]",
        "allow_plaintext_backup": "[false]",
    }
