"""The one native part: Ed25519 batch verification for the bus (everything else is in
pyproject.toml). setup.py rather than pyproject's ext-modules table because the setuptools that
Debian 12's venv starts with predates that table."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "appliance.crypto._ed25519_batch",
            sources=["appliance/crypto/_ed25519_batch.c"],
            extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
        )
    ]
)
