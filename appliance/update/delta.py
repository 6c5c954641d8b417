"""Delta updates: which chunks of a bundle the box already holds in the system it runs.

Most of a release is unchanged (the kernel, initramfs and DTBs are usually byte-identical, and
the root squashfs writes what changes between our releases last: appliance.image.sdcard), so
a box needs to download only the chunks its running slot does not already hold. One rule
decides, here and wherever it is applied (the agent's download, `update apply`, `bench
update`):

- the **seed** of a payload file is the running slot's copy of it: for the root, the running
  slot's root partition at the same offset; for a boot set file, the running slot's boot set
  file of the same name (missing: no seed);
- chunk n of a file is **held** by a source when the source's bytes at n * chunk, the chunk's
  length of them, hash to the manifest's (signed) chunk hash. Nothing else is trusted: a seed
  that differs in one byte, or is shorter, holds nothing of that chunk.

A download keeps the bundle's full length with the chunks held by the seed left as holes
(sparse); `update apply` fills a chunk that does not hash right in the bundle file from the
seed when the seed holds it, and refuses it as today otherwise. One chunk is in memory at a
time.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

from appliance.update import bundle, slots


@dataclasses.dataclass(frozen=True)
class Seed:
    """The running system's copies of the payload files: its root partition (or a file
    standing for it) and its boot set folder."""

    root: Path
    boot_dir: Path

    @classmethod
    def running(cls, partition: Path, boot_dir: Path, slot: str) -> Seed:
        """The seed of a box running slot: that slot's root partition and boot set folder
        (boot_dir is the boot partition's mount point)."""
        return cls(partition, boot_dir / slots.prefix(slot))

    def source(self, entry: bundle.FileEntry) -> Path:
        """Where the running system holds its copy of entry."""
        return self.root if entry.target == "slot" else self.boot_dir / entry.name

    def read(self, entry: bundle.FileEntry, n: int, size: int, chunk: int) -> bytes | None:
        """The seed's bytes of chunk n of entry (size of them), or None when it has none."""
        return read_at(self.source(entry), n * chunk, size)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Chunk n of payload file `index`: where it lies in the bundle and how long it is."""

    index: int
    n: int
    offset: int
    size: int
    sha256: str


def chunks(manifest: bundle.Manifest) -> Iterator[Chunk]:
    """Every payload chunk of manifest, in bundle order."""
    for index, entry in enumerate(manifest.files):
        for n, digest in enumerate(entry.chunks):
            size = min(manifest.chunk, entry.size - n * manifest.chunk)
            yield Chunk(index, n, manifest.offset(index, n), size, digest)


def read_at(path: Path, offset: int, size: int) -> bytes | None:
    """size bytes of path at offset; None when path is missing, unreadable or too short."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
    except OSError:
        return None
    return data if len(data) == size else None


def hashes_right(data: bytes | None, digest: str) -> bool:
    """data is there and its SHA-256 is digest."""
    return data is not None and hashlib.sha256(data).hexdigest() == digest


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a box must fetch of a bundle: the chunks neither its download file nor its seed
    holds. Sizes in bytes; `header` is the bundle's head (header, manifest, signature)."""

    total: int
    header: int
    fetch: tuple[Chunk, ...]
    in_file: int
    in_seed: int

    @property
    def fetch_bytes(self) -> int:
        """Payload bytes to fetch (the head comes on top, when not already on the box)."""
        return sum(c.size for c in self.fetch)


def plan(manifest: bundle.Manifest, seed: Seed | None, have: Path | None = None) -> Plan:
    """Which chunks of manifest's payload to fetch: a chunk is done when `have` (a download
    file, laid out as the bundle) already holds it at its bundle offset, or seed holds it; all
    others are fetched. Reads one chunk at a time."""
    fetch: list[Chunk] = []
    in_file = in_seed = 0
    for c in chunks(manifest):
        if have is not None and hashes_right(read_at(have, c.offset, c.size), c.sha256):
            in_file += c.size
            continue
        entry = manifest.files[c.index]
        if seed is not None and hashes_right(
            seed.read(entry, c.n, c.size, manifest.chunk), c.sha256
        ):
            in_seed += c.size
            continue
        fetch.append(c)
    return Plan(manifest.total, manifest.payload_offset, tuple(fetch), in_file, in_seed)


def ranges(wanted: tuple[Chunk, ...], piece: int, head: int = 0) -> list[tuple[int, int]]:
    """The (offset, length) pieces that cover the wanted chunks (and the bundle's first head
    bytes), on a grid of `piece` bytes from the bundle's start: each piece fetched once even
    when two wanted chunks share it, and a download of every chunk fetches exactly the pieces
    a plain download would."""
    if piece <= 0:
        raise ValueError("piece must be positive")
    spans = ([(0, head)] if head else []) + [(c.offset, c.size) for c in wanted]
    picked: set[int] = set()
    for offset, size in spans:
        if size <= 0:
            continue
        picked.update(range(offset // piece, (offset + size - 1) // piece + 1))
    return [(k * piece, piece) for k in sorted(picked)]
