"""`infraspectre bench bus --hostile`: legitimate batched throughput of a real bus while a hostile
mix runs, divided by the same load without it; the bus's peak memory in each phase; what each
attack was answered; and whether the store kept every legitimate record once and nothing hostile.

Set-up: a fresh PKI in a temp folder; `--clients` trusted agents (bench-agent-N) that publish;
two more trusted identities that only attack (bench-hostile: garbage, oversized, stalled; and
bench-poison: poison envelopes, validly signed); one identity the org CA signed but that is not
in the trust map (bench-untrusted). The bus runs as its own `bus serve` process on loopback with
its production defaults, except max_batch and max_env_bytes (the bench's `--max-batch`,
`--max-env-bytes`: they set the size of the oversized attacks) and a health port for /ready.

Phases (each bounded by `--phase-timeout`, every call by `--call-timeout`):
1. baseline: every agent publishes its share of `--batched` pre-signed envelopes in batches of
   `--batch-size`, one call in flight per agent (its chain stays in order), RETRY honoured.
2. hostile: a child process (appliance.devkit.bus.hostile_mix) builds its payloads and opens the
   stalled calls; then the same legitimate load (fresh envelopes, the chains continue) runs
   while the other classes send. `--poison last` sends the poison after the legitimate load.
3. after: one legitimate batch (the canary) and GET /ready; then the bus is stopped and the
   store read.

A dead or wedged bus is an outcome, not a failure of the bench: what was acknowledged is
measured, every bound that was hit is listed in `errors`, and the command exits 0 once it has
reported. Peak RSS: VmHWM after resetting it per phase (/proc/PID/clear_refs), or when that is
not possible the highest VmRSS sampled every 50 ms; `rss_source` says which.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import queue
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from appliance.devkit.bus.hostile_mix import (
    ATTACKS,
    SETUP_BOUND_S,
    MixPlan,
    Peer,
    after_go_bound_s,
    run_child,
)
from appliance.devkit.localprocs import (
    cli_process,
    free_port,
    loopback_bus_sections,
    process_cpu_seconds,
)
from appliance.errors import CommandError

TARGET_RATIO = 0.8
#: Options echoed under "config" in the report.
CONFIG_ARGS = (
    "poison", "clients", "batched", "batch_size", "stalled", "garbage", "oversized_rounds",
    "untrusted_calls", "untrusted_parallel", "untrusted_mb", "max_batch", "call_timeout",
    "phase_timeout", "verify_threads",
)  # fmt: skip
RSS_SAMPLE_S = 0.05


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `bench bus --hostile` (beside --batched, --batch-size, --clients)."""
    g = p.add_argument_group("hostile mix (with --hostile)")
    g.add_argument(
        "--hostile",
        action="store_true",
        help="measure legitimate batched throughput with and without a hostile mix",
    )
    g.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help=f"comma-separated attack classes (default: {','.join(ATTACKS)})",
    )
    g.add_argument("--stalled", type=int, default=300, help="message-less calls held open")
    g.add_argument("--garbage", type=int, default=200, help="garbage calls")
    g.add_argument("--oversized-rounds", type=int, default=2, help="rounds of oversized sends")
    g.add_argument("--untrusted-calls", type=int, default=8, help="large untrusted batches")
    g.add_argument("--untrusted-parallel", type=int, default=4, help="of those, at once")
    g.add_argument("--untrusted-mb", type=float, default=32.0, help="size of each, MiB")
    g.add_argument(
        "--poison",
        choices=("during", "last"),
        default="during",
        help="send the poison envelopes during the legitimate load or after it",
    )
    g.add_argument("--max-batch", type=int, default=1000, help="the bus's max_batch")
    g.add_argument(
        "--max-env-bytes", type=int, default=None, help="the bus's max_env_bytes (its default)"
    )
    g.add_argument("--call-timeout", type=float, default=10.0, help="seconds, every call")
    g.add_argument("--phase-timeout", type=float, default=60.0, help="seconds, each phase")
    g.add_argument("--seed", type=int, default=None, help="seed of the garbage (random)")


