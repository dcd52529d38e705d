"""OpenBao policies of pdvault's roles, read from the HCL files in ``deploy/openbao/policies``.

Those files are the single source: the operator applies them to a production
OpenBao, and the local stack (:mod:`vault.devstack`) applies the same files.
They ship inside the package (``vault/openbao/policies`` is a link to them in
the source tree; a built wheel holds copies).

Each role's policy is templated with :class:`string.Template` placeholders,
rendered by :func:`role_policy`:

``node.hcl``, ``eraser.hcl``, ``rotation.hcl``
    rendered once per Transit mount of the region (``${mount}``) and joined,
    so a region with several mounts gets one block per mount and nothing
    outside them;
``node-control.hcl``
    the node's use of the control mount's token-signing key
    (``${control_mount}``, ``${signing_key}``);
``self.hcl``
    renewing and looking up its own token, added to every role.

Plain substitution rather than OpenBao's templated policies: those key on
identity metadata that an AppRole login does not carry per region, and a
rendered policy reads the same in OpenBao as in review.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from string import Template
from typing import Literal

from vault.config import _MOUNT_RE

Role = Literal["node", "eraser", "rotation"]
ROLES: tuple[Role, ...] = ("node", "eraser", "rotation")


def policy_file(name: str) -> str:
    """The text of ``deploy/openbao/policies/NAME`` as shipped with the package."""
    return resources.files(__package__).joinpath("policies", name).read_text(encoding="utf-8")


def _render(name: str, **values: str) -> str:
    # substitute, not safe_substitute: a placeholder left unfilled is a bug.
    return Template(policy_file(name)).substitute(values)


def role_policy(
    role: Role,
    mounts: Sequence[str],
    *,
    control_mount: str | None = None,
    signing_key: str | None = None,
) -> str:
    """The HCL policy of ``role`` for a region whose Transit mounts are ``mounts``.

    The node's policy also reaches the control mount's signing key, so it
    needs ``control_mount`` and ``signing_key``.
    """
    if not mounts:
        raise ValueError("a policy needs at least one Transit mount")
    names = (*mounts, *(n for n in (control_mount, signing_key) if n is not None))
    for n in names:
        if not _MOUNT_RE.fullmatch(n):  # the name lands in HCL: nothing but a path segment
            raise ValueError(f"not a Transit mount or key name: {n!r}")
    parts = [_render(f"{role}.hcl", mount=m) for m in mounts]
    if role == "node":
        if control_mount is None or signing_key is None:
            raise ValueError("the node's policy needs the control mount and the signing key")
        parts.append(
            _render("node-control.hcl", control_mount=control_mount, signing_key=signing_key)
        )
    parts.append(policy_file("self.hcl"))
    return "\n".join(parts)


__all__ = ["ROLES", "Role", "policy_file", "role_policy"]
