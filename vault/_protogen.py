"""Regenerates the Python code for ``proto/vault/v1/*.proto``.

The generated modules live in ``vault/v1/`` and are committed; a test
regenerates them into a temporary directory and fails when they differ, so the
code can never drift from the contract. Run ``make proto`` after editing a
``.proto`` file.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / "vault" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Runs protoc (from grpcio-tools) for every API file into ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_DIR)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    generate(ROOT)
    print(f"generated code for {len(proto_files())} proto file(s) into vault/v1/", file=sys.stderr)


if __name__ == "__main__":
    main()
