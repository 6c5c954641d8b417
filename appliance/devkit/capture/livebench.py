"""`infraspectre bench flows --live`: the ring under load, in namespaces (root).

Setup (appliance.devkit.capture.lab.MirrorLab): tcpreplay in namespace A replays a synthetic capture
out of a0; tc mirrors a0 to the tap port m1 in namespace T, where a consumer process (this
module's `consume`) runs our TPACKET_V3 ring, decoder and meter. tcpreplay and the consumer are
pinned to different CPUs. For each rate step the consumer reports what the kernel queued and
dropped (PACKET_STATISTICS) and what it metered; the answer is the highest step with zero
kernel drops and every sent frame metered.

Then drops are provoked on purpose (a 2-block ring and a consumer that stalls on every block)
and the result shows them in the kernel statistics and in the InterfaceCounters record the
agent would seal (capture_drops), never silently lost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from appliance.errors import CommandError

REPLAY_PACKETS = 100_000


def run_live_bench(rates: list[int], duration_s: float, cache: Path) -> dict[str, Any]:
    """Rate steps, then provoked drops; returns the bench's JSON object."""
    from appliance.devkit.capture.lab import MirrorLab
    from appliance.devkit.capture.synth import cached_capture

    if os.geteuid() != 0:
        raise CommandError("the live bench needs root (network namespaces, AF_PACKET)")
    if shutil.which("tcpreplay") is None:
        raise CommandError("tcpreplay is missing: run `make apt`")
    path, _ = cached_capture(cache, seed=2, packets=REPLAY_PACKETS)
    steps: list[dict[str, Any]] = []
    with MirrorLab("live") as lab:
        for rate in rates:
            steps.append(_step(lab, path, rate, duration_s, blocks=64, stall_s=0.0))
        # Clean: no kernel drop, every queued frame decoded, and (ARP aside, 0.1% of the
        # capture, which the default filter drops) everything sent reached the ring.
        clean = [
            s
            for s in steps
            if s["kernel_drops"] == 0
            and s["frames_seen"] == s["kernel_packets"]
            and s["kernel_packets"] >= 0.99 * s["sent"]
        ]
        best = max(clean, key=lambda s: s["achieved_pps"], default=None)
        provoked = _step(lab, path, max(rates), min(duration_s, 2.0), blocks=2, stall_s=0.05)
    return {
        "steps": steps,
        "max_zero_drop_pps": 0 if best is None else best["achieved_pps"],
        "target_pps": 200_000,
        "provoked_drops": provoked,
        "drops_visible": provoked["kernel_drops"] > 0
        and provoked["counters_capture_drops"] == provoked["kernel_drops"],
    }


def _step(
    lab: Any, path: Path, rate: int, duration_s: float, blocks: int, stall_s: float
) -> dict[str, Any]:
    count = int(rate * duration_s)
    cpus = sorted(os.sched_getaffinity(0))
    consumer_cpu, replay_cpu = (cpus[-1], cpus[0]) if len(cpus) > 1 else (cpus[0], cpus[0])
    consumer_cmd = [sys.executable, "-m", "appliance.devkit.capture.livebench", "consume"]
    consumer_cmd += ["--netns", lab.ns["T"], "--iface", "m1", "--blocks", str(blocks)]
    consumer_cmd += ["--stall", str(stall_s), "--cpu", str(consumer_cpu)]
    consumer = subprocess.Popen(
        consumer_cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert consumer.stdout is not None and consumer.stdin is not None
        ready = consumer.stdout.readline().strip()
        if ready != "ready":
            raise CommandError(f"live bench consumer did not start: {ready!r}")
        loops = max(1, math.ceil(count / REPLAY_PACKETS))
        pinned = ["taskset", "-c", str(replay_cpu)]
        replay_args = [f"--pps={rate}", f"--limit={count}", f"--loop={loops}", str(path)]
        replay = lab.run(
            "A", *pinned, "tcpreplay", "-i", "a0", *replay_args, timeout=duration_s * 4 + 60
        )
        time.sleep(1.0)  # let the last blocks retire
        consumer.stdin.close()
        out = consumer.stdout.read()
        consumer.wait(timeout=30)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    result = json.loads(out)
    achieved = _tcpreplay_rate(replay) or rate
    m = re.search(r"Successful packets:\s+(\d+)", replay)
    return {
        "requested_pps": rate,
        "achieved_pps": achieved,
        "sent": int(m.group(1)) if m else count,
        "ring_blocks": blocks,
        "consumer_stall_s": stall_s,
        **result,
    }


def _tcpreplay_rate(output: str) -> int:
    m = re.search(r"Rated:.*?([\d.]+) pps", output)
    return round(float(m.group(1))) if m else 0


def consume(args: argparse.Namespace) -> None:
    """The consumer process: ring -> decoder -> meter until stdin closes; prints JSON."""
    import select

    from appliance.capture.bpf import capture_program
    from appliance.capture.config import RingConfig
    from appliance.capture.counters import CounterSample
    from appliance.capture.decode import Decoder
    from appliance.capture.meter import FlowMeter
    from appliance.capture.ring import PacketRing, RingOptions

    os.sched_setaffinity(0, {args.cpu})
    ring_cfg = RingConfig(block_size=1 << 20, block_count=args.blocks, retire_timeout_ms=20)
    opts = RingOptions(
        interface=args.iface,
        ring=ring_cfg,
        program=capture_program("", [], snaplen=ring_cfg.snaplen),
        netns=args.netns,
    )
    decoder, meter = Decoder(), FlowMeter()
    with PacketRing(opts) as ring:
        ring.stats()  # start the accumulation from zero
        print("ready", flush=True)
        poller = select.poll()
        poller.register(sys.stdin.fileno(), select.POLLIN | select.POLLHUP)
        start = time.process_time()
        while not poller.poll(0):
            for batch in ring.batches(timeout_s=0.05):
                meter.add(decoder.decode(batch))
                if args.stall:
                    time.sleep(args.stall)
        cpu = time.process_time() - start
        stats = ring.stats()
    meter.flush()
    sample = CounterSample(sample_ns=time.time_ns(), interval_ms=0)
    sample.capture_packets, sample.capture_drops = stats.packets, stats.drops
    wire = sample.to_wire()
    print(
        json.dumps(
            {
                "kernel_packets": stats.packets,
                "kernel_drops": stats.drops,
                "counters_capture_drops": wire.capture_drops,
                "frames_seen": decoder.stats.frames,
                "flows": meter.stats.flows_started,
                "consumer_cpu_s": round(cpu, 3),
                "blocks": stats.blocks,
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.devkit.capture.livebench")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("consume")
    c.add_argument("--netns", required=True)
    c.add_argument("--iface", required=True)
    c.add_argument("--blocks", type=int, default=64)
    c.add_argument("--stall", type=float, default=0.0)
    c.add_argument("--cpu", type=int, default=0)
    args = p.parse_args(argv)
    consume(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
