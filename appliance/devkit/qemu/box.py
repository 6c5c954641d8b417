"""A box as a technician meets it, on an emulated board: a fresh card configured for a bus,
booted as in production (the console runs the provisioning responder, no shell), and given its
identity by `infraspectre provision` over that console.

The board tier (tests/board/) and `infraspectre demo --board` share these steps, so the demo
shows exactly the path the board tests prove: the keys are made on the box, only the CSR and the
signed certificate cross the console, and no private key ever reaches the host.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.devkit.qemu.fixtures import sparse_copy
from appliance.errors import CommandError
from appliance.image import settings
from appliance.qemu.machine import GUESTFWD_ADDR, GUESTFWD_PORT, Machine

#: What an unprovisioned box's console (the provisioning responder) repeats.
PROVISIONING_BANNER = "InfraSpectre provisioning console (unprovisioned)"


class ProvisioningFailed(CommandError):
    """`infraspectre provision` failed; .output holds all it said (stdout, then stderr)."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def fresh_card(image: Path, card: Path, agent_id: str) -> None:
    """Copy image to card (keeping its holes) and set its first-boot settings: agent_id, and
    the bus at the address the uplink's guestfwd answers."""
    settings.read(image)  # not a card: an error naming the image, not the copy
    sparse_copy(image, card)
    settings.configure(card, {"agent_id": agent_id, "bus": f"{GUESTFWD_ADDR}:{GUESTFWD_PORT}"}, [])


def provision_over_console(
    machine: Machine, pki: Path, agent_id: str, *, banner_s: float = 420.0, wait_s: float = 240.0
) -> str:
    """A technician's `infraspectre provision` over the box's console (the harness lets go of
    the console meanwhile); its output on success, CommandError with it otherwise."""
    machine.console.wait_for(PROVISIONING_BANNER, timeout=banner_s)
    port = machine.release_console()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "appliance", "provision", "--port",
             f"socket://127.0.0.1:{port}", "--pki", str(pki), "--agent-id", agent_id,
             "--wait", f"{wait_s:g}"],
            capture_output=True, text=True, timeout=wait_s + 660,
        )  # fmt: skip
    finally:
        machine.attach_console()
    if run.returncode != 0 or f"provisioned {agent_id}" not in run.stdout:
        said = (run.stdout + run.stderr).strip().splitlines()
        last = said[-1] if said else "no output"
        raise ProvisioningFailed(
            f"provisioning {agent_id} over the console failed: {last}", run.stdout + run.stderr
        )
    return run.stdout
