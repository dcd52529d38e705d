"""The gRPC transport: TLS, mutual TLS, and where plaintext is allowed.

A node serves one of:

- **TLS** (:class:`~vault.config.TlsSettings` with a certificate and key): the
  connection is encrypted and the client can check it talks to the vault.
- **mutual TLS** (TLS plus a client CA): the handshake also requires a client
  certificate signed by that CA. A connection without one, or with one that
  does not verify (other CA, expired, not yet valid), is refused during the
  handshake: no RPC reaches the servicer, no token is even read. The
  certificate's identity (:func:`client_identity`) is recorded on the caller
  and in the access log, beside the token's ``sub``.
- **plaintext** (``--insecure-local``): for local development only, and only on
  a loopback address. Anything else without TLS is refused
  (:func:`server_credentials`), because purpose tokens, the administrator
  credential and personal data would cross the network in clear.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
from cryptography import x509

from vault.config import NodeSettings, TlsSettings
from vault.errors import ConfigError, ConfigProblem

INSECURE_LOCAL = "--insecure-local"
TLS_FLAGS = "--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]"
#: The longest client identity kept; a certificate name is not a document.
MAX_IDENTITY = 256


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, 127.0.0.0/8, ``::1``).

    Other names are not resolved: a name could point anywhere, so it counts as
    not loopback. The empty host and ``0.0.0.0``/``::`` mean every interface.
    """
    h = host.strip().removeprefix("[").removesuffix("]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def local_dial_host(host: str) -> str:
    """What a client on this machine dials for a node listening on ``host``:
    ``localhost`` for every interface (the empty host, ``0.0.0.0``, ``::``)."""
    h = host.strip().removeprefix("[").removesuffix("]")
    try:
        unspecified = not h or ipaddress.ip_address(h).is_unspecified
    except ValueError:
        unspecified = False
    return "localhost" if unspecified else host


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(
            "TLS settings", [ConfigProblem(f"{flag} {path}", f"cannot be read ({e.strerror})")]
        ) from None


def _certificates(pem: bytes, path: Path, flag: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(
            "TLS settings", [ConfigProblem(f"{flag} {path}", "holds no PEM certificate")]
        )
    return certs


def server_credentials(settings: NodeSettings) -> grpc.ServerCredentials | None:
    """The credentials to listen with: TLS/mTLS, or ``None`` for plaintext on loopback.

    Raises :class:`ConfigError` for plaintext on any other address, and for
    TLS files that cannot be read or hold no certificate.
    """
    tls = settings.tls
    if tls is None:
        if not is_loopback(settings.host):
            raise ConfigError(
                "the listen address",
                [
                    ConfigProblem(
                        f"host {settings.host or '(every interface)'}",
                        f"plaintext gRPC ({INSECURE_LOCAL}) is served only on a loopback "
                        "address; to listen here, serve TLS: "
                        f"pdvault up {TLS_FLAGS} (NodeSettings.tls)",
                    )
                ],
            )
        return None
    return _tls_credentials(tls)


def _tls_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    chain = _read(tls.cert_file, "--tls-cert")
    _certificates(chain, tls.cert_file, "--tls-cert")
    key = _read(tls.key_file, "--tls-key")
    client_ca: bytes | None = None
    if tls.client_ca_file is not None:
        client_ca = _read(tls.client_ca_file, "--tls-client-ca")
        _certificates(client_ca, tls.client_ca_file, "--tls-client-ca")
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def certificate_problem(tls: TlsSettings, now: datetime.datetime | None = None) -> str | None:
    """Why the server certificate will be refused by clients right now, if it will
    (expired, not yet valid); ``None`` when its validity period holds ``now``."""
    cert = _certificates(_read(tls.cert_file, "--tls-cert"), tls.cert_file, "--tls-cert")[0]
    now = now or datetime.datetime.now(datetime.UTC)
    if now >= cert.not_valid_after_utc:
        return f"the server certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if now < cert.not_valid_before_utc:
        return (
            "the server certificate is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    return None


def client_identity(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """Who the verified client certificate says the caller is (mutual TLS).

    Its subject common name; for a certificate without one, its subject
    alternative names (DNS, URI such as a SPIFFE id, e-mail, IP), comma
    separated. ``None`` without a client certificate (plaintext, or TLS
    without client authentication). gRPC puts only a certificate that
    verified against the client CA into the auth context.
    """
    names = [n for n in auth_context.get("x509_common_name") or () if n] or [
        n for n in auth_context.get("x509_subject_alternative_name") or () if n
    ]
    if not names:
        return None
    identity = ",".join(n.decode("utf-8", "replace") for n in names)
    return identity[:MAX_IDENTITY]


def log_safe(identity: str | None) -> str:
    """``identity`` for one access-log field: printable ASCII without spaces, or ``-``."""
    if not identity:
        return "-"
    return "".join(c if "!" <= c <= "~" else "_" for c in identity)