@dataclass
class PhaseResult:
    """What one agent (or a whole phase) got for its legitimate envelopes."""

    sent: int = 0
    acked: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    retry_acks: int = 0
    invalid: int = 0
    invalid_reason: str = ""
    complete: bool = True

    def merge(self, other: PhaseResult) -> None:
        self.sent += other.sent
        self.acked |= other.acked
        self.errors.update(other.errors)
        self.retry_acks += other.retry_acks
        self.invalid += other.invalid
        self.invalid_reason = self.invalid_reason or other.invalid_reason
        self.complete = self.complete and other.complete


#: A batch: (idempotency key, sealed envelope bytes) in chain order.
Batch = list[tuple[str, bytes]]


class LegitAgent:
    """One trusted agent: its channel and its pre-signed batches per phase."""

    def __init__(self, agent_id: str, channel: grpc.Channel) -> None:
        from appliance.wire import PUBLISH_BATCH_METHOD

        self.agent_id = agent_id
        self.channel = channel
        self.call = channel.unary_unary(PUBLISH_BATCH_METHOD, None, None)
        self.batches: dict[str, list[Batch]] = {}
        self.framed: dict[str, list[bytes]] = {}

    def publish(self, phase: str, deadline: float, call_timeout: float) -> PhaseResult:
        """Send the phase's batches in order until all are acknowledged OK or the deadline."""
        from appliance.wire import PublishAck, PublishBatchResponse
        from appliance.wire.framing import frame_batch

        result = PhaseResult(sent=sum(len(b) for b in self.batches[phase]))
        for batch, framed in zip(self.batches[phase], self.framed[phase], strict=True):
            pending, raw = batch, framed
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    result.complete = False
                    return result
                try:
                    answer = self.call(raw, timeout=min(call_timeout, left))
                except grpc.RpcError as err:
                    result.errors[err.code().name] += 1
                    time.sleep(min(_retry_after_s(err), max(0.0, deadline - time.monotonic())))
                    continue
                acks = PublishBatchResponse.FromString(answer).acks
                if len(acks) != len(pending):
                    result.errors["ack_count_mismatch"] += 1
                    result.complete = False
                    return result
                retry: Batch = []
                hint_ms = 0
                for item, ack in zip(pending, acks, strict=True):
                    if ack.status == PublishAck.OK:
                        result.acked.add(item[0])
                    elif ack.status == PublishAck.RETRY:
                        retry.append(item)
                        hint_ms = max(hint_ms, ack.backoff_hint_ms)
                    else:
                        result.invalid += 1
                        result.invalid_reason = result.invalid_reason or ack.reason
                result.retry_acks += len(retry)
                pending = retry
                if pending:
                    raw = frame_batch([r for _, r in pending])
                    time.sleep(min(hint_ms / 1000, max(0.0, deadline - time.monotonic())))
        return result


def _retry_after_s(err: grpc.RpcError) -> float:
    """The bus's retry-after-ms hint of a refused call, else a short pause."""
    metadata: Any = err.trailing_metadata() or ()  # grpc-stubs: tuple of (key, value)
    for key, value in metadata:
        if key == "retry-after-ms" and str(value).isdigit():
            return int(str(value)) / 1000
    return 0.2


class PeakRss:
    """Peak resident memory of a process over one phase (see the module doc for the method)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.hwm_reset = False
        self._peak_kb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _status_kb(self, name: str) -> int:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        m = re.search(rf"^{name}:\s+(\d+) kB", text, re.MULTILINE)
        return int(m.group(1)) if m else 0

    def start(self) -> None:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # 5: reset the peak RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self._peak_kb = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="bench-rss", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self._peak_kb = max(self._peak_kb, self._status_kb("VmRSS"))

    def stop(self) -> float:
        """The phase's peak in MiB."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        peak = max(self._peak_kb, self._status_kb("VmRSS"))
        if self.hwm_reset:
            peak = max(peak, self._status_kb("VmHWM"))
        return round(peak / 1024, 1)

    @property
    def source(self) -> str:
        if self.hwm_reset:
            return "VmHWM, reset per phase via /proc/PID/clear_refs"
        return f"VmRSS sampled every {RSS_SAMPLE_S * 1000:.0f} ms"


