"""`infraspectre flows --pcap FILE [--json]`: offline metering of a capture file.

Output: one line per flow on stdout, in the order the flows ended (their last packet, then
their first), as nfdump lists a capture's flows: under --json one JSON object per flow with
FlowEvent's field names (docs/FLOWS.md); otherwise a header line, then a table row per flow:
first-seen time (UTC, milliseconds), duration, protocol, source and destination (ICMP as
type.code in the destination port's place, as nfdump writes it), TCP flags as letters in
nfdump's layout (`...AP.SF`), packets and bytes each way, VLAN and why the flow ended. Then a
one-line summary on stderr, and a warning there when the file ends in a cut record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import CommandError

if TYPE_CHECKING:
    from appliance.capture.config import MeterConfig
    from appliance.capture.flows import FlowRecord

HEADER = (
    f"{'Date first seen (UTC)':<23} {'Duration':>12} {'Proto':<6} {'Src IP Addr:Port':>21}"
    f"    {'Dst IP Addr:Port':<21} {'Flags':<8} {'Packets tx/rx':>13} {'Bytes tx/rx':>17}"
    f" {'VLAN':>4} End"
)

#: Flows turned into JSON text at a time (~0.5 MB of text: output never adds to peak memory).
JSON_SLICE = 1024


def register(sub: Any) -> None:
    """Add the `flows` command."""
    p = sub.add_parser("flows", help="meter a capture file (pcap or pcapng) into flows")
    p.add_argument("--pcap", type=Path, required=True, metavar="FILE", help="capture file")
    p.add_argument("--json", action="store_true", help="one JSON object per flow (JSON lines)")
    p.add_argument("--config", type=Path, help="YAML config; its capture.meter section applies")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="override idle_timeout_s")
    p.add_argument("--active-timeout", type=float, metavar="S", help="override active_timeout_s")
    p.add_argument(
        "--close-delay",
        type=float,
        metavar="S",
        help="override close_linger_s: how long a closed TCP connection keeps its late packets",
    )
    p.add_argument("--max-flows", type=int, metavar="N", help="override max_flows")
    p.set_defaults(func=_flows)


def _flows(args: argparse.Namespace) -> int:
    import os

    from appliance.capture.config import load_capture_config
    from appliance.config import load_document

    cfg = load_capture_config(load_document(args.config), dict(os.environ)).meter
    if args.idle_timeout is not None:
        cfg.idle_timeout_s = args.idle_timeout
    if args.active_timeout is not None:
        cfg.active_timeout_s = args.active_timeout
    if args.close_delay is not None:
        cfg.close_linger_s = args.close_delay
    if args.max_flows is not None:
        cfg.max_flows = args.max_flows
    try:
        cfg.validate()
    except ValueError as exc:
        raise CommandError(f"capture.meter.{exc}") from None
    if not args.pcap.exists():
        raise CommandError(f"{args.pcap}: no such file")
    if args.json and _flows_json_native(args.pcap, cfg):
        return 0
    return _flows_numpy(args, cfg)


def native_meter() -> Any:
    """The compiled meter (`_fastpath.meter_json`), or None without it (a checkout without
    `make venv`); tests replace this to run the numpy path on the same input."""
    try:
        from appliance.capture import _fastpath
    except ImportError:  # pragma: no cover
        return None
    return getattr(_fastpath, "meter_json", None)


def _flows_json_native(path: Path, cfg: MeterConfig) -> bool:
    """`flows --json` without numpy: read, decode, meter and write in C (_fastpath.meter_json).
    False (nothing written) when the compiled meter is missing or the file is one only the
    numpy path reads (docs/FLOWS.md "The native meter")."""
    meter_json = native_meter()
    if meter_json is None:
        return False
    ns = [int(s * 1e9) for s in (cfg.idle_timeout_s, cfg.active_timeout_s, cfg.close_linger_s)]
    if max(ns) >= 1 << 62:
        return False  # deadlines would overflow 64-bit nanoseconds
    out = sys.stdout
    out.flush()
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1  # not a file (tests capture stdout): through a temporary file
    if fd >= 0:
        res = meter_json(str(path), fd, *ns, cfg.max_flows)
    else:
        import tempfile

        with tempfile.TemporaryFile() as tmp:
            res = meter_json(str(path), tmp.fileno(), *ns, cfg.max_flows)
            tmp.seek(0)
            while chunk := tmp.read(1 << 20):
                out.write(chunk.decode())
    if res is None:
        return False
    non_ip: dict[int, int] = res["non_ip"]
    _summary(
        path,
        flows=res["flows"],
        frames=res["frames"],
        packets=res["packets"],
        nbytes=res["bytes"],
        non_ip=non_ip,
        malformed=res["malformed"],
        fragments=res["fragments"],
        evicted=res["evicted"],
        peak=res["peak_flows"],
        cut_bytes=res["cut_bytes"],
    )
    return True


def _flows_numpy(args: argparse.Namespace, cfg: MeterConfig) -> int:
    """`flows`: the table, and --json for files the native meter does not read."""
    from appliance.capture.offline import OfflineSummary, iter_pcap_ordered

    out = sys.stdout
    flows = 0
    if not args.json:
        out.write(HEADER + "\n")
    out.flush()
    raw = getattr(out, "buffer", None)  # JSON lines go out as bytes, made in one piece
    for item in iter_pcap_ordered(args.pcap, cfg):
        if isinstance(item, OfflineSummary):
            d, m = item.decode, item.meter
            out.flush()
            _summary(
                args.pcap,
                flows=flows,
                frames=item.frames,
                packets=m.packets,
                nbytes=m.bytes,
                non_ip=d.non_ip,
                malformed=d.malformed,
                fragments=d.fragments,
                evicted=m.evicted,
                peak=m.peak_flows,
                cut_bytes=item.cut_bytes,
            )
            continue
        flows += len(item)
        if not args.json:
            out.write("".join(format_flow(rec) + "\n" for rec in item.records()))
        else:
            # In slices: the text of a whole capture's flows at once would double peak memory.
            for at in range(0, len(item), JSON_SLICE):
                lines = item.take(slice(at, at + JSON_SLICE)).json_lines()
                if raw is not None:
                    raw.write(lines)
                else:
                    out.write(lines.decode())
    return 0


def _summary(
    path: Path,
    *,
    flows: int,
    frames: int,
    packets: int,
    nbytes: int,
    non_ip: dict[int, int],
    malformed: int,
    fragments: int,
    evicted: int,
    peak: int,
    cut_bytes: int,
) -> None:
    """The one-line summary on stderr, and the warning for a file that ends in a cut record."""
    listed = ", ".join(f"0x{k:04x}: {v}" for k, v in sorted(non_ip.items()))
    print(
        f"flows: {flows} flows, {frames} frames, {packets} IP packets, "
        f"{nbytes} IP bytes; non-IP {sum(non_ip.values())} ({listed or 'none'}), "
        f"malformed {malformed}, fragments {fragments}, evicted {evicted}, "
        f"peak table {peak}",
        file=sys.stderr,
    )
    if cut_bytes:
        print(
            f"flows: warning: {path} ends in a cut record ({cut_bytes} bytes "
            f"after frame {frames}): the capture was cut short (disk full, or "
            "copied while being written); the flows above end there",
            file=sys.stderr,
        )


def format_flow(rec: FlowRecord) -> str:
    """One flow as a table row under HEADER (nfdump's `-o line` columns, both directions)."""
    from appliance.capture.flows import tcp_flag_letters

    first = dt.datetime.fromtimestamp(rec.start_ns // 1_000_000 / 1000, dt.UTC)
    if rec.icmp_type or rec.icmp_code or rec.proto in ("ICMP", "ICMPV6"):
        dst = _ep(rec.dst_ip, f"{rec.icmp_type}.{rec.icmp_code}")
    else:
        dst = _ep(rec.dst_ip, rec.dst_port)
    return (
        f"{first:%Y-%m-%d %H:%M:%S}.{first.microsecond // 1000:03d} {_duration(rec):>12} "
        f"{rec.proto:<6} {_ep(rec.src_ip, rec.src_port):>21} -> {dst:<21} "
        f"{tcp_flag_letters(rec.flags):<8} {f'{rec.packets_tx}/{rec.packets_rx}':>13} "
        f"{f'{rec.bytes_tx}/{rec.bytes_rx}':>17} {rec.vlan:>4} {rec.end_reason.name}"
    )


def _duration(rec: FlowRecord) -> str:
    """HH:MM:SS.mmm, as nfdump prints a duration."""
    ms = max(rec.end_ns // 1_000_000 - rec.start_ns // 1_000_000, 0)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def _ep(addr: str, port: object) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
