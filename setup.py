"""The native parts: Ed25519 batch verification for the bus, and offline metering's pcap
record walk and JSON writer (appliance/capture/_fastpath.c; the capture code falls back to
pure Python without it). Everything else is in pyproject.toml. setup.py rather than pyproject's
ext-modules table because the setuptools that Debian 12's venv starts with predates that table.

A wheel also carries the host-side data of `image build` and `qemu boot` (image/, overlays/,
qemu/boards/, requirements.lock) as appliance/_data/, where appliance.datafiles finds it; the
source tree keeps them at its top, where the layout puts them.
"""

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
#: Kept in step with appliance.datafiles.SHIPPED (tests/unit/test_datafiles.py checks it).
DATA = ("image", "overlays", "qemu/boards", "requirements.lock")


class BuildWithData(build_py):
    """build_py, plus the data folders copied into the built package's _data/."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "appliance" / "_data"
        for rel in DATA:
            src, dst = HERE / rel, target / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            else:
                shutil.copyfile(src, dst)


setup(
    cmdclass={"build_py": BuildWithData},
    ext_modules=[
        Extension(
            "appliance.crypto._ed25519_batch",
            sources=["appliance/crypto/_ed25519_batch.c"],
            extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
        ),
        Extension(
            "appliance.capture._fastpath",
            sources=["appliance/capture/_fastpath.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
        ),
    ],
)
