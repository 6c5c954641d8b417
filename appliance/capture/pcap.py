"""Capture files: a batch reader for classic pcap and pcapng, and a classic pcap writer.

Reader: classic pcap is read in CHUNK_BYTES chunks into one reused buffer, which keeps the
record walk and the decoder's gathers in the CPU caches; the records of a chunk are walked
(the only per-packet Python loop: a record's length says where the next one starts) and
handed out as one FrameBatch pointing into the buffer. pcapng is memory-mapped and walked
block by block. Either way a batch is valid until the next one is requested.

Supported: classic pcap, microsecond (a1b2c3d4) and nanosecond (a1b23c4d) magic, either byte
order; pcapng with Enhanced and Simple Packet Blocks, the first Interface Description Block's
link type and if_tsresol; link types Ethernet (1), raw IP (101) and the Linux cooked captures
SLL (113) and SLL2 (276), what `tcpdump -i any` writes. Anything else is refused with a
one-line PcapError.

A file that ends inside a record (a capture cut short: the disk filled up, the file was copied
while being written, a transfer broke off) is read up to its last whole record;
`PcapReader.cut_bytes` then says how many bytes the cut record left, for a warning.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from appliance.capture.decode import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    MAX_REACH,
    FrameBatch,
    byte_windows,
)
from appliance.errors import CommandError

try:  # the compiled record walk (setup.py builds it); the pure-Python walk without it
    from appliance.capture import _fastpath
except ImportError:  # pragma: no cover (a checkout without `make venv`)
    _fastpath = None  # type: ignore[assignment]

#: Frames per batch at most (chunks bound batches first; tests use small values).
DEFAULT_BATCH = 1 << 20
#: Bytes read per chunk of a classic pcap (fits the L3 cache with the decoder's arrays).
#: 2 MiB rather than 4: the same CPU, and 9 MB less peak RSS for `flows --pcap` (the
#: chunk and the decoder's per-chunk arrays; docs/PERFORMANCE.md).
CHUNK_BYTES = 2 << 20
#: Largest record body accepted (libpcap's own maximum snaplen).
MAX_CAPLEN = 262144
_SUPPORTED_LINKTYPES = (LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2)


class PcapError(CommandError):
    """The file is not a capture this reader understands (one line, says why)."""


class PcapReader:
    """Iterate a capture file as FrameBatches (use as a context manager, or call close())."""

    def __init__(self, path: Path, batch_size: int = DEFAULT_BATCH) -> None:
        self.path = path
        self.batch_size = batch_size
        try:
            self._file = open(path, "rb")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            raise PcapError(f"cannot open {path}: {exc.strerror}") from exc
        size = path.stat().st_size
        if size < 24:
            self._file.close()
            raise PcapError(f"{path}: too short to be a capture file ({size} bytes)")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.data = np.frombuffer(self._map, dtype=np.uint8)
        magic = bytes(self._map[0:4])
        self.frames = 0
        #: Bytes after the last whole record: a record cut short at the end of the file.
        self.cut_bytes = 0
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            self.format, self._endian = "pcap", "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            self.format, self._endian = "pcap", ">"
        elif magic == b"\x0a\x0d\x0d\x0a":
            self.format = "pcapng"
            bom = bytes(self._map[8:12])
            self._endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
        else:
            self.close()
            raise PcapError(f"{path}: not a pcap or pcapng file (magic {magic.hex()})")
        if self.format == "pcap":
            self._nanos = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
            (self.linktype,) = struct.unpack_from(self._endian + "I", self._map, 20)
            self.linktype &= 0x0FFFFFFF
        else:
            self.linktype = self._pcapng_linktype()
        if self.linktype not in _SUPPORTED_LINKTYPES:
            self.close()
            raise PcapError(
                f"{path}: link type {self.linktype} is not supported "
                "(Ethernet 1, raw IP 101, Linux cooked SLL 113 and SLL2 276)"
            )

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the map and the file (batches already handed out must not be used after)."""
        self.data = np.zeros(0, dtype=np.uint8)
        if not self._map.closed:
            # A caller may still hold a view: the map then goes with the last reference.
            with contextlib.suppress(BufferError):
                self._map.close()
        self._file.close()

    def batches(self) -> Iterator[FrameBatch]:
        """FrameBatches in file order.

        Classic pcap is read in chunks of CHUNK_BYTES into one reused buffer: a batch's
        `data` is valid only until the next batch is requested (the decoder copies what it
        keeps). Reading sequentially into a cache-sized buffer, rather than walking a map of
        the whole file, keeps the record walk and the decoder's gathers in the CPU caches.
        """
        if self.format == "pcapng":
            yield from self._pcapng_batches()
            return
        walk: Callable[[bytearray, int, int, int], tuple[Sequence[int], int]]
        if self._endian != "<":
            walk = self._walk_any
        else:
            walk = self._walk_le if _fastpath is None else self._walk_native
        frac_mult = 1 if self._nanos else 1000
        (snaplen,) = struct.unpack_from(self._endian + "I", self._map, 16)
        max_record = 16 + max(snaplen, MAX_CAPLEN)
        buf = bytearray(CHUNK_BYTES + max_record + MAX_REACH)
        mv = memoryview(buf)
        data = np.frombuffer(buf, dtype=np.uint8)
        native = self._endian == "<"
        self._file.seek(24)
        have = 0
        try:
            while True:
                got = self._file.readinto(mv[have : have + CHUNK_BYTES])
                have += got
                if have < 16:
                    break
                try:
                    offs, pos = walk(buf, 0, have, self.batch_size)
                except IndexError:
                    raise PcapError(
                        f"{self.path}: corrupt record after frame {self.frames}"
                    ) from None
                if len(offs) == 0:
                    if have >= max_record:  # a whole chunk without one complete record
                        raise PcapError(f"{self.path}: corrupt record after frame {self.frames}")
                    if got == 0:
                        break  # end of file (a cut-short last record is ignored)
                    continue
                rec = np.asarray(offs, dtype=np.int64)
                hdr = byte_windows(data, rec, 16)  # the 16-byte record headers, one row each
                if native:
                    sec = hdr[:, 0:4].view("<u4")[:, 0]
                    frac = hdr[:, 4:8].view("<u4")[:, 0]
                    caplen = hdr[:, 8:12].view("<u4")[:, 0].astype(np.int64)
                else:
                    sec = hdr[:, 0:4].copy().view(">u4")[:, 0]
                    frac = hdr[:, 4:8].copy().view(">u4")[:, 0]
                    caplen = hdr[:, 8:12].copy().view(">u4")[:, 0].astype(np.int64)
                if int(caplen.max()) > max_record - 16:
                    raise PcapError(f"{self.path}: corrupt record (caplen {int(caplen.max())})")
                ts = sec.astype(np.int64) * 1_000_000_000 + frac.astype(np.int64) * frac_mult
                self.frames += len(rec)
                yield FrameBatch(
                    data=data, offsets=rec + 16, caplen=caplen, ts_ns=ts, linktype=self.linktype
                )
                # Keep the unwalked tail (a partial record) at the front of the buffer.
                buf[0 : have - pos] = buf[pos:have]
                have -= pos
            self.cut_bytes = have  # what is left unwalked at the end of the file
        finally:
            del data
            mv.release()

    @staticmethod
    def _walk_native(buf: bytearray, pos: int, end: int, limit: int) -> tuple[Sequence[int], int]:
        """_walk_le in C (appliance/capture/_fastpath.c): the same offsets, as an array."""
        assert _fastpath is not None
        out = np.empty(max(min(limit, (end - pos) // 16 + 1), 0), dtype=np.int64)
        count, pos = _fastpath.walk_le(buf, pos, end, limit, out)
        return out[:count], pos  # type: ignore[return-value]

    @staticmethod
    def _walk_le(buf: bytearray, pos: int, end: int, limit: int) -> tuple[list[int], int]:
        """Offsets of the whole records in buf[pos:end] (at most limit), and where the walk
        stopped. The hot loop: 32-bit views at the four byte alignments read caplen."""
        mv = memoryview(buf)[:end]
        views = [mv[r : r + (end - r) // 4 * 4].cast("I") for r in range(4)]
        offs: list[int] = []
        app = offs.append
        last = end - 16
        try:
            if limit * 16 > end - pos:  # the limit cannot bite: the tightest loop
                while pos <= last:
                    app(pos)
                    pos += 16 + views[pos & 3][(pos >> 2) + 2]
            else:
                for _ in range(limit):
                    if pos > last:
                        break
                    app(pos)
                    pos += 16 + views[pos & 3][(pos >> 2) + 2]
        finally:
            for v in views:
                v.release()
            mv.release()
        if pos > end:  # the last record is not complete in buf
            pos = offs.pop()
        return offs, pos

    def _walk_any(self, buf: bytearray, pos: int, end: int, limit: int) -> tuple[list[int], int]:
        """Like _walk_le for either byte order (struct: slower, only for big-endian files)."""
        unpack = struct.Struct(self._endian + "I").unpack_from
        offs: list[int] = []
        last = end - 16
        for _ in range(limit):
            if pos > last:
                break
            offs.append(pos)
            pos += 16 + unpack(buf, pos + 8)[0]
        if pos > end:
            pos = offs.pop()
        return offs, pos

    # -- pcapng -------------------------------------------------------------------------

    def _pcapng_linktype(self) -> int:
        e = self._endian
        pos = 0
        end = len(self._map)
        while pos + 12 <= end:
            btype, blen = struct.unpack_from(e + "II", self._map, pos)
            if blen < 12:
                break
            if btype == 1:  # Interface Description Block
                (lt,) = struct.unpack_from(e + "H", self._map, pos + 8)
                self._tsresol_ns = self._idb_tsresol(pos + 16, pos + blen - 4)
                return int(lt)
            pos += blen
        raise PcapError(f"{self.path}: pcapng without an interface description block")

    def _idb_tsresol(self, pos: int, end: int) -> float:
        e = self._endian
        while pos + 4 <= end:
            code, olen = struct.unpack_from(e + "HH", self._map, pos)
            if code == 0:
                break
            if code == 9 and olen >= 1:  # if_tsresol
                v = int(self._map[pos + 4])
                return float(1e9 / (2 ** (v & 0x7F) if v & 0x80 else 10**v))
            pos += 4 + (olen + 3) // 4 * 4
        return 1000.0  # default: microseconds

    def _pcapng_batches(self) -> Iterator[FrameBatch]:
        e = self._endian
        unpack2 = struct.Struct(e + "II").unpack_from
        unpack_epb = struct.Struct(e + "IIIII").unpack_from
        pos, end = 0, len(self._map)
        offs: list[int] = []
        caps: list[int] = []
        tss: list[int] = []
        res = self._tsresol_ns
        while pos + 12 <= end:
            btype, blen = unpack2(self._map, pos)
            if blen < 12 or pos + blen > end:
                self.cut_bytes = end - pos
                break
            if btype == 6:  # Enhanced Packet Block
                _iface, hi, lo, cap, _orig = unpack_epb(self._map, pos + 8)
                offs.append(pos + 28)
                caps.append(cap)
                tss.append(int(((hi << 32) | lo) * res))
            elif btype == 3:  # Simple Packet Block: no timestamp
                (orig,) = struct.unpack_from(e + "I", self._map, pos + 8)
                offs.append(pos + 12)
                caps.append(min(orig, blen - 16))
                tss.append(tss[-1] if tss else 0)
            elif btype == 0x0A0D0D0A and pos:
                raise PcapError(f"{self.path}: pcapng with several sections is not supported")
            pos += blen
            if len(offs) >= self.batch_size:
                yield self._ng_batch(offs, caps, tss)
                offs, caps, tss = [], [], []
        if offs:
            yield self._ng_batch(offs, caps, tss)
        if not self.cut_bytes and 0 < end - pos < 12:
            self.cut_bytes = end - pos

    def _ng_batch(self, offs: list[int], caps: list[int], tss: list[int]) -> FrameBatch:
        self.frames += len(offs)
        return FrameBatch(
            data=self.data,
            offsets=np.array(offs, dtype=np.int64),
            caplen=np.array(caps, dtype=np.int64),
            ts_ns=np.array(tss, dtype=np.int64),
            linktype=self.linktype,
        )


def write_pcap(
    path: Path,
    frames: Iterable[tuple[int, bytes]],
    linktype: int = LINKTYPE_ETHERNET,
    snaplen: int = 65535,
) -> int:
    """Write (ts_ns, frame) pairs as a nanosecond classic pcap; returns the frame count.

    Frames longer than snaplen are cut to it (the record keeps the original length).
    """
    count = 0
    rec = struct.Struct("<IIII")
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, snaplen, linktype))
        chunk: list[bytes] = []
        for ts_ns, frame in frames:
            cap = frame[:snaplen]
            sec, ns = divmod(ts_ns, 1_000_000_000)
            chunk.append(rec.pack(sec, ns, len(cap), len(frame)))
            chunk.append(cap)
            count += 1
            if len(chunk) >= 8192:
                f.write(b"".join(chunk))
                chunk = []
        f.write(b"".join(chunk))
    return count
