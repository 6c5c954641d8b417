"""The update bundle: one signed file carrying a root image and its boot set.

Format, version 1 (integers big-endian). A bundle is read strictly front to back, so it can be
streamed (a pipe, a download) and installed chunk by chunk without being held in memory:

    header     16 bytes: magic b"ISUPDT\\r\\n" (8; the CR LF catches a text-mode copy),
               u16 format (1), u16 signature length (64), u32 manifest length (1 B .. 1 MiB)
    manifest   that many bytes: canonical JSON (UTF-8, sorted keys, separators "," ":")
    signature  64 bytes: Ed25519 over DOMAIN + header + manifest, by the org *update* key
               (never the CA's key: `infraspectre pki init-update-key`)
    payload    the manifest's files, in its order, each exactly `bytes` long, no padding
    end        the input ends right after the last file: less is "truncated", more is refused

Manifest (every key required, no other key allowed):

    format   1
    version  the appliance version the root runs (PEP 440), from its /etc/appliance/release
    build    that image's SOURCE_DATE_EPOCH (int): orders builds of one version
    board    the image's board ("rpi"); a device refuses another board's bundle
    key_id   hex of the first 8 bytes of SHA-256 of the signer's raw public key: picks which
             trusted key to try (a hint only: the signature decides)
    chunk    bytes per hashed chunk: a power of two from 64 KiB to 16 MiB
    files    [{name, target, bytes, sha256, chunks}]: target "slot" for the root image (exactly
             one, first, named "root") or "boot" for a boot set file (name [A-Za-z0-9._-]+,
             unique; cmdline.txt is required and is a template whose @ROOT@ and @SLOT@ the
             device fills in for the slot it installs to); sha256 of the whole file and of each
             chunk (the last one may be shorter)

Invariants the reader enforces before it yields a single payload byte: the header, the
manifest's schema and limits, the signature by a trusted key. While it yields, every chunk is
hashed and compared before the caller may write it, and each file's whole hash is compared at
its end; a short input raises "truncated". Every refusal is a BundleError with one line that
says what is wrong. A seekable input can start at any chunk (resume after a power cut).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from appliance.errors import CommandError

MAGIC = b"ISUPDT\r\n"
FORMAT = 1
SIG_LEN = 64
HEADER = struct.Struct(">8sHHI")
MAX_MANIFEST = 1 << 20
DOMAIN = b"infraspectre-update-bundle-v1\0"
DEFAULT_CHUNK = 4 << 20
MIN_CHUNK, MAX_CHUNK = 64 << 10, 16 << 20
CMDLINE = "cmdline.txt"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEYS = {"format", "version", "build", "board", "key_id", "chunk", "files"}
_FILE_KEYS = {"name", "target", "bytes", "sha256", "chunks"}


class BundleError(CommandError):
    """The bundle is refused; the message is one line saying why."""


def key_id(key: VerifyKey) -> str:
    """The manifest's key_id of a public key."""
    return hashlib.sha256(bytes(key)).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One payload file as the manifest lists it."""

    name: str
    target: str  # "slot" or "boot"
    size: int
    sha256: str
    chunks: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A verified manifest; `digest` (SHA-256 of its bytes) identifies the bundle."""

    version: str
    build: int
    board: str
    key_id: str
    chunk: int
    files: tuple[FileEntry, ...]
    digest: str
    #: bytes before the payload (header + manifest + signature)
    payload_offset: int

    @property
    def root(self) -> FileEntry:
        return self.files[0]

    @property
    def boot(self) -> tuple[FileEntry, ...]:
        return self.files[1:]

    @property
    def total(self) -> int:
        """Length of the whole bundle."""
        return self.payload_offset + sum(f.size for f in self.files)

    def offset(self, index: int, chunk: int = 0) -> int:
        """Position in the bundle of chunk `chunk` of file `index`."""
        return self.payload_offset + sum(f.size for f in self.files[:index]) + chunk * self.chunk


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hash_file(path: Path, chunk: int) -> tuple[str, list[str], int]:
    whole = hashlib.sha256()
    parts: list[str] = []
    size = 0
    with path.open("rb") as fh:
        while data := fh.read(chunk):
            whole.update(data)
            parts.append(hashlib.sha256(data).hexdigest())
            size += len(data)
    return whole.hexdigest(), parts, size


