"""TLS and mutual TLS through the real gRPC server, with real certificates.

Every option is tried the way an attacker would: a plaintext client, a client
that trusts another CA, a server certificate that is expired or for another
name, and under mTLS no client certificate, one from another CA, expired, not
yet valid, or a server certificate offered as a client certificate. Each time
the call fails in the handshake (UNAVAILABLE), nothing comes back, and the
servicer never sees the call (no access-log line, the node is not called).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import Bao, Stack, start_stack
from tests.integration.conftest import PdvaultUp
from tests.security._pki import CA, DAY, NOW, SERVER_NAMES, Issued, credentials
from vault.cli import _up, build_parser, main
from vault.client import VaultClient, VaultClientError, channel_credentials
from vault.config import NodeSettings, TlsSettings
from vault.errors import ConfigError
from vault.policy import Caller
from vault.transport import client_identity, is_loopback, local_dial_host, server_credentials

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: CA
    other_ca: CA
    server: TlsSettings
    mutual: TlsSettings
    good_client: Issued
    clients: dict[str, Issued]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = CA("pdvault test CA"), CA("attacker CA")
    cert, key = ca.issue("pdvault node", sans=SERVER_NAMES, server=True).write(d, "server")
    server = TlsSettings(cert, key)
    mutual = TlsSettings(cert, key, client_ca_file=ca.write(d, "client-ca"))
    good = ca.issue("crm-backend", server=False)
    bad = {
        "other CA": other.issue("crm-backend", server=False),
        "expired": ca.issue("crm-backend", server=False, not_after=NOW - DAY),
        "not yet valid": ca.issue("crm-backend", server=False, not_before=NOW + DAY),
        "server certificate": ca.issue("crm-backend", sans=SERVER_NAMES, server=True),
    }
    return Pki(d, ca, other, server, mutual, good, bad)


@pytest.fixture(scope="module")
def tls_stack(bao: Bao, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(
        bao, tmp_path_factory.mktemp("tls"), tls=pki.server, credentials=credentials(pki.ca)
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def mtls_stack(bao: Bao, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(
        bao,
        tmp_path_factory.mktemp("mtls"),
        tls=pki.mutual,
        credentials=credentials(pki.ca, pki.good_client),
        reflection=True,
    )
    yield s
    s.stop()


class Spy:
    """Records the callers of a node method (wrapping it on the instance)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stack: Stack, method: str) -> None:
        self.callers: list[Caller] = []
        real: Callable[..., Any] = getattr(stack.node, method)

        def spy(caller: Caller, *args: Any, **kwargs: Any) -> Any:
            self.callers.append(caller)
            return real(caller, *args, **kwargs)

        monkeypatch.setattr(stack.node, method, spy)


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vault.access"]


