"""Manifest entries: files with mode, size and hash; links; directories; installed Python."""

import hashlib
import os
from pathlib import Path

from appliance.image import manifest


def test_tree_entries_describe_files_links_and_directories_sorted(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/shadow").write_bytes(b"root:*:\n")
    os.chmod(tmp_path / "etc/shadow", 0o640)
    (tmp_path / "sh").symlink_to("busybox")
    entries = manifest.tree_entries(tmp_path)
    assert entries == [
        {"path": "etc", "mode": f"{os.stat(tmp_path / 'etc').st_mode & 0o7777:04o}", "dir": True},
        {
            "path": "etc/shadow",
            "mode": "0640",
            "bytes": 8,
            "sha256": hashlib.sha256(b"root:*:\n").hexdigest(),
        },
        {"path": "sh", "link": "busybox"},
    ]


def test_python_packages_reads_names_and_versions_from_dist_info(tmp_path: Path) -> None:
    for name, version in (("PyNaCl", "1.6.2"), ("grpcio", "1.85.1")):
        info = tmp_path / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nName: not-this\n"
        )
    assert manifest.python_packages(tmp_path) == [
        {"name": "grpcio", "version": "1.85.1"},
        {"name": "PyNaCl", "version": "1.6.2"},
    ]


def test_write_is_deterministic(tmp_path: Path) -> None:
    doc = {"b": [1, 2], "a": {"y": 1, "x": 2}}
    manifest.write(tmp_path / "one.json", doc)
    manifest.write(tmp_path / "two.json", dict(reversed(list(doc.items()))))
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    assert manifest.read(tmp_path / "one.json")["format"] == manifest.FORMAT