def _parse_attacks(text: str) -> tuple[str, ...]:
    names = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise CommandError(f"--attacks: unknown {', '.join(unknown)}; choose from {ATTACKS}")
    return names


def run(args: argparse.Namespace) -> int:
    """`bench bus --hostile`: see the module doc."""
    from appliance.bus.config import EventBusConfig
    from appliance.pki import init_pki, issue_agent

    attacks = _parse_attacks(args.attacks)
    max_env_bytes = args.max_env_bytes or EventBusConfig().max_env_bytes
    if args.batch_size > args.max_batch:
        raise CommandError(f"--batch-size {args.batch_size} exceeds --max-batch {args.max_batch}")
    if args.clients < 1 or args.batched < args.clients:
        raise CommandError("--clients must be at least 1 and --batched at least --clients")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-bus-hostile-") as tmp:
        root = Path(tmp)
        pki = root / "pki"
        init_pki(pki, [])
        legit_ids = [issue_agent(pki, f"bench-agent-{i}") for i in range(args.clients)]
        peers = {name: issue_agent(pki, name) for name in ("bench-hostile", "bench-poison")}
        trust_map = (pki / "trust_map.yaml").read_text()
        peers["bench-untrusted"] = issue_agent(pki, "bench-untrusted")
        (pki / "trust_map.yaml").write_text(trust_map)  # signed by the org CA, not trusted
        port, health_port = free_port(), free_port()
        config = root / "bus.yaml"
        sections = loopback_bus_sections(
            pki, root / "data", port, health_port=health_port,
            verify_threads=args.verify_threads, max_batch=args.max_batch,
            max_env_bytes=max_env_bytes,
        )  # fmt: skip
        config.write_text(yaml.safe_dump(sections))
        t0 = time.perf_counter()
        agents, sent_keys = _presign(legit_ids, args, port, pki)
        sign_per_s = sum(len(k) for k in sent_keys.values()) / (time.perf_counter() - t0)
        plan = MixPlan(
            target=f"127.0.0.1:{port}", ca=pki / "ca.crt",
            trusted=_peer(peers["bench-hostile"]), poisoner=_peer(peers["bench-poison"]),
            untrusted=_peer(peers["bench-untrusted"]), attacks=attacks, stalled=args.stalled,
            garbage=args.garbage, oversized_rounds=args.oversized_rounds,
            untrusted_calls=args.untrusted_calls, untrusted_parallel=args.untrusted_parallel,
            untrusted_mb=args.untrusted_mb, max_batch=args.max_batch,
            max_env_bytes=max_env_bytes, call_timeout_s=args.call_timeout,
            phase_timeout_s=args.phase_timeout, poison_last=args.poison == "last", seed=seed,
        )  # fmt: skip
        with cli_process(["bus", "serve", "--config", str(config)], "bus") as bus:
            for agent in agents:  # TLS handshakes outside the timed windows
                try:
                    grpc.channel_ready_future(agent.channel).result(timeout=args.call_timeout)
                except grpc.FutureTimeoutError:
                    errors.append(f"{agent.agent_id} could not connect to the bus")
            rss = PeakRss(bus.pid)
            phases: dict[str, dict[str, Any]] = {}
            totals: dict[str, PhaseResult] = {}
            rss.start()
            totals["baseline"], phases["baseline"] = _phase(agents, "baseline", args, bus.pid)
            phases["baseline"]["bus_peak_rss_mb"] = rss.stop()
            rss.start()
            mix, hostile = _hostile_phase(agents, args, plan, bus.pid, errors)
            totals["hostile"], phases["hostile"] = hostile
            phases["hostile"]["bus_peak_rss_mb"] = rss.stop()
            for key in ("process_cpu_s", "process_peak_rss_mb"):
                phases["hostile"][f"hostile_{key}"] = mix.get(key)
            canary = _canary(agents[0], args.call_timeout)
            totals["canary"] = canary
            after = {
                "bus_alive": bus.poll() is None,
                "canary": _canary_outcome(canary),
                "ready_http": _ready(health_port),
            }
            if not after["bus_alive"]:
                errors.append(f"the bus process exited (status {bus.returncode}) during the run")
            for agent in agents:
                agent.channel.close()
        store = _check_store(root / "data" / "bus.sqlite", sent_keys, totals, mix, errors)
    for name in ("baseline", "hostile"):
        t = totals[name]
        if not t.complete:
            errors.append(
                f"{name}: {len(t.acked)}/{t.sent} legitimate envelopes acknowledged OK "
                f"within the {args.phase_timeout:g} s bound"
            )
        if t.invalid:
            errors.append(f"{name}: {t.invalid} legitimate envelopes INVALID: {t.invalid_reason}")
    if after["canary"] != "OK":
        errors.append(f"after the hostile phase a legitimate batch got {after['canary']}")
    errors += [f"hostile process: {e}" for e in mix.get("errors", [])]
    base = phases["baseline"]["envelopes_per_s"]
    under = phases["hostile"]["envelopes_per_s"]
    report = {
        "legit_baseline_per_s": base,
        "legit_under_attack_per_s": under,
        "ratio": round(under / base, 3) if base else None,
        "target_ratio": TARGET_RATIO,
        "bus_peak_rss_mb": {n: phases[n]["bus_peak_rss_mb"] for n in ("baseline", "hostile")},
        "rss_source": rss.source,
        "phases": phases,
        "attacks": mix.get("attacks", {}),
        "stalled_calls_opened": mix.get("stalled_opened", 0),
        "hostile_mix_seconds": mix.get("mix_seconds"),
        "store": store,
        "after": after,
        "errors": errors,
        "seed": seed,
        "config": {
            **{name: getattr(args, name) for name in CONFIG_ARGS},
            "attacks": list(attacks),
            "max_env_bytes": max_env_bytes,
        },
        "client_sign_per_s": round(sign_per_s),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        _print_human(report)
    return 0


def _peer(ident: Any) -> Peer:
    return Peer(ident.agent_id, ident.client_cert, ident.client_key, ident.signing_key)


def _presign(
    idents: list[Any], args: argparse.Namespace, port: int, pki: Path
) -> tuple[list[LegitAgent], dict[str, set[str]]]:
    """Each agent's envelopes for both phases and its canary, sealed and framed in chain order."""
    from appliance.crypto import Sealer, load_signing_key
    from appliance.wire import FlowEvent
    from appliance.wire.channel import mtls_channel
    from appliance.wire.framing import frame_batch

    agents: list[LegitAgent] = []
    sent: dict[str, set[str]] = {}
    for n, ident in enumerate(idents):
        share = args.batched // args.clients + (1 if n < args.batched % args.clients else 0)
        channel = mtls_channel(
            f"127.0.0.1:{port}", ca=pki / "ca.crt", cert=ident.client_cert,
            key=ident.client_key, server_name="localhost",
        )  # fmt: skip
        agent = LegitAgent(ident.agent_id, channel)
        sealer = Sealer(ident.agent_id, load_signing_key(ident.signing_key))
        now_ms = time.time_ns() // 1_000_000
        keys = sent.setdefault(ident.agent_id, set())
        canary = 1 if n == 0 else 0  # the first agent sends the canary
        for phase, count in (("baseline", share), ("hostile", share), ("canary", canary)):
            items: Batch = []
            for i in range(count):
                env = sealer.seal(
                    FlowEvent(
                        src_ip=f"192.0.2.{1 + n}", dst_ip="198.51.100.7",
                        src_port=1024 + i % 60000, dst_port=443, proto="TCP",
                        bytes_tx=1500 + i, bytes_rx=900, packets_tx=9, packets_rx=7,
                        start_time=now_ms - 30_000, end_time=now_ms - 1_000, ip_version=4,
                    )
                )  # fmt: skip
                items.append((env.idempotency_key, env.SerializeToString()))
                keys.add(env.idempotency_key)
            size = args.batch_size
            agent.batches[phase] = [items[i : i + size] for i in range(0, len(items), size)]
            agent.framed[phase] = [frame_batch([r for _, r in b]) for b in agent.batches[phase]]
        agents.append(agent)
    return agents, sent


def _phase(
    agents: list[LegitAgent], phase: str, args: argparse.Namespace, bus_pid: int
) -> tuple[PhaseResult, dict[str, Any]]:
    """Run one phase of the legitimate load; its totals and its report entry."""
    deadline = time.monotonic() + args.phase_timeout
    cpu0, t0 = _cpu(bus_pid), time.perf_counter()
    with cf.ThreadPoolExecutor(len(agents), thread_name_prefix="bench-legit") as pool:
        parts = list(pool.map(lambda a: a.publish(phase, deadline, args.call_timeout), agents))
    elapsed = time.perf_counter() - t0
    total = PhaseResult()
    for part in parts:
        total.merge(part)
    acked = len(total.acked)
    return total, {
        "envelopes": total.sent,
        "acked_ok": acked,
        "seconds": round(elapsed, 3),
        "envelopes_per_s": round(acked / elapsed, 1) if elapsed > 0 else 0.0,
        "complete": total.complete,
        "retry_acks": total.retry_acks,
        "invalid": total.invalid,
        "call_errors": dict(total.errors),
        "bus_cpu_s": round(_cpu(bus_pid) - cpu0, 3),
    }


def _cpu(pid: int) -> float:
    try:
        return process_cpu_seconds(pid)
    except OSError:  # the process is gone
        return 0.0


def _hostile_phase(
    agents: list[LegitAgent],
    args: argparse.Namespace,
    plan: MixPlan,
    bus_pid: int,
    errors: list[str],
) -> tuple[dict[str, Any], tuple[PhaseResult, dict[str, Any]]]:
    """Start the hostile process, run the legitimate load once it is ready, collect its report."""
    ctx = mp.get_context("spawn")  # never fork a process that already runs gRPC
    ready, go, legit_done = ctx.Event(), ctx.Event(), ctx.Event()
    results: Any = ctx.Queue()
    child = ctx.Process(
        target=run_child, args=(plan, ready, go, legit_done, results),
        name="bench-hostile-mix", daemon=True,
    )  # fmt: skip
    child.start()
    limit = time.monotonic() + SETUP_BOUND_S
    while not ready.wait(0.25):
        if not child.is_alive() or time.monotonic() > limit:
            errors.append("the hostile process did not get ready; the load ran without it")
            break
    go.set()
    went = time.monotonic()
    try:
        outcome = _phase(agents, "hostile", args, bus_pid)
    finally:
        legit_done.set()
    # after legit_done the mix ends its classes, sends poison if last, cancels its calls
    limit = went + after_go_bound_s(plan) + 30
    report: dict[str, Any] = {}
    while time.monotonic() < limit:
        try:
            report = results.get(timeout=0.5)
            break
        except queue.Empty:
            if not child.is_alive() and results.empty():
                break
    child.join(timeout=15)
    if child.is_alive():
        errors.append("the hostile process did not end within its bound; killed")
        child.kill()
        child.join(timeout=5)
    if not report:
        errors.append(f"the hostile process reported nothing (exit status {child.exitcode})")
    return report, outcome


def _canary(agent: LegitAgent, call_timeout: float) -> PhaseResult:
    # one call, and time for one resend if the bus asks for it (RETRY with a short hint)
    return agent.publish("canary", time.monotonic() + 1.5 * call_timeout, call_timeout)


def _canary_outcome(r: PhaseResult) -> str:
    if r.acked:
        return "OK"
    if r.invalid:
        return f"INVALID ({r.invalid_reason})"
    if r.retry_acks:
        return "RETRY until its bound"
    return ", ".join(sorted(r.errors)) or "no answer"


def _ready(port: int) -> int | str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError) as err:
        return f"no answer: {err}"


