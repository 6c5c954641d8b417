"""`infraspectre qemu boot`: mistakes are one line and exit status 1, before QEMU starts."""

import pytest

from appliance.cli import main


def test_a_missing_image_is_named(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    status = main(["qemu", "boot", str(tmp_path / "none.img"), "--board", "virt"])
    assert status == 1
    assert capsys.readouterr().err.strip() == f"infraspectre: no image {tmp_path / 'none.img'}"


def test_a_malformed_mirror_option_is_refused(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    card = tmp_path / "card.img"
    card.write_bytes(b"")
    status = main(["qemu", "boot", str(card), "--board", "virt", "--mirror", "5000"])
    assert status == 1
    assert "expected HOSTPORT:QEMUPORT" in capsys.readouterr().err


def test_an_unknown_board_is_an_argument_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_info:
        main(["qemu", "boot", str(tmp_path / "x.img"), "--board", "raspi4"])
    assert exit_info.value.code == 2
