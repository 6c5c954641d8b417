"""The native parts: Ed25519 batch verification for the bus, and offline metering's pcap
record walk and JSON writer (appliance/capture/_fastpath.c; the capture code falls back to
pure Python without it). Everything else is in pyproject.toml. setup.py rather than pyproject's ext-modules table because the setuptools that
Debian 12's venv starts with predates that table."""

from setuptools import Extension, setup

setup(
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
    ]
)
