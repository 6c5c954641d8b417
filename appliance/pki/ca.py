"""Certificate authority operations with `cryptography` (see the package docstring for layout)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nacl.signing import SigningKey

from appliance.crypto.keys import (
    KeyFileError,
    load_private_pem,
    write_private_file,
    write_signing_key,
    write_verify_key,
)
from appliance.errors import CommandError
from appliance.pki.trustmap import add_trust_entry

CA_DAYS = 3650
LEAF_DAYS = 825
# A certificate is valid from a little before now: a board whose clock is slightly behind the
# CA's (no RTC on a Pi until NTP runs) must not reject a freshly issued certificate.
BACKDATE = dt.timedelta(hours=1)
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class PkiError(CommandError):
    """A PKI operation was refused; the message says why."""


@dataclass(frozen=True)
class AgentIdentity:
    """Paths of one agent's credentials inside a PKI directory."""

    agent_id: str
    client_cert: Path
    client_key: Path
    signing_key: Path
    verify_key: Path


def validate_agent_id(agent_id: str) -> str:
    """Agent ids become certificate CNs and file names: 1-63 of [A-Za-z0-9._-], no leading dot."""
    if not AGENT_ID_RE.match(agent_id):
        raise PkiError(
            f"agent id {agent_id!r} is invalid: use 1-63 characters of A-Z a-z 0-9 . _ -"
        )
    return agent_id


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "InfraSpectre"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _leaf_builder(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    ca_cert: x509.Certificate,
    usage: x509.ObjectIdentifier,
    days: int,
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )


def _san_entries(names: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in ["localhost", "127.0.0.1", "::1", *names]:
        if name in seen:
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def init_pki(
    directory: Path, sans: list[str], *, force: bool = False, days: int = LEAF_DAYS
) -> None:
    """Create the org CA and the bus server certificate (SANs: localhost, 127.0.0.1, ::1 + sans)."""
    if (directory / "ca.key").exists() and not force:
        raise PkiError(f"{directory} already holds a CA (ca.key); use --force to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    now = dt.datetime.now(dt.UTC)
    ca_name = _name("InfraSpectre Org CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private_file(directory / "ca.key", _pem_key(ca_key))
    _write_cert(directory / "ca.crt", ca_cert)

    server_key = _new_key()
    server_cert = (
        _leaf_builder(
            _name("infraspectre-bus"),
            server_key.public_key(),
            ca_cert,
            ExtendedKeyUsageOID.SERVER_AUTH,
            days,
        )
        .add_extension(x509.SubjectAlternativeName(_san_entries(sans)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private_file(directory / "server.key", _pem_key(server_key))
    _write_cert(directory / "server.crt", server_cert)
    trust_map = directory / "trust_map.yaml"
    if force or not trust_map.exists():
        trust_map.write_text(
            "# agent id -> Ed25519 public key (file path or inline base64)\nagents: {}\n"
        )


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key of a PKI directory (the key file must be 0600)."""
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    except OSError as exc:
        raise PkiError(
            f"no CA in {directory}: {exc.strerror}; run `infraspectre pki init {directory}`"
        ) from exc
    key = load_private_pem(directory / "ca.key")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{directory / 'ca.key'} is not an ECDSA key")
    return cert, key


def _client_cert(
    agent_id: str, public_key: ec.EllipticCurvePublicKey, directory: Path, days: int
) -> x509.Certificate:
    ca_cert, ca_key = load_ca(directory)
    cert = _leaf_builder(
        _name(agent_id), public_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH, days
    ).sign(ca_key, hashes.SHA256())
    # The CA's record of what it signed: a certificate from sign-csr leaves the host on the
    # serial line, so without this copy it could not be revoked by agent id later.
    record = issued_dir(directory, agent_id)
    try:
        record.mkdir(parents=True, exist_ok=True)
        _write_cert(record / f"{cert.serial_number:x}.crt", cert)
    except OSError as exc:
        raise PkiError(f"cannot record the issued certificate in {record}: {exc.strerror}") from exc
    return cert


def issued_dir(directory: Path, agent_id: str) -> Path:
    """Where the CA keeps a copy of every client certificate it signed for agent_id."""
    return directory / "issued" / agent_id


def issue_agent(
    directory: Path, agent_id: str, *, force: bool = False, days: int = LEAF_DAYS
) -> AgentIdentity:
    """Create a host-side agent identity: client certificate, Ed25519 key pair, trust-map entry."""
    validate_agent_id(agent_id)
    agent_dir = directory / "agents" / agent_id
    ident = AgentIdentity(
        agent_id=agent_id,
        client_cert=agent_dir / "client.crt",
        client_key=agent_dir / "client.key",
        signing_key=agent_dir / "ed25519.key",
        verify_key=agent_dir / "ed25519.pub",
    )
    if ident.client_key.exists() and not force:
        raise PkiError(f"agent {agent_id} already exists in {directory}; use --force to replace it")
    tls_key = _new_key()
    cert = _client_cert(agent_id, tls_key.public_key(), directory, days)
    agent_dir.mkdir(parents=True, exist_ok=True)
    write_private_file(ident.client_key, _pem_key(tls_key))
    _write_cert(ident.client_cert, cert)
    signing = SigningKey.generate()
    write_signing_key(ident.signing_key, signing)
    write_verify_key(ident.verify_key, signing.verify_key)
    add_trust_entry(
        directory / "trust_map.yaml", agent_id, str(ident.verify_key.relative_to(directory))
    )
    return ident


def sign_csr(directory: Path, csr_pem: bytes, agent_id: str, *, days: int = LEAF_DAYS) -> bytes:
    """Sign an agent's CSR (generated on the device) as a client certificate with CN=agent_id.

    The CSR's own signature must verify, its key must be ECDSA P-256, and its CN, if it names one,
    must equal agent_id: the CA never signs a name it was not asked for.
    """
    validate_agent_id(agent_id)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise PkiError("the CSR's signature does not verify (corrupted or forged request)")
    public_key = csr.public_key()
    if (
        not isinstance(public_key, ec.EllipticCurvePublicKey)
        or public_key.curve.name != "secp256r1"
    ):
        raise PkiError("the CSR's key must be ECDSA P-256")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns and cns[0].value != agent_id:
        raise PkiError(f"the CSR names CN={cns[0].value!r}, not the agent id {agent_id!r}")
    cert = _client_cert(agent_id, public_key, directory, days)
    return cert.public_bytes(serialization.Encoding.PEM)


__all__ = [
    "AgentIdentity",
    "KeyFileError",
    "PkiError",
    "init_pki",
    "issue_agent",
    "issued_dir",
    "load_ca",
    "sign_csr",
]
