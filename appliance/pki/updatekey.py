"""The org update key: the Ed25519 key that signs update bundles (docs/UPDATE.md).

It is deliberately not the CA's key: the CA vouches for identities on the bus, the update key
for the software every box will run; losing one must not give away the other, and they are
kept and rotated apart (the update key can live offline, on the build machine that signs
releases). `infraspectre pki init-update-key DIR` writes:

    DIR/update.key   the private key, PEM PKCS#8, mode 0600 (refused if others can read it)
    DIR/update.pub   the public key, PEM: give it to `image build --update-key` so that the
                     image trusts it (/etc/appliance/update-keys/update.pub in the root)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from appliance.errors import CommandError

PRIVATE = "update.key"
PUBLIC = "update.pub"


def init_update_key(directory: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Create DIR/update.key and DIR/update.pub; refuses to replace a key unless force."""
    from nacl.signing import SigningKey

    from appliance.crypto.keys import write_signing_key, write_verify_key

    private, public = directory / PRIVATE, directory / PUBLIC
    if private.exists() and not force:
        raise CommandError(f"{private} exists; use --force to replace the update key")
    key = SigningKey.generate()
    write_signing_key(private, key)
    write_verify_key(public, key.verify_key)
    return private, public


def register(pki_sub: Any) -> None:
    """Add `pki init-update-key` to the pki command tree."""
    cmd = pki_sub.add_parser(
        "init-update-key", help="create the org update key (signs update bundles; not the CA)"
    )
    cmd.add_argument("dir", type=Path, help="directory for update.key and update.pub")
    cmd.add_argument("--force", action="store_true", help="replace an existing update key")
    cmd.set_defaults(func=_init_update_key)


def _init_update_key(args: argparse.Namespace) -> int:
    private, public = init_update_key(args.dir, force=args.force)
    print(f"update key: {private} (keep it offline); public key for images: {public}")
    return 0
