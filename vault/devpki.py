"""Development certificates for the local five-region topology (``pdvault up
--regions-mode five``), made with ``cryptography``.

``DATA_DIR/pki/`` (0700) holds, all PEM, keys 0600:

- ``ca.pem`` / ``ca-key.pem``: a local CA (P-256, 90 days) that every node
  trusts for server and client certificates;
- ``node-R.pem`` / ``node-R-key.pem``: region R's server certificate
  (``localhost``, ``127.0.0.1``);
- ``peer-R.pem`` / ``peer-R-key.pem``: the client certificate R's node
  presents when it forwards a call; its CN is R's ``node_identity``, which is
  what makes a call count as entering by R (the transfer rules key on it);
- ``client.pem`` / ``client-key.pem``: a client certificate for local callers
  (``pdvault token``, ``export``, ``demo``, scripts), CN ``pdvault-local-client``:
  not a node identity, so a caller enters at the node it connects to.

The files are kept across restarts and made again, all of them, when one is
missing or a certificate expires within a week. Local development only: the
CA key sits next to the certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vault.datadir import write_file

LOCAL_CLIENT_IDENTITY = "pdvault-local-client"
SERVER_NAMES = ("localhost", "127.0.0.1")
_LIFETIME = dt.timedelta(days=90)
_RENEW_BEFORE = dt.timedelta(days=7)


@dataclass(frozen=True)
class Pki:
    """Where the files of a ``pki/`` directory are."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca-key.pem"

    def server(self, region: str) -> tuple[Path, Path]:
        return self.dir / f"node-{region}.pem", self.dir / f"node-{region}-key.pem"

    def peer(self, region: str) -> tuple[Path, Path]:
        return self.dir / f"peer-{region}.pem", self.dir / f"peer-{region}-key.pem"

    @property
    def client(self) -> tuple[Path, Path]:
        return self.dir / "client.pem", self.dir / "client-key.pem"

    def files(self, regions: list[str]) -> list[Path]:
        out = [self.ca, self.ca_key, *self.client]
        for r in regions:
            out += [*self.server(r), *self.peer(r)]
        return out


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _fresh(path: Path, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return bool(cert.not_valid_after_utc - _RENEW_BEFORE > now)


def ensure_local_pki(directory: Path, node_identities: dict[str, str]) -> Pki:
    """The CA and certificates of ``node_identities`` (region -> identity) in
    ``directory``; made (again) unless every file is there and fresh."""
    pki = Pki(directory)
    now = dt.datetime.now(dt.UTC)
    regions = sorted(node_identities)
    certs = [p for p in pki.files(regions) if not p.name.endswith("-key.pem")]
    if all(p.exists() for p in pki.files(regions)) and all(_fresh(p, now) for p in certs):
        return pki
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    ca_key = _key()
    ca_name = _name("pdvault local development CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, *, server: bool, files: tuple[Path, Path]) -> None:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            names: list[x509.GeneralName] = [x509.DNSName("localhost")]
            names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        write_file(files[1], _key_pem(key), 0o600)
        write_file(files[0], _cert_pem(cert), 0o644)

    write_file(pki.ca_key, _key_pem(ca_key), 0o600)
    write_file(pki.ca, _cert_pem(ca), 0o644)
    for region, identity in node_identities.items():
        leaf(f"pdvault-node-{region}.local", server=True, files=pki.server(region))
        leaf(identity, server=False, files=pki.peer(region))
    leaf(LOCAL_CLIENT_IDENTITY, server=False, files=pki.client)
    return pki
