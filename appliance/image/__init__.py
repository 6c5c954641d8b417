"""The image builder: Debian arm64 packages + overlays/ + the locked Python -> an SD card image.

Modules: definition (the data in image/), debian (packages: resolve, cache, unpack), rootfs
(the root tree), overlay (declared files), initramfs, sdcard (partitions and the MBR image),
bootcheck (what a Pi's firmware will load), manifest, lock (requirements.lock), build (the
steps), settings (`image configure`: first-boot settings), flash (`image flash`), firstboot
(runs on the device), bench (`bench image`). No arm64 code runs on the host.
"""
