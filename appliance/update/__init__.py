"""Fail-safe A/B updates of the appliance (issue 13).

What this package owns, one module each:

    slots     the card's two root slots and their boot sets (names, partitions, os_prefix)
    firmware  what the Raspberry Pi firmware reads: config.txt / tryboot.txt -> the boot set
    bundle    the signed update bundle: its format (spec at the top), writer and verifier
    state     the update's state machine, persisted on /data
    device    the device side: apply a bundle, try the new slot, commit or roll back
    cli       `infraspectre update ...` on the device

It is a library shared by the image builder (cards and bundles), the QEMU harness (which plays
the firmware's part) and the device; it imports none of those components.
"""
