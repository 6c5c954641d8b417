"""The image builder: Debian arm64 packages + overlays/ + the locked Python -> an SD card image.

Modules: definition (image/ data), debian (packages), rootfs (the root tree), overlay
(declared files), initramfs, sdcard (partitions and the MBR image), manifest, build (the
steps), configure (first-boot settings), flash (writing a card). No arm64 code runs on the host.
"""