def _check_store(
    db: Path,
    sent: dict[str, set[str]],
    totals: dict[str, PhaseResult],
    mix: dict[str, Any],
    errors: list[str],
) -> dict[str, Any]:
    """Every legitimate envelope acknowledged OK stored once, and nothing hostile stored."""
    from appliance.bus.query import open_reader

    try:
        conn = open_reader(db)
    except CommandError as exc:
        errors.append(str(exc))
        return {}
    rows = conn.execute("SELECT agent_id, idem_key FROM records").fetchall()
    stored: dict[str, set[str]] = {}
    for agent_id, key in rows:
        stored.setdefault(agent_id, set()).add(key)
    duplicates = len(rows) - sum(len(keys) for keys in stored.values())
    acked = set().union(*(t.acked for t in totals.values()))
    legit_stored = set().union(*(stored.get(a, set()) for a in sent))
    all_sent = set().union(*sent.values())
    keys = {k: set(v) for k, v in mix.get("hostile_keys", {}).items()}
    hostile_rows = stored.get("bench-hostile", set())
    poison_rows = stored.get("bench-poison", set())
    hostile = {
        "oversized": len(hostile_rows & keys.get("oversized", set())),
        "garbage_or_stalled": len(hostile_rows - keys.get("oversized", set())),
        "untrusted": len(stored.get("bench-untrusted", set())),
        "poison": len(poison_rows & keys.get("poison", set())),
    }
    conflict_kept: bool | None = None
    if mix.get("conflict"):
        agent_id, key, first = mix["conflict"]
        row = conn.execute(
            "SELECT envelope FROM records WHERE agent_id = ? AND idem_key = ?", (agent_id, key)
        ).fetchone()
        conflict_kept = None if row is None else bytes(row[0]) == bytes(first)
    conn.close()
    missing = len(acked - legit_stored)
    if missing:
        errors.append(f"{missing} legitimate envelopes acknowledged OK are not in the store")
    return {
        "rows": len(rows),
        "legit_envelopes": len(all_sent),
        "legit_acked_ok": len(acked),
        "legit_stored": len(legit_stored),
        "legit_acked_missing": missing,
        "legit_unknown_stored": len(legit_stored - all_sent),
        "duplicate_rows": duplicates,
        "legit_stored_once": missing == 0 and duplicates == 0 and legit_stored <= all_sent,
        "hostile_stored": hostile,
        "conflict_first_kept": conflict_kept,
        "nothing_hostile_stored": sum(hostile.values()) == 0 and conflict_kept is not False,
    }


