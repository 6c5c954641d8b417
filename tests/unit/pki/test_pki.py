"""The PKI directory: CA, server certificate, agent identities, CSR signing, trust map."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nacl.signing import SigningKey

from appliance.cli import main
from appliance.pki import PkiError, init_pki, issue_agent, load_trust_map, sign_csr


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_creates_ca_and_server_cert_with_sans(tmp_path: Path) -> None:
    init_pki(tmp_path, ["bus.example.net", "192.0.2.10"])
    ca, server = _cert(tmp_path / "ca.crt"), _cert(tmp_path / "server.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "bus.example.net" in sans.get_values_for_type(x509.DNSName)
    assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "192.0.2.10"}
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(PkiError, match="already holds a CA"):
        init_pki(tmp_path, [])


def test_issue_agent_writes_client_cert_keys_and_trust_entry(tmp_path: Path) -> None:
    init_pki(tmp_path, [])
    ident = issue_agent(tmp_path, "branch-7")
    cert = _cert(ident.client_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "branch-7"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert "branch-7" in load_trust_map(tmp_path / "trust_map.yaml")
    with pytest.raises(PkiError, match="invalid"):
        issue_agent(tmp_path, "../etc")


def _csr(cn: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_sign_csr_checks_name_and_signature(tmp_path: Path) -> None:
    init_pki(tmp_path, [])
    cert = x509.load_pem_x509_certificate(sign_csr(tmp_path, _csr("pi-1"), "pi-1"))
    cert.verify_directly_issued_by(_cert(tmp_path / "ca.crt"))
    with pytest.raises(PkiError, match="names CN='pi-2'"):
        sign_csr(tmp_path, _csr("pi-2"), "pi-1")
    with pytest.raises(PkiError, match="not a PEM certificate signing request"):
        sign_csr(tmp_path, b"garbage", "pi-1")


def test_cli_pki_errors_are_one_line_and_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pki", "issue-agent", str(tmp_path / "none"), "a1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("infraspectre: no CA in") and "\n" not in err
    assert main(["pki", "init", str(tmp_path / "p")]) == 0
    assert main(["pki", "issue-agent", str(tmp_path / "p"), "a1"]) == 0


def test_trust_map_rejects_bad_entry(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("agents:\n  a1: missing.pub\n")
    with pytest.raises(Exception, match=r"agents\.a1: cannot read public key"):
        load_trust_map(f)
    key = bytes(SigningKey.generate().verify_key).hex()  # "ab" * 32 is not in the subgroup
    f.write_text("agents:\n  a1: " + key + "\n")
    assert "a1" in load_trust_map(f)
