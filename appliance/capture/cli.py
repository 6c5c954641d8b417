"""`infraspectre flows --pcap FILE [--json]`: offline metering of a capture file.

Output: one line per flow on stdout (JSON lines with FlowEvent's field names under --json,
otherwise a readable table row), then a one-line summary on stderr. Flows are printed as they
end, in the order the meter ends them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance.errors import CommandError


def register(sub: Any) -> None:
    """Add the `flows` command."""
    p = sub.add_parser("flows", help="meter a capture file (pcap or pcapng) into flows")
    p.add_argument("--pcap", type=Path, required=True, metavar="FILE", help="capture file")
    p.add_argument("--json", action="store_true", help="one JSON object per flow (JSON lines)")
    p.add_argument("--config", type=Path, help="YAML config; its capture.meter section applies")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="override idle_timeout_s")
    p.add_argument("--active-timeout", type=float, metavar="S", help="override active_timeout_s")
    p.add_argument("--max-flows", type=int, metavar="N", help="override max_flows")
    p.set_defaults(func=_flows)


def _flows(args: argparse.Namespace) -> int:
    import os

    from appliance.capture.config import load_capture_config
    from appliance.capture.offline import OfflineSummary, iter_pcap_flows
    from appliance.config import load_document

    cfg = load_capture_config(load_document(args.config), dict(os.environ)).meter
    if args.idle_timeout is not None:
        cfg.idle_timeout_s = args.idle_timeout
    if args.active_timeout is not None:
        cfg.active_timeout_s = args.active_timeout
    if args.max_flows is not None:
        cfg.max_flows = args.max_flows
    try:
        cfg.validate()
    except ValueError as exc:
        raise CommandError(f"capture.meter.{exc}") from None
    if not args.pcap.exists():
        raise CommandError(f"{args.pcap}: no such file")
    out = sys.stdout
    flows = 0
    for item in iter_pcap_flows(args.pcap, cfg):
        if isinstance(item, OfflineSummary):
            d, m = item.decode, item.meter
            non_ip = ", ".join(f"0x{k:04x}: {v}" for k, v in sorted(d.non_ip.items()))
            print(
                f"flows: {flows} flows, {item.frames} frames, {m.packets} IP packets, "
                f"{m.bytes} IP bytes; non-IP {d.non_ip_total} ({non_ip or 'none'}), "
                f"malformed {d.malformed}, fragments {d.fragments}, evicted {m.evicted}, "
                f"peak table {m.peak_flows}",
                file=sys.stderr,
            )
            continue
        for rec in item.records():
            flows += 1
            if args.json:
                out.write(json.dumps(rec.to_json_dict()) + "\n")
            else:
                out.write(
                    f"{rec.proto:<6} {_ep(rec.src_ip, rec.src_port)}"
                    f" -> {_ep(rec.dst_ip, rec.dst_port)}"
                    f" vlan {rec.vlan} pkts {rec.packets_tx}/{rec.packets_rx}"
                    f" bytes {rec.bytes_tx}/{rec.bytes_rx} flags {rec.flags:#04x}"
                    f" {rec.duration_ms} ms {rec.end_reason.name}\n"
                )
    return 0


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