def _print_human(r: dict[str, Any]) -> None:
    for name, label in (("baseline", "baseline"), ("hostile", "under attack")):
        p = r["phases"][name]
        print(
            f"{label:13} {p['envelopes_per_s']:>10,.0f} envelopes/s  "
            f"({p['acked_ok']}/{p['envelopes']} acked OK in {p['seconds']} s, "
            f"bus peak RSS {p['bus_peak_rss_mb']} MB)"
        )
    print(f"ratio {r['ratio']} (target >= {r['target_ratio']}); RSS: {r['rss_source']}")
    for cls, kinds in r["attacks"].items():
        for kind, t in kinds.items():
            codes = " ".join(f"{c}:{n}" for c, n in t["codes"].items())
            acks = " ".join(f"{c}:{n}" for c, n in t["acks"].items())
            acks = f"  acks {acks}" if acks else ""
            print(f"  {cls:10} {kind:22} {t['calls']:>5} calls  {codes}{acks}")
    s = r["store"]
    if s:
        print(
            f"store: {s['legit_stored']} legitimate records, stored once: "
            f"{s['legit_stored_once']} ({s['legit_acked_missing']} acked but missing); "
            f"hostile stored: {s['hostile_stored']}; first of a conflicting key kept: "
            f"{s['conflict_first_kept']}"
        )
    a = r["after"]
    print(f"after: bus alive {a['bus_alive']}, canary {a['canary']}, /ready {a['ready_http']}")
    for e in r["errors"]:
        print(f"error: {e}")
    print(f"seed {r['seed']}")