def write(
    out: Path,
    *,
    version: str,
    build: int,
    board: str,
    root: Path,
    boot: Mapping[str, Path],
    key: SigningKey,
    chunk: int = DEFAULT_CHUNK,
) -> Manifest:
    """Write a bundle of root (the slot image) and boot (name -> file: the boot set, whose
    cmdline.txt is a template with @ROOT@ and @SLOT@) signed with key; returns its manifest."""
    if CMDLINE not in boot:
        raise BundleError(f"the boot set has no {CMDLINE}")
    files: list[dict[str, Any]] = []
    sources = [("root", "slot", root)] + [(n, "boot", boot[n]) for n in sorted(boot)]
    for name, target, path in sources:
        digest, parts, size = _hash_file(path, chunk)
        entry = {"name": name, "target": target, "bytes": size, "sha256": digest}
        files.append({**entry, "chunks": parts})
    doc = {
        "format": FORMAT,
        "version": version,
        "build": build,
        "board": board,
        "key_id": key_id(key.verify_key),
        "chunk": chunk,
        "files": files,
    }
    manifest = _canonical(doc)
    header = HEADER.pack(MAGIC, FORMAT, SIG_LEN, len(manifest))
    signature = key.sign(DOMAIN + header + manifest).signature
    tmp = out.with_name(out.name + ".part")
    with tmp.open("wb") as fh:
        fh.write(header + manifest + signature)
        for _, _, path in sources:
            with path.open("rb") as src:
                while data := src.read(1 << 20):
                    fh.write(data)
    tmp.replace(out)
    return _parse(manifest, header)


def _fail(why: str) -> BundleError:
    return BundleError(f"bundle refused: {why}")


def read_manifest(stream: BinaryIO, keys: Sequence[VerifyKey]) -> Manifest:
    """Read and verify the header, manifest and signature at the start of stream; the stream
    is left at the first payload byte. Raises BundleError (one line) on anything wrong."""
    header = _read_exact(stream, HEADER.size, "header")
    magic, fmt, sig_len, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise _fail("not an InfraSpectre update bundle (bad magic)")
    if fmt != FORMAT:
        raise _fail(f"bundle format {fmt}, this device reads format {FORMAT}")
    if sig_len != SIG_LEN or not 0 < length <= MAX_MANIFEST:
        raise _fail("malformed header (signature or manifest length out of bounds)")
    manifest = _read_exact(stream, length, "manifest")
    signature = _read_exact(stream, SIG_LEN, "signature")
    if not keys:
        raise _fail("this system trusts no update key (/etc/appliance/update-keys is empty)")
    for key in keys:
        try:
            key.verify(DOMAIN + header + manifest, signature)
            break
        except BadSignatureError:
            continue
    else:
        raise _fail("bad signature: not signed by a trusted update key")
    return _parse(manifest, header)


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise _fail(f"truncated in its {what}")
    return data


def _parse(manifest: bytes, header: bytes) -> Manifest:
    try:
        doc = json.loads(manifest)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(f"manifest is not JSON ({exc})") from exc
    if not isinstance(doc, dict) or set(doc) != _KEYS:
        raise _fail("manifest keys are not the format's")
    if _canonical(doc) != manifest:
        raise _fail("manifest is not in canonical form")
    chunk = doc["chunk"]
    ok = (
        doc["format"] == FORMAT
        and isinstance(doc["version"], str)
        and 0 < len(doc["version"]) <= 64
        and isinstance(doc["build"], int)
        and isinstance(doc["board"], str)
        and isinstance(doc["key_id"], str)
        and isinstance(chunk, int)
        and MIN_CHUNK <= chunk <= MAX_CHUNK
        and chunk & (chunk - 1) == 0
        and isinstance(doc["files"], list)
    )
    if not ok:
        raise _fail("manifest values out of bounds")
    files = tuple(_entry(f, chunk) for f in doc["files"])
    names = [f.name for f in files]
    if not files or files[0].target != "slot" or files[0].name != "root":
        raise _fail("the first file must be the root image")
    if any(f.target != "boot" for f in files[1:]) or len(set(names)) != len(names):
        raise _fail("boot set files must follow the root, each name once")
    if CMDLINE not in names:
        raise _fail(f"the boot set has no {CMDLINE}")
    return Manifest(
        version=doc["version"],
        build=doc["build"],
        board=doc["board"],
        key_id=doc["key_id"],
        chunk=chunk,
        files=files,
        digest=hashlib.sha256(manifest).hexdigest(),
        payload_offset=len(header) + len(manifest) + SIG_LEN,
    )


