"""The committed generated code must be exactly what protoc makes of proto/ today."""

from pathlib import Path

from vault import _protogen


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    _protogen.generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in (tmp_path / "vault" / "v1").glob("*_pb2*"))
    assert generated, "protoc produced nothing"
    committed = _protogen.ROOT
    stale = [
        str(rel)
        for rel in generated
        if not (committed / rel).exists()
        or (committed / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    assert stale == [], f"generated code is out of date, run `make proto`: {stale}"
    extra = {p.name for p in (committed / "vault" / "v1").glob("*_pb2*")} - {
        p.name for p in generated
    }
    assert extra == set(), f"generated files without a .proto: {extra}"
