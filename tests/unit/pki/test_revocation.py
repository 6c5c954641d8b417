"""`infraspectre pki revoke`: the agent leaves the trust map, its certificates join revoked.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from testsupport.pki_helpers import fresh_pki

from appliance.cli import main
from appliance.pki import init_pki, issue_agent, load_trust_map
from appliance.pki.revocation import RevocationError, load_revocations, revoke_agent


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return fresh_pki(tmp_path / "pki")


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_revoke_removes_the_entry_and_records_every_certificate_issued(pki: Path) -> None:
    first = _serial(pki / "agents/branch-1/client.crt")
    issue_agent(pki, "branch-1", force=True)  # a second certificate for the same id
    second = _serial(pki / "agents/branch-1/client.crt")
    done = revoke_agent(pki, "branch-1")
    assert set(done.serials) == {first, second} and done.left_trust_map
    assert "branch-1" not in load_trust_map(pki / "trust_map.yaml")
    assert "branch-2" in load_trust_map(pki / "trust_map.yaml")
    assert {first, second} <= load_revocations(pki / "revoked.yaml").serials


def test_re_provisioned_certificate_is_not_revoked_the_old_one_stays(pki: Path) -> None:
    old = _serial(pki / "agents/branch-1/client.crt")
    revoke_agent(pki, "branch-1")
    issue_agent(pki, "branch-1", force=True)
    new = _serial(pki / "agents/branch-1/client.crt")
    revoked = load_revocations(pki / "revoked.yaml")
    assert old in revoked and new not in revoked
    assert "branch-1" in load_trust_map(pki / "trust_map.yaml")


def test_cli_revoke_and_its_one_line_errors(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pki", "revoke", str(pki), "branch-2"]) == 0
    assert "revoked branch-2: removed from the trust map" in capsys.readouterr().out
    for argv, message in (
        (["branch-2"], "nothing to revoke"),  # already done
        (["branch-9"], "'branch-9' is not in"),
        (["../x"], "agent id '../x' is invalid"),
    ):
        assert main(["pki", "revoke", str(pki), *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    (pki / "revoked.yaml").write_text("revoked: [{serial: nothex}]\n")
    assert main(["pki", "revoke", str(pki), "branch-1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "revoked[0].serial 'nothex' is not hex" in err
    assert "branch-1" in load_trust_map(pki / "trust_map.yaml")  # nothing half-done


def test_unreadable_revocation_list_is_one_line(pki: Path) -> None:
    (pki / "revoked.yaml").mkdir()
    with pytest.raises(RevocationError, match=r"^cannot read revocation list .*revoked\.yaml"):
        load_revocations(pki / "revoked.yaml")


def test_revoke_a_certificate_the_ca_has_no_record_of(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_pki(other, [])
    stray = issue_agent(other, "branch-1").client_cert
    done = revoke_agent(pki, "branch-1", extra_certs=(stray,))
    assert _serial(stray) in done.serials
    assert _serial(stray) in load_revocations(pki / "revoked.yaml")


def test_missing_revocation_list_revokes_nothing(tmp_path: Path) -> None:
    assert len(load_revocations(tmp_path / "absent.yaml")) == 0
