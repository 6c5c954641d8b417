"""The QEMU board harness: boot an SD card image on an emulated board and drive it.

Modules: boards (qemu/boards/*.toml), bootfiles (kernel, initramfs, DTB and command line read
from the card's own boot partition), console (the serial console over TCP: wait for text, run
a command and get its output and exit status), machine (one QEMU process and its lifecycle);
the pytest plugin is the development kit's (appliance.devkit.qemu.fixtures). Independent of
the image builder: the interface is the card.
"""
