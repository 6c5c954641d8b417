"""`bench bus --hostile --json`: a small run reports the documented keys, and every attack class
was really sent and answered (outcomes counted per kind). The bus's answers themselves are the
subject of the other tests in this folder: nothing here asserts a throughput, a ratio or what
the bus should have answered, only that the bench measured and accounted for everything."""

from __future__ import annotations

import json
import subprocess
import sys

POISON_KINDS = {
    "conflict_original", "idempotency_conflict", "src_port_70000", "vlan_99999",
    "src_ip_not_an_ip", "timestamps_1970", "bytes_tx_2^63", "packets_rx_2^64-1",
    "start_time_2^63", "seq_2^63",
}  # fmt: skip
OVERSIZED_KINDS = {
    "envelope_publish", "envelope_batch", "batch_count", "batch_at_limits", "batch_over_cap",
}  # fmt: skip


def test_bench_bus_hostile_reports_every_attack_class_and_the_store_check() -> None:
    # --poison last keeps the run short on a bus whose store dies of poison: the legitimate
    # phases are measured before it arrives.
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "--log-level", "WARNING", "bench", "bus",
         "--hostile", "--json", "--batched", "2000", "--batch-size", "200", "--clients", "2",
         "--stalled", "40", "--garbage", "16", "--oversized-rounds", "1",
         "--untrusted-calls", "2", "--untrusted-parallel", "2", "--untrusted-mb", "1",
         "--max-batch", "250", "--max-env-bytes", "4096", "--call-timeout", "4",
         "--phase-timeout", "30", "--poison", "last", "--seed", "1234"],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    for key in (
        "legit_baseline_per_s", "legit_under_attack_per_s", "ratio", "bus_peak_rss_mb",
        "rss_source", "phases", "attacks", "store", "after", "errors", "seed",
    ):  # fmt: skip
        assert key in report, key
    assert report["seed"] == 1234
    assert set(report["bus_peak_rss_mb"]) == {"baseline", "hostile"}
    assert report["phases"]["baseline"]["envelopes"] == 2000
    assert report["phases"]["hostile"]["envelopes"] == 2000

    attacks = report["attacks"]
    assert set(attacks) == {"stalled", "garbage", "oversized", "untrusted", "poison"}
    for cls, kinds in attacks.items():
        for kind, tally in kinds.items():
            assert tally["calls"] > 0, (cls, kind)
            assert sum(tally["codes"].values()) == tally["calls"], (cls, kind)
    assert set(attacks["stalled"]) == {"trusted", "untrusted"}
    assert all(t["calls"] >= 20 for t in attacks["stalled"].values())
    assert report["stalled_calls_opened"] >= 40
    assert sum(t["calls"] for t in attacks["garbage"].values()) == 16
    assert set(attacks["oversized"]) == OVERSIZED_KINDS
    assert all(t["calls"] == 1 for t in attacks["oversized"].values())
    assert attacks["untrusted"]["big_batch"]["calls"] == 2
    assert set(attacks["poison"]) == POISON_KINDS
    assert all(t["calls"] == 1 for t in attacks["poison"].values())

    store = report["store"]
    assert store["legit_envelopes"] == 2 * 2000 + 1  # both phases and the canary
    assert store["legit_stored"] <= store["legit_envelopes"]
    for key in ("legit_stored_once", "nothing_hostile_stored", "hostile_stored"):
        assert key in store, key
    assert set(store["hostile_stored"]) == {
        "oversized",
        "garbage_or_stalled",
        "untrusted",
        "poison",
    }
