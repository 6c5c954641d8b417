"""Restart the kernel with a reboot command: what `reboot "0 tryboot"` does on Raspberry Pi OS.

    python3 -m appliance.update.reboot "0 tryboot"

busybox's reboot takes no argument, so rcK calls this as its last step (after /data is
unmounted) when /run/appliance/reboot-arg asks for one. It issues reboot(2) with
LINUX_REBOOT_CMD_RESTART2 and the argument; the kernel prints
"reboot: Restarting system with command '0 tryboot'" on the console (which the QEMU harness
reads as the firmware's tryboot flag) and the Raspberry Pi kernel's firmware driver sets the
firmware's one-shot tryboot flag from it.
"""

from __future__ import annotations

import ctypes
import os
import sys

MAGIC1 = 0xFEE1DEAD
MAGIC2 = 672274793
RESTART2 = 0xA1B2C3D4
#: reboot(2)'s system call number per architecture (glibc has no RESTART2 wrapper)
SYS_REBOOT = {"aarch64": 142, "x86_64": 169, "armv7l": 88}


def restart(command: str) -> None:
    """Restart now with command; returns only on failure (OSError)."""
    libc = ctypes.CDLL(None, use_errno=True)
    number = SYS_REBOOT[os.uname().machine]
    arg = ctypes.c_char_p(command.encode())
    os.sync()
    if libc.syscall(number, MAGIC1, MAGIC2, RESTART2, arg) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print('usage: python3 -m appliance.update.reboot "0 tryboot"', file=sys.stderr)
        return 2
    try:
        restart(argv[0])
    except (OSError, KeyError) as exc:
        print(f"reboot: cannot restart with {argv[0]!r}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
