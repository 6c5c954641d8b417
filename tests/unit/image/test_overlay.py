"""Overlay manifests: every laid-in path declared with its mode and owner."""

from pathlib import Path

import pytest

from appliance.errors import CommandError
from appliance.image import overlay

OVERLAYS = Path(__file__).resolve().parents[3] / "overlays"


def test_manifest_lines_give_files_directories_and_links(tmp_path: Path) -> None:
    path = tmp_path / "x.manifest"
    path.write_text(
        "# comment\netc/inittab 0644 0:0\ndata/ 0755 0:0  # mount point\n"
        "usr/sbin/init -> ../bin/busybox\netc/shadow 0640 0:42\n"
    )
    entries = overlay.read_manifest(path)
    assert entries == [
        overlay.Entry("etc/inittab", 0o644, 0, 0),
        overlay.Entry("data", 0o755, 0, 0, None, True),
        overlay.Entry("usr/sbin/init", link="../bin/busybox"),
        overlay.Entry("etc/shadow", 0o640, 0, 42),
    ]


@pytest.mark.parametrize("line", ["etc/x 0644", "etc/x rw 0:0", "etc/x 0644 root"])
def test_a_malformed_line_is_refused_with_its_place(tmp_path: Path, line: str) -> None:
    path = tmp_path / "x.manifest"
    path.write_text(f"etc/ok 0644 0:0\n{line}\n")
    with pytest.raises(CommandError, match=r"x.manifest:2"):
        overlay.read_manifest(path)


def test_an_undeclared_file_in_the_layer_is_refused(tmp_path: Path) -> None:
    layer = tmp_path / "base"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc/declared").write_text("")
    (layer / "etc/sneaky").write_text("")
    entries = [overlay.Entry("etc/declared")]
    with pytest.raises(CommandError, match="undeclared file etc/sneaky"):
        overlay.check_layer(layer, entries)


def test_a_declared_file_missing_from_the_layer_is_refused(tmp_path: Path) -> None:
    layer = tmp_path / "base"
    layer.mkdir()
    with pytest.raises(CommandError, match="declared etc/gone is not in the layer"):
        overlay.check_layer(layer, [overlay.Entry("etc/gone")])


def test_the_shipped_base_layer_is_fully_declared() -> None:
    entries = overlay.read_manifest(OVERLAYS / "base.manifest")
    overlay.check_layer(OVERLAYS / "base", entries)
    modes = {e.path: e.mode for e in entries}
    assert modes["etc/init.d/rcS"] == 0o755
    assert modes["etc/shadow"] == 0o640
