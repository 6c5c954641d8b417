"""Keys outside Ed25519's prime-order subgroup never enter a trust map (crypto/keys.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey, VerifyKey
from testsupport import ed25519ref as ref

from appliance.bus.auth import TrustHolder
from appliance.cli import main
from appliance.crypto.keys import KeyFileError, require_prime_order
from appliance.pki import add_trust_entry, init_pki, load_trust_map
from appliance.pki.trustmap import TrustMapError

#: The eight points of small order, as encoded in "Taming the many EdDSAs" (order 1, 2, 4, 8).
SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
]


def _honest() -> bytes:
    return bytes(SigningKey.generate().verify_key)


def _with_torsion(public: bytes) -> bytes:
    """An honest key plus a point of order 8: on the curve, outside the subgroup."""
    return ref.encode(ref.add(ref.decode(public), ref.torsion_point_of_order_8()))


def test_the_vectors_are_what_they_claim() -> None:
    for hexkey in SMALL_ORDER:
        assert ref.mul(8, ref.decode(bytes.fromhex(hexkey))) == ref.IDENTITY, hexkey
    mixed = ref.decode(_with_torsion(_honest()))
    assert ref.mul(ref.L, mixed) != ref.IDENTITY  # a torsion component survives L * key


@pytest.mark.parametrize("hexkey", SMALL_ORDER)
def test_small_order_keys_are_refused(hexkey: str) -> None:
    with pytest.raises(KeyFileError, match="not a usable Ed25519 public key"):
        require_prime_order(VerifyKey(bytes.fromhex(hexkey)), "k")


def test_key_with_a_torsion_component_is_refused_and_the_honest_part_accepted() -> None:
    honest = _honest()
    assert bytes(require_prime_order(VerifyKey(honest), "k")) == honest
    with pytest.raises(KeyFileError, match="torsion"):
        require_prime_order(VerifyKey(_with_torsion(honest)), "k")


def test_trust_map_names_the_bad_entry_and_a_reload_keeps_the_previous_map(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trust.yaml"
    good = _honest().hex()
    path.write_text(f"agents:\n  branch-1: {good}\n")
    holder = TrustHolder(path)
    path.write_text(f"agents:\n  branch-1: {good}\n  branch-9: {_with_torsion(_honest()).hex()}\n")
    with pytest.raises(TrustMapError, match=r"agents\.branch-9: key: not a usable"):
        load_trust_map(path)
    assert holder.reload() is False
    assert list(holder.current.keys) == ["branch-1"]


def test_small_order_key_file_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text(SMALL_ORDER[4] + "\n")
    path = tmp_path / "trust.yaml"
    path.write_text("agents:\n  branch-3: k.pub\n")
    with pytest.raises(TrustMapError, match=r"agents\.branch-3: key: not a usable"):
        load_trust_map(path)


def test_add_trust_entry_refuses_to_write_such_a_key(tmp_path: Path) -> None:
    path = tmp_path / "trust.yaml"
    with pytest.raises(TrustMapError, match=r"agents\.branch-4"):
        add_trust_entry(path, "branch-4", SMALL_ORDER[1])
    assert not path.exists()


def test_sign_csr_refuses_such_a_signing_pub_and_issues_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import CertificateSigningRequestBuilder, Name

    pki = tmp_path / "pki"
    init_pki(pki, [])
    csr = (
        CertificateSigningRequestBuilder()
        .subject_name(Name([]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    csr_file = tmp_path / "dev.csr"
    csr_file.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    argv = ["pki", "sign-csr", str(pki), str(csr_file), "--agent-id", "branch-5"]
    bad = _with_torsion(_honest()).hex()
    assert main([*argv, "--signing-pub", bad, "--out", str(tmp_path / "c.crt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--signing-pub: not a usable Ed25519 public key" in err
    assert not (tmp_path / "c.crt").exists()
    assert not (pki / "issued" / "branch-5").exists()
    assert "branch-5" not in load_trust_map(pki / "trust_map.yaml")
    good = _honest().hex()
    assert main([*argv, "--signing-pub", good, "--out", str(tmp_path / "c.crt")]) == 0
    assert "branch-5" in load_trust_map(pki / "trust_map.yaml")