def _refused(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> VaultClientError:
    with pytest.raises(VaultClientError) as e:
        fn(*args, **kwargs)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE, e.value
    return e.value


# --- TLS (server certificate) ----------------------------------------------------


def test_tls_round_trip(tls_stack: Stack) -> None:
    c = tls_stack.client()
    s = c.create_subject("DE", lookups={"email": "ada@example.org"})
    r = c.put_record(s.subject_id, "user.name", {"first": "Ada", "last": "Lovelace"})
    assert dict(c.get_record(r.record_id).fields) == {"first": "Ada", "last": "Lovelace"}
    assert c.find_subjects("email", "ada@example.org", region="de") == [s.subject_id]


def test_tls_without_client_certificate_has_no_client_identity(
    tls_stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vault.access")
    spy = Spy(monkeypatch, tls_stack, "get_subject")
    c = tls_stack.client()
    c.get_subject(c.create_subject("US").subject_id)
    assert [x.client_identity for x in spy.callers] == [None]
    assert any(
        "GetSubject OK" in line and "sub=test-service client=-" in line
        for line in _access_lines(caplog)
    )


def test_tls_refuses_a_plaintext_client(tls_stack: Stack) -> None:
    token = tls_stack.issue()
    with VaultClient(tls_stack.target, token=token) as plain:
        _refused(plain.create_subject, "DE")


def test_tls_refuses_a_client_that_trusts_another_ca(tls_stack: Stack, pki: Pki) -> None:
    owner = tls_stack.client()
    s = owner.create_subject("DE")
    rec = owner.put_record(s.subject_id, "user.name", {"first": "Ada"})
    with VaultClient(
        tls_stack.target, token=tls_stack.issue(), credentials=credentials(pki.other_ca)
    ) as c:
        _refused(c.get_record, rec.record_id)


@pytest.mark.parametrize(
    "bad_server",
    [
        pytest.param(
            lambda ca: ca.issue("pdvault node", sans=SERVER_NAMES, server=True, not_after=NOW),
            id="expired",
        ),
        pytest.param(
            lambda ca: ca.issue("pdvault node", sans=("vault.example",), server=True),
            id="another-name",
        ),
    ],
)
def test_tls_client_refuses_a_bad_server_certificate(
    bao: Bao,
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    bad_server: Callable[[CA], Issued],
) -> None:
    """A server (or a man in the middle) with a certificate from the right CA
    that is expired or names another host gets no token and no request."""
    caplog.set_level(logging.DEBUG, logger="vault.access")
    cert, key = bad_server(pki.ca).write(tmp_path / "pki", "server")
    s = start_stack(bao, tmp_path / "node", tls=TlsSettings(cert, key))
    try:
        creds = credentials(pki.ca)
        with VaultClient(s.target, token="v4.public.never-sent", credentials=creds) as c:
            _refused(c.create_subject, "DE")
        assert not _access_lines(caplog)
    finally:
        s.stop()


def test_tls_server_warns_when_its_certificate_has_expired(
    bao: Bao, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = pki.ca.issue("n", sans=SERVER_NAMES, server=True, not_after=NOW).write(
        tmp_path / "pki", "server"
    )
    s = start_stack(bao, tmp_path / "node", tls=TlsSettings(cert, key))
    s.stop()
    assert any(
        "server certificate expired" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
        if r.name == "vault.server"
    )


# --- mutual TLS -------------------------------------------------------------------


def test_mtls_good_client_certificate_is_recorded_beside_the_token_sub(
    mtls_stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vault.access")
    spy = Spy(monkeypatch, mtls_stack, "get_subject")
    c = mtls_stack.client(mtls_stack.issue(service="crm"))
    s = c.create_subject("FR")
    assert c.get_subject(s.subject_id) == s
    [caller] = spy.callers
    assert (caller.service, caller.client_identity) == ("crm", "crm-backend")
    lines = _access_lines(caplog)
    assert any("GetSubject OK" in line and "sub=crm client=crm-backend" in line for line in lines)
    assert any("IssueToken OK" in line and "sub=admin client=crm-backend" in line for line in lines)


def test_mtls_denied_calls_log_the_client_identity_too(
    mtls_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vault.access")
    c = mtls_stack.client(anonymous=True)
    with pytest.raises(VaultClientError) as e:
        c.create_subject("DE")
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert any(
        "CreateSubject UNAUTHENTICATED MISSING_TOKEN" in line and "client=crm-backend" in line
        for line in _access_lines(caplog)
    )


def test_mtls_identity_from_the_san_when_the_certificate_has_no_cn(
    mtls_stack: Stack, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    spiffe = pki.ca.issue(None, sans=("spiffe://pdvault.test/crm",), server=False)
    spy = Spy(monkeypatch, mtls_stack, "get_subject")
    owner = mtls_stack.client()
    sid = owner.create_subject("US").subject_id
    with VaultClient(
        mtls_stack.target, token=mtls_stack.issue(), credentials=credentials(pki.ca, spiffe)
    ) as c:
        c.get_subject(sid)
    assert [x.client_identity for x in spy.callers] == ["spiffe://pdvault.test/crm"]


@pytest.mark.parametrize(
    "certificate", [None, "other CA", "expired", "not yet valid", "server certificate"]
)
def test_mtls_refuses_a_call_without_a_valid_client_certificate(
    mtls_stack: Stack,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    certificate: str | None,
) -> None:
    """A valid purpose token, even the administrator credential, is not enough:
    without a good client certificate the handshake fails and nothing of the
    request reaches the servicer."""
    owner = mtls_stack.client()
    s = owner.create_subject("DE")
    rec = owner.put_record(s.subject_id, "user.name", {"first": "Ada"})
    token = mtls_stack.issue()
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="vault.access")
    spies = [Spy(monkeypatch, mtls_stack, m) for m in ("get_record", "export_subject")]

    client_cert = pki.clients[certificate] if certificate else None
    creds = credentials(pki.ca, client_cert)
    with VaultClient(mtls_stack.target, token=token, credentials=creds) as c:
        _refused(c.get_record, rec.record_id)
        _refused(c.export_subject, s.subject_id)
        _refused(c.exchange_token, operations=["read"])
    with VaultClient(mtls_stack.target, token=mtls_stack.admin, credentials=creds) as admin:
        _refused(
            admin.issue_token,
            service="x",
            purpose="essential.service",
            categories=["user.name"],
            operations=["read"],
        )
    assert _access_lines(caplog) == []
    assert all(spy.callers == [] for spy in spies)


def test_mtls_reflection_needs_a_client_certificate(mtls_stack: Stack, pki: Pki) -> None:
    def services(creds: grpc.ChannelCredentials) -> set[str]:
        with grpc.secure_channel(mtls_stack.target, creds) as ch:
            resp = next(
                reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )
            )
        return {s.name for s in resp.list_services_response.service}

    assert "vault.v1.PersonalDataVault" in services(credentials(pki.ca, pki.good_client))
    with pytest.raises(grpc.RpcError) as e:
        services(credentials(pki.ca))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


# --- where plaintext may be served ------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10", "vault.example"])
def test_plaintext_is_refused_off_loopback(bao: Bao, tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError) as e:
        start_stack(bao, tmp_path, host=host)
    message = str(e.value)
    assert "--tls-cert" in message and "--insecure-local" in message and "loopback" in message


def test_plaintext_on_loopback_is_announced(
    bao: Bao, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    start_stack(bao, tmp_path).stop()
    assert any(
        "INSECURE: local development only, plaintext on loopback" in r.getMessage()
        and r.levelno == logging.WARNING
        for r in caplog.records
    )


def test_tls_may_listen_anywhere(pki: Pki) -> None:
    for host in ("0.0.0.0", "::", "vault.example"):
        settings = NodeSettings(data_dir=Path("."), host=host, tls=pki.mutual)
        assert server_credentials(settings) is not None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("localhost.example", False),
        ("127.0.0.1.nip.io", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_local_clients_dial_localhost_for_every_interface() -> None:
    for every in ("", "0.0.0.0", "::", "[::]"):
        assert local_dial_host(every) == "localhost"
    for host in ("127.0.0.1", "::1", "vault.example", "10.0.0.1"):
        assert local_dial_host(host) == host


def test_tls_files_that_do_not_hold_certificates_are_refused(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    for tls in (
        TlsSettings(junk, pki.server.key_file),
        TlsSettings(tmp_path / "missing.pem", pki.server.key_file),
        TlsSettings(pki.server.cert_file, pki.server.key_file, client_ca_file=junk),
    ):
        with pytest.raises(ConfigError):
            server_credentials(NodeSettings(data_dir=tmp_path, tls=tls))


def test_client_identity_prefers_the_cn() -> None:
    assert client_identity({}) is None
    assert client_identity({"transport_security_type": [b"ssl"]}) is None
    assert client_identity({"x509_common_name": [b""]}) is None
    both = {"x509_common_name": [b"crm"], "x509_subject_alternative_name": [b"a.example"]}
    assert client_identity(both) == "crm"
    assert (
        client_identity({"x509_subject_alternative_name": [b"a.example", b"spiffe://t/x"]})
        == "a.example,spiffe://t/x"
    )


@pytest.mark.parametrize("flags", [(), ("--insecure-local",)])
def test_pdvault_up_refuses_plaintext_off_loopback_before_starting_anything(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    """--insecure-local names the mode; it never makes plaintext off loopback allowed."""
    out = subprocess.run(
        [
            *(sys.executable, "-m", "vault.cli", "up", "--data-dir", str(tmp_path)),
            *("--host", "0.0.0.0", *flags),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "--tls-cert" in out.stderr and "--insecure-local" in out.stderr
    assert not (tmp_path / "openbao").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--tls-client-ca", "ca.pem"), "--tls-client-ca needs --tls-cert and --tls-key"),
        (("--tls-cert", "c.pem"), "go together"),
        (("--tls-key", "k.pem"), "go together"),
        (("--tls-cert", "c.pem", "--tls-key", "k.pem", "--insecure-local"), "exclude each other"),
    ],
)
def test_pdvault_up_tls_flags_that_do_not_make_sense(flags: tuple[str, ...], message: str) -> None:
    args = build_parser().parse_args(["up", *flags])
    with pytest.raises(SystemExit, match=message):
        _up._tls(args)


# --- clients: VaultClient and the CLI -----------------------------------------------


def test_channel_credentials() -> None:
    assert channel_credentials("127.0.0.1:1") == ("127.0.0.1:1", None)
    address, creds = channel_credentials("grpcs://vault.example:443")
    assert address == "vault.example:443" and creds is not None
    assert channel_credentials("127.0.0.1:1", ca=b"pem")[1] is not None
    with pytest.raises(ValueError, match="go together"):
        channel_credentials("127.0.0.1:1", ca=b"pem", cert=b"pem")
    with pytest.raises(ValueError, match="either"):
        VaultClient("127.0.0.1:1", ca=b"pem", credentials=grpc.ssl_channel_credentials())


def test_vault_client_tls_settings(tls_stack: Stack, mtls_stack: Stack, pki: Pki) -> None:
    token = tls_stack.issue()
    for target in (tls_stack.target, "grpcs://" + tls_stack.target):
        with VaultClient(target, token=token, ca=pki.ca.pem) as c:
            assert c.create_subject("SG").region == "sg"
    # grpcs:// alone trusts the system's roots, which never signed the test CA.
    with VaultClient("grpcs://" + tls_stack.target, token=token) as c:
        _refused(c.create_subject, "SG")

    good = pki.good_client
    token = mtls_stack.issue()
    with VaultClient(
        mtls_stack.target, token=token, ca=pki.ca.pem, cert=good.cert, key=good.key
    ) as c:
        assert c.create_subject("SG").region == "sg"
    with VaultClient(mtls_stack.target, token=token, ca=pki.ca.pem) as c:
        _refused(c.create_subject, "SG")


def _cli(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def test_cli_token_and_export_over_mtls(
    mtls_stack: Stack,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = pki.good_client.write(tmp_path, "client")
    ca = pki.ca.write(tmp_path, "ca")
    target = "grpcs://" + mtls_stack.target
    issue = (
        "token", "issue", "--data-dir", str(mtls_stack.data_dir), "--target", target,
        "--purpose", "essential.subject_rights", "--categories", "user.name",
        "--ops", "read,write,export",
    )  # fmt: skip
    assert _cli(*issue, "--ca", str(ca), "--cert", str(cert), "--key", str(key)) == 0
    token = capsys.readouterr().out.strip()
    owner = mtls_stack.client(token)
    sid = owner.create_subject("DE").subject_id
    owner.put_record(sid, "user.name", {"first": "Ada"})

    # The same from the environment, as a script would.
    monkeypatch.setenv("PDVAULT_CA", str(ca))
    monkeypatch.setenv("PDVAULT_CERT", str(cert))
    monkeypatch.setenv("PDVAULT_KEY", str(key))
    out = tmp_path / "ada.json"
    export = ("export", sid, "-o", str(out), "--target", target, "--token", token)
    assert _cli(*export) == 0
    assert "Ada" in out.read_text()

    # Without the client certificate: refused, nothing written, no token printed.
    monkeypatch.delenv("PDVAULT_CERT")
    monkeypatch.delenv("PDVAULT_KEY")
    out.unlink()
    capsys.readouterr()
    assert _cli(*export) == 1
    assert not out.exists()
    assert _cli(*issue) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "UNAVAILABLE" in captured.err and "--cert" in captured.err
    assert _cli(*issue, "--cert", str(cert)) != 0  # a certificate without its key


@pytest.mark.slow
def test_pdvault_up_with_mtls_and_the_cli_end_to_end(pki: Pki, tmp_path: Path) -> None:
    """`pdvault up --tls-cert --tls-key --tls-client-ca` as a user runs it; the
    CLI finds grpcs:// in the data dir's endpoint and takes --ca/--cert/--key."""
    cert, key = pki.good_client.write(tmp_path / "pki", "client")
    ca = pki.ca.write(tmp_path / "pki", "ca")
    data_dir = tmp_path / "pdv"
    up = PdvaultUp(
        data_dir,
        tmp_path / "up.log",
        *("--tls-cert", str(pki.mutual.cert_file), "--tls-key", str(pki.mutual.key_file)),
        *("--tls-client-ca", str(pki.mutual.client_ca_file)),
    )
    try:
        banner = up.output
        assert up.target.startswith("grpcs://127.0.0.1:")
        assert "mutual TLS" in banner and "INSECURE" not in banner
        assert (data_dir / "endpoint").read_text().strip() == up.target
        tls = ("--ca", str(ca), "--cert", str(cert), "--key", str(key))
        token = up.token(
            *tls,
            *("--purpose", "essential.service", "--categories", "user.name", "--ops", "read,write"),
        )
        with VaultClient(
            up.target, token=token, ca=ca.read_bytes(), cert=cert.read_bytes(), key=key.read_bytes()
        ) as c:
            assert c.create_subject("DE").region == "de"
        # A plaintext client, and a TLS client without a certificate: nothing.
        with VaultClient(up.target.removeprefix("grpcs://"), token=token) as c:
            _refused(c.create_subject, "DE")
        with VaultClient(up.target, token=token, ca=ca.read_bytes()) as c:
            _refused(c.create_subject, "DE")
        demo = subprocess.run(
            [sys.executable, "-m", "vault.cli", "demo", "--data-dir", str(data_dir), *tls],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "verified offline" in demo.stdout
    finally:
        assert up.stop() == 0