def _entry(raw: Any, chunk: int) -> FileEntry:
    if not isinstance(raw, dict) or set(raw) != _FILE_KEYS:
        raise _fail("a file entry's keys are not the format's")
    name, target, size = raw["name"], raw["target"], raw["bytes"]
    digest, chunks = raw["sha256"], raw["chunks"]
    ok = (
        isinstance(name, str)
        and _NAME.fullmatch(name)
        and name not in (".", "..")
        and target in ("slot", "boot")
        and isinstance(size, int)
        and size >= 0
        and isinstance(digest, str)
        and _HEX64.fullmatch(digest)
        and isinstance(chunks, list)
        and len(chunks) == -(-size // chunk)
        and all(isinstance(c, str) and _HEX64.fullmatch(c) for c in chunks)
    )
    if not ok:
        raise _fail(f"file entry {str(name)[:64]!r} is malformed")
    return FileEntry(name, target, size, digest, tuple(chunks))


#: a chunk's bytes from elsewhere (the running slot: appliance.update.delta), given the file's
#: entry, the chunk index and its length; None when there are none
Fill = Callable[[FileEntry, int, int], bytes | None]


def payload(
    stream: BinaryIO,
    manifest: Manifest,
    start: tuple[int, int] = (0, 0),
    fill: Fill | None = None,
) -> Iterator[tuple[int, int, bytes]]:
    """Yield (file index, chunk index, bytes) of the payload from start on, each chunk checked
    against its hash before it is yielded; the stream must be at start's offset. A chunk whose
    bytes in the stream do not hash right is taken from fill (a delta download leaves what
    the running slot holds as holes) when fill's bytes hash right, and refused otherwise. At
    the end of each file started from its first chunk the whole-file hash is checked too;
    after the last file the input must end."""
    first_file, first_chunk = start
    for index in range(first_file, len(manifest.files)):
        entry = manifest.files[index]
        begin = first_chunk if index == first_file else 0
        whole = hashlib.sha256() if begin == 0 else None
        for n in range(begin, len(entry.chunks)):
            want = min(manifest.chunk, entry.size - n * manifest.chunk)
            data = stream.read(want)
            if len(data) != want:
                raise _fail(f"truncated in {entry.name} (chunk {n} of {len(entry.chunks)})")
            if hashlib.sha256(data).hexdigest() != entry.chunks[n]:
                alt = fill(entry, n, want) if fill is not None else None
                if alt is None or hashlib.sha256(alt).hexdigest() != entry.chunks[n]:
                    raise _fail(f"hash mismatch in {entry.name}, chunk {n}")
                data = alt
            if whole is not None:
                whole.update(data)
            yield index, n, data
        if whole is not None and whole.hexdigest() != entry.sha256:
            raise _fail(f"hash mismatch in {entry.name} (whole file)")
    if stream.read(1):
        raise _fail("trailing bytes after the last file")


def check_length(stream: BinaryIO, manifest: Manifest) -> None:
    """For a seekable input: refuse at once a bundle whose length is not the manifest's."""
    here = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(here)
    if end < manifest.total:
        raise _fail(f"truncated ({end} of {manifest.total} bytes)")
    if end > manifest.total:
        raise _fail(f"trailing bytes ({end - manifest.total} after the last file)")
