"""Capture: what the box sees on its mirror port and its interfaces, turned into records.

The pipeline, one direction, one batch at a time (docs/FLOWS.md):

    source (pcap.PcapReader | ring.PacketRing)  --FrameBatch-->  decode.Decoder
        --PacketColumns-->  meter.FlowMeter  --FlowBatch-->  flows.FlowRecord / to_flow_event

- `decode`: frames -> canonical flow-key columns (vectorised, with a per-frame fallback);
- `meter`: the flow table and its expiry rules; pure, the caller's clock drives expiry;
- `flows`: ended flows (columnar FlowBatch, FlowRecord, wire conversion);
- `pcap` / `offline`: capture files (the seeded benchmark capture with ground truth is the
  development kit's, appliance.devkit.capture.synth);
- `ring`: the AF_PACKET TPACKET_V3 receive ring (root); `bpf`: the in-kernel filter compiler;
- `counters`: per-interface 64-bit counters via netlink, as InterfaceCounters records;
- `config`: the `capture` configuration section.
"""
