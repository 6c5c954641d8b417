"""From a built card image to a bundle a device accepts: `pki init-update-key`, `image bundle`."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.crypto.keys import load_signing_key, load_verify_key
from appliance.errors import CommandError
from appliance.image import sdcard
from appliance.update import bundle, slots

ROOT = Path(__file__).resolve().parents[3]
EPOCH = 1_795_737_600


def _card(tmp_path: Path, release: dict[str, object], update_pub: Path | None = None) -> Path:
    """A small card as `image build` lays it out: config.txt and slot-a/ on the FAT, a root
    squashfs with /etc/appliance/release (and the update key update_pub) in slot a."""
    tree = tmp_path / "tree"
    (tree / "etc/appliance/update-keys").mkdir(parents=True)
    (tree / "etc/appliance/release").write_text(json.dumps(release))
    if update_pub is not None:
        (tree / "etc/appliance/update-keys/org.pub").write_bytes(update_pub.read_bytes())
    squash = tmp_path / "root.sqfs"
    sdcard.make_root(tree, squash, EPOCH, ["-comp", "gzip"])
    src = tmp_path / "boot-src"
    (src / "slot-a").mkdir(parents=True)
    (src / "config.txt").write_text((ROOT / "image/boot/config.txt").read_text())
    (src / "start.elf").write_bytes(b"firmware")
    (src / "slot-a/vmlinuz").write_bytes(b"kernel" * 1000)
    (src / "slot-a/initrd.img").write_bytes(b"initrd")
    template = (ROOT / "image/boot/cmdline.txt").read_text().replace("@CONSOLE@", "ttyS1")
    (src / "slot-a/cmdline.txt").write_text(slots.cmdline_for(template, "a", "5ec7e0a1"))
    files = {str(p.relative_to(src)): p for p in src.rglob("*") if p.is_file()}
    layout = sdcard.plan(squash.stat().st_size)
    boot = tmp_path / "boot.vfat"
    sdcard.make_boot(files, layout.boot_size, boot, tmp_path / "staging", EPOCH)
    data = tmp_path / "data.img"
    data.write_bytes(b"")
    card = tmp_path / "card.img"
    sdcard.assemble(layout, boot, squash, data, card)
    return card


def test_init_update_key_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    assert main(["pki", "init-update-key", str(tmp_path / "keys")]) == 0
    private = tmp_path / "keys/update.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_signing_key(private)
    assert bytes(key.verify_key) == bytes(load_verify_key(tmp_path / "keys/update.pub"))
    assert main(["pki", "init-update-key", str(tmp_path / "keys")]) == 1  # never replaced


def test_image_bundle_carries_the_committed_slot_with_the_roots_own_version(
    tmp_path: Path,
) -> None:
    card = _card(tmp_path, {"board": "rpi", "build": EPOCH, "version": "0.3.1"})
    main(["pki", "init-update-key", str(tmp_path / "keys")])
    out = tmp_path / "rpi.bundle"
    status = main(["image", "bundle", str(card), "--key", str(tmp_path / "keys/update.key"),
                   "--out", str(out)])  # fmt: skip
    assert status == 0
    pub = load_verify_key(tmp_path / "keys/update.pub")
    with out.open("rb") as fh:
        manifest = bundle.read_manifest(fh, [pub])
        parts = {manifest.files[i].name: b"" for i in range(len(manifest.files))}
        for index, _, data in bundle.payload(fh, manifest):
            parts[manifest.files[index].name] += data
    assert (manifest.version, manifest.build, manifest.board) == ("0.3.1", EPOCH, "rpi")
    assert sorted(parts) == ["cmdline.txt", "initrd.img", "root", "vmlinuz"]
    assert parts["root"][:4] == b"hsqs" and len(parts["root"]) % 4096 == 0
    assert parts["vmlinuz"] == b"kernel" * 1000
    words = parts["cmdline.txt"].decode().split()
    assert "root=@ROOT@" in words and "appliance.slot=@SLOT@" in words


def test_a_card_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    not_card = tmp_path / "x.img"
    not_card.write_bytes(bytes(4096))
    main(["pki", "init-update-key", str(tmp_path / "keys")])
    from appliance.image import updatebundle

    with pytest.raises(CommandError, match="not an InfraSpectre card image"):
        updatebundle.make(not_card, tmp_path / "keys/update.key", tmp_path / "o.bundle")
