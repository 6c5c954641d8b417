"""`infraspectre image ...`: build an SD card image, set its first-boot settings, flash it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

SETTING_OPTIONS = (
    ("--agent-id", "agent_id", "the device's agent identity (also its hostname)"),
    ("--bus", "bus", "the EventBus address, HOST:PORT"),
    ("--uplink", "uplink", "uplink interface (default eth0)"),
    ("--mirror", "mirror", "mirror-port interfaces, comma-separated"),
)


def register(sub: Any) -> None:
    """Add the `image` command tree."""
    from appliance.image.definition import boards

    image = sub.add_parser("image", help="build, configure and flash the SD card image")
    image_sub = image.add_subparsers(dest="image_command", metavar="ACTION")
    image_sub.required = True

    build = image_sub.add_parser("build", help="build the flashable SD card image")
    build.add_argument("--board", required=True, choices=boards(), help="what the card is for")
    build.add_argument("--out", type=Path, required=True, help="output directory")
    build.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("INFRASPECTRE_CACHE", "cache")),
        help="download cache kept between builds (default ./cache or $INFRASPECTRE_CACHE)",
    )
    build.add_argument(
        "--keep-work", action="store_true", help="keep OUT/work (root tree, partitions)"
    )
    build.add_argument(
        "--update-key",
        type=Path,
        action="append",
        default=[],
        metavar="PUB",
        help="an update key's public key the image trusts for update bundles (repeatable; "
        "`pki init-update-key` makes one)",
    )
    build.set_defaults(func=_build)

    bundle = image_sub.add_parser(
        "bundle", help="make a signed update bundle from a built image (docs/UPDATE.md)"
    )
    bundle.add_argument("image", type=Path, help="a built card image (infraspectre-rpi.img)")
    bundle.add_argument("--key", type=Path, required=True, help="the org update key (update.key)")
    bundle.add_argument("--out", type=Path, required=True, help="the bundle file to write")
    bundle.set_defaults(func=_bundle)

    configure = image_sub.add_parser(
        "configure", help="write first-boot settings onto an image's (or card's) boot partition"
    )
    configure.add_argument("image", type=Path)
    _setting_options(configure)
    configure.add_argument(
        "--unset", action="append", default=[], metavar="KEY", help="remove a setting"
    )
    configure.set_defaults(func=_configure)

    flash = image_sub.add_parser("flash", help="write an image to an SD card and verify it")
    flash.add_argument("image", type=Path)
    flash.add_argument("target", type=Path, help="the card's whole-disk device, e.g. /dev/sdb")
    flash.add_argument(
        "--force", action="store_true", help="allow a regular file (or a new path) as target"
    )
    _setting_options(flash)
    flash.set_defaults(func=_flash)


def _setting_options(parser: argparse.ArgumentParser) -> None:
    for flag, dest, text in SETTING_OPTIONS:
        parser.add_argument(flag, dest=dest, help=text)


def _settings(args: argparse.Namespace) -> dict[str, str]:
    return {d: getattr(args, d) for _, d, _ in SETTING_OPTIONS if getattr(args, d) is not None}


def _build(args: argparse.Namespace) -> int:
    from appliance.image import build, definition

    defn = definition.load(args.board)
    epoch = build.source_date_epoch(defn.source)
    result = build.build(
        defn,
        args.out,
        args.cache.resolve(),
        epoch=epoch,
        keep_work=args.keep_work,
        update_keys=args.update_key,
    )
    print(f"{result.image} sha256 {result.sha256} ({result.seconds:.0f} s)")
    print(f"manifest: {result.manifest}")
    return 0


def _configure(args: argparse.Namespace) -> int:
    from appliance.image import settings

    values = settings.configure(args.image, _settings(args), args.unset)
    print(settings.render(values), end="")
    return 0


def _flash(args: argparse.Namespace) -> int:
    from appliance.image import flash, settings

    for key, value in _settings(args).items():  # every check before the first byte is written
        settings.validate(key, value)
    digest = flash.flash(args.image, args.target, force=args.force)
    print(f"{args.target}: written and verified, sha256 {digest}")
    updates = _settings(args)
    if updates:
        settings.configure(args.target, updates, [])
        print(f"{args.target}: first-boot settings {', '.join(sorted(updates))} written")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from appliance.image import updatebundle

    manifest = updatebundle.make(args.image, args.key, args.out)
    print(
        f"{args.out}: {manifest.version} (build {manifest.build}, {manifest.board}), "
        f"{manifest.total} bytes, {len(manifest.files)} files, manifest sha256 {manifest.digest}"
    )
    return 0
