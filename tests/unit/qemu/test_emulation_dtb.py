"""The emulation-only DTB copy: real fdtput on a real (small) device tree."""

import subprocess
from pathlib import Path

import pytest

from appliance.errors import CommandError
from appliance.qemu import qemu10
from appliance.qemu.bootfiles import BootFiles, emulation_dtb

DTS = """/dts-v1/;
/ {
    soc {
        i2c@7ef04500 { status = "okay"; };
        mmc@7e300000 { status = "okay"; mmc-pwrseq = <1>; bus-width = <4>; };
    };
};
"""


def _boot(tmp_path: Path) -> BootFiles:
    (tmp_path / "t.dts").write_text(DTS)
    dtb = tmp_path / "t.dtb"
    subprocess.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(dtb), str(tmp_path / "t.dts")],
                   check=True)  # fmt: skip
    return BootFiles(kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="", dtb=dtb)


def _get(dtb: Path, node: str, prop: str) -> str:
    run = subprocess.run(["fdtget", str(dtb), node, prop], capture_output=True, text=True)
    return run.stdout.strip() if run.returncode == 0 else "absent"


def test_fixups_go_into_a_copy_and_the_cards_dtb_is_unchanged(tmp_path: Path) -> None:
    boot = _boot(tmp_path)
    assert boot.dtb is not None
    before = boot.dtb.read_bytes()
    fixed = emulation_dtb(boot, ["/soc/i2c@7ef04500"], ["/soc/mmc@7e300000 mmc-pwrseq"])
    assert fixed.dtb is not None and fixed.dtb != boot.dtb
    assert boot.dtb.read_bytes() == before
    assert _get(fixed.dtb, "/soc/i2c@7ef04500", "status") == "disabled"
    assert _get(fixed.dtb, "/soc/mmc@7e300000", "mmc-pwrseq") == "absent"
    assert _get(fixed.dtb, "/soc/mmc@7e300000", "bus-width") == "4"


def test_a_fixup_of_a_node_the_dtb_lacks_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"DTB fixup .*/soc/hdmi@7ef00700.* failed"):
        emulation_dtb(_boot(tmp_path), ["/soc/hdmi@7ef00700"], [])


def test_a_cached_qemu10_package_with_another_hash_is_discarded(tmp_path: Path) -> None:
    deb = qemu10.PACKAGES[0]
    path = tmp_path / deb.filename
    path.write_bytes(b"not the pinned package")
    assert not qemu10._verified(path, deb)
    assert not path.exists()
