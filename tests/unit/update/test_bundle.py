"""The bundle format: what a device accepts, and the one-line reason for what it refuses."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from appliance.update import bundle

from .conftest import CHUNK, KEY, OTHER_KEY, make_bundle


def _read_all(data: bytes) -> list[tuple[int, int, bytes]]:
    stream = io.BytesIO(data)
    manifest = bundle.read_manifest(stream, [KEY.verify_key])
    return list(bundle.payload(stream, manifest))


def test_a_written_bundle_reads_back_chunk_by_chunk_with_its_manifest(tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    with path.open("rb") as fh:
        manifest = bundle.read_manifest(fh, [KEY.verify_key])
        bundle.check_length(fh, manifest)
        chunks = list(bundle.payload(fh, manifest))
    assert (manifest.version, manifest.build, manifest.board) == ("0.2.0", 2000, "rpi")
    assert [f.name for f in manifest.files] == ["root", "cmdline.txt", "initrd.img", "vmlinuz"]
    assert manifest.total == path.stat().st_size
    root = b"".join(data for index, _, data in chunks if index == 0)
    assert hashlib.sha256(root).hexdigest() == manifest.root.sha256
    assert max(len(data) for _, _, data in chunks) == CHUNK  # never more than a chunk held


def test_a_bundle_signed_by_an_untrusted_key_is_refused(tmp_path: Path) -> None:
    data = make_bundle(tmp_path, key=OTHER_KEY).read_bytes()
    with pytest.raises(bundle.BundleError, match=r"^bundle refused: bad signature"):
        _read_all(data)


def test_a_changed_manifest_breaks_the_signature(tmp_path: Path) -> None:
    data = bytearray(make_bundle(tmp_path).read_bytes())
    at = data.index(b'"version":"0.2.0"')
    data[at + 11 : at + 16] = b"9.9.9"
    with pytest.raises(bundle.BundleError, match="bad signature"):
        _read_all(bytes(data))


def test_a_flipped_payload_byte_is_refused_at_its_chunk_before_it_is_yielded(
    tmp_path: Path,
) -> None:
    path = make_bundle(tmp_path)
    data = bytearray(path.read_bytes())
    with path.open("rb") as fh:
        manifest = bundle.read_manifest(fh, [KEY.verify_key])
    data[manifest.offset(0, 3) + 10] ^= 1
    stream = io.BytesIO(bytes(data))
    bundle.read_manifest(stream, [KEY.verify_key])
    seen = []
    with pytest.raises(
        bundle.BundleError, match=r"^bundle refused: hash mismatch in root, chunk 3$"
    ):
        for index, n, _ in bundle.payload(stream, manifest):
            seen.append((index, n))
    assert seen == [(0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize("cut", [10, 200, -1])
def test_a_truncated_bundle_is_refused(tmp_path: Path, cut: int) -> None:
    data = make_bundle(tmp_path).read_bytes()
    with pytest.raises(bundle.BundleError, match=r"^bundle refused: truncated"):
        _read_all(data[:cut])


def test_a_truncated_file_is_refused_by_its_length_before_the_payload(tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    path.write_bytes(path.read_bytes()[:-5])
    with path.open("rb") as fh:
        manifest = bundle.read_manifest(fh, [KEY.verify_key])
        with pytest.raises(bundle.BundleError, match=r"truncated \(\d+ of \d+ bytes\)"):
            bundle.check_length(fh, manifest)


def test_trailing_bytes_are_refused(tmp_path: Path) -> None:
    data = make_bundle(tmp_path).read_bytes() + b"x"
    with pytest.raises(bundle.BundleError, match="trailing bytes"):
        _read_all(data)


def test_not_a_bundle_and_no_trusted_key_say_so(tmp_path: Path) -> None:
    with pytest.raises(bundle.BundleError, match="bad magic"):
        _read_all(b"PK\x03\x04" + bytes(100))
    data = make_bundle(tmp_path).read_bytes()
    with pytest.raises(bundle.BundleError, match="trusts no update key"):
        bundle.read_manifest(io.BytesIO(data), [])


def test_payload_resumes_at_a_chunk_of_a_seekable_input(tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    with path.open("rb") as fh:
        manifest = bundle.read_manifest(fh, [KEY.verify_key])
        everything = list(bundle.payload(fh, manifest))
        fh.seek(manifest.offset(0, 4))
        resumed = list(bundle.payload(fh, manifest, (0, 4)))
    assert resumed == everything[4:]


def test_every_refusal_is_one_line(tmp_path: Path) -> None:
    data = make_bundle(tmp_path).read_bytes()
    for bad in (data[:30], data[:-1], b"garbage" * 10, data + b"!"):
        with pytest.raises(bundle.BundleError) as info:
            _read_all(bad)
        assert "\n" not in str(info.value)
