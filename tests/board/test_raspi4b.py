"""The rpi image on QEMU 10's Raspberry Pi 4 B: the card boots to READY with the Pi 4's DTB
(an emulation-only copy, see qemu/boards/raspi4b.toml) and a technician provisions it over its
console. QEMU's raspi4b models no network, so delivery to a bus is the raspi3b tier's job;
what this board adds is the Pi 4's kernel path: its DTB, its SD controller, its mini UART.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.crypto import load_verify_key
from appliance.image import settings
from appliance.pki import init_pki
from appliance.qemu.machine import GUESTFWD_ADDR, Machine

pytestmark = pytest.mark.timeout(1200)

AGENT_ID = "branch-404"


@pytest.fixture(scope="module")
def pi4(  # type: ignore[no-untyped-def]
    boot_board_shared, rpi_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Machine:  # fmt: skip
    """raspi4b booting a configured copy of the image as in production (the responder)."""
    card = tmp_path_factory.mktemp("pi4") / "card.img"
    shutil.copyfile(rpi_image, card)
    settings.configure(card, {"agent_id": AGENT_ID, "bus": f"{GUESTFWD_ADDR}:50051"}, [])
    return boot_board_shared(card, "raspi4b", console_shell=False)


def test_the_pi4_kernel_finds_the_card_and_reaches_ready(pi4: Machine) -> None:
    """The production command line is quiet, so the card's own scripts say it: the initramfs
    found the root by its PARTUUID on the SD card (mmcblk0: the Arasan SDHCI that QEMU 10
    wires the card to) and the system came up."""
    text = pi4.console.text()
    assert "initramfs: root /dev/mmcblk0p2, switching" in text, text[-2000:]
    assert "rcS: system up (disk mmcblk0" in text
    assert "INFRASPECTRE-READY" in text


def test_technician_provisions_the_pi4_over_its_console(  # type: ignore[no-untyped-def]
    pi4: Machine, tmp_path: Path, provision_over_console
) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, [GUESTFWD_ADDR])
    out = provision_over_console(pi4, pki, AGENT_ID)
    # the emulated Pi starts at the image's build time: HELLO set its clock
    assert "box answered: unprovisioned" in out and "clock set" in out
    assert load_verify_key(pki / "agents" / AGENT_ID / "ed25519.pub") is not None
    # the private keys were generated on the box and never came over the console
    assert not list((pki / "agents" / AGENT_ID).glob("*.key"))
