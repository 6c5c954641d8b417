"""The kept cards of `demo --board` (appliance.devkit.image.cards): one key per state of what
goes onto the card, so an edit there builds a new card and an edit elsewhere keeps it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.devkit.image import cards
from appliance.image import build, definition


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the data folder's image inputs and of the package (source, package)."""
    source = tmp_path / "src"
    for name in ("image", "overlays"):
        shutil.copytree(definition.SOURCE_DIR / name, source / name)
    shutil.copyfile(definition.SOURCE_DIR / "requirements.lock", source / "requirements.lock")
    package = tmp_path / "appliance"
    shutil.copytree(build.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    return source, package


def _key(source: Path, package: Path) -> str:
    return cards.source_key(definition.load("rpi", source), package_dir=package)


def test_the_key_follows_what_goes_onto_the_card(tree: tuple[Path, Path]) -> None:
    source, package = tree
    first = _key(source, package)
    assert _key(source, package) == first
    assert first == cards.source_key(definition.load("rpi"))  # the copy is the card's sources
    (package / "wal" / "__init__.py").write_text("# changed\n", encoding="utf-8")
    runtime_edit = _key(source, package)
    assert runtime_edit != first
    init = next((source / "image").rglob("init"))
    init.write_text(init.read_text() + "\n# changed\n")
    assert _key(source, package) not in (first, runtime_edit)


def test_an_edit_to_the_development_kit_keeps_the_card(tree: tuple[Path, Path]) -> None:
    source, package = tree
    first = _key(source, package)
    (package / "devkit" / "demo_board.py").write_text("# changed\n")
    assert _key(source, package) == first
